"""The compiler's cache folder: `$XDG_CACHE_HOME/sdxlc`, else `~/.cache/sdxlc`, where the built recipe
parser (sdxlc/lang/parser.py) and the statements of recipes read before (sdxlc/lang/statement_cache.py)
are kept. `SDXLC_NO_PARSER_CACHE=1` turns both off.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder(create: bool = True) -> Path | None:
    """The compiler's cache folder (made when `create`); None when caching is off or it cannot be
    written."""
    if os.environ.get("SDXLC_NO_PARSER_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "sdxlc"
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
    if not os.access(folder, os.W_OK):
        return None
    return folder
