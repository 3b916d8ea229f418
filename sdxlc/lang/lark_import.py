"""Import lark without the third-party `regex` module.

lark imports `regex` when it is installed (transformers brings it into the environment) although it only
uses it for `Lark(regex=True)`, which the recipe parser never asks for: its terminals are plain `re`
patterns (no `\\p{…}` categories). Importing `regex` costs a tenth of a plan's start-up, so this module,
imported before lark, hides `regex` from that one import and then takes the hiding back: lark falls back
to `re`, and anything that imports `regex` later (the training runtime's tokenizers) gets it as usual.
Importing this module is what does it; nothing else is needed.
"""

from __future__ import annotations

import sys


def import_lark() -> None:
    """Import lark, once, with `regex` out of sight for the length of the import."""
    if "lark" in sys.modules:
        return
    hide = "regex" not in sys.modules
    if hide:
        sys.modules["regex"] = None  # type: ignore[assignment]  # a None entry makes `import regex` fail
    try:
        import lark  # noqa: F401
    finally:
        if hide and "regex" in sys.modules and sys.modules["regex"] is None:
            del sys.modules["regex"]


import_lark()
