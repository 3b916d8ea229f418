"""The sdxlc runtime: executes a resolved plan as a real SDXL training run.

`import runtime` stays light (no torch); `execute` and `RunResult` load the ML stack on first use.
"""

from __future__ import annotations

import logging
import os
from typing import Any


def _quiet() -> None:
    """Keep the ML stack's import-time chatter out of the run's output (explicit settings win)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


_quiet()


class RunError(Exception):
    """A known failure of a run (missing model, empty or unreadable data, diverged loss)."""


def __getattr__(name: str) -> Any:
    if name in ("execute", "RunResult"):
        from runtime.train import run

        return getattr(run, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = ["RunError", "RunResult", "execute"]
