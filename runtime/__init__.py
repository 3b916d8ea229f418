"""The sdxlc runtime: executes a resolved plan as a real SDXL training run.

`import runtime` stays light (no torch); `execute` and `RunResult` load the ML stack on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any


def _quiet() -> None:
    """Keep the ML stack's import-time chatter out of the run's output (explicit settings win)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


_quiet()


def timestamp() -> float:
    """The wall-clock time artifacts record (`ss_training_started_at`…): `SOURCE_DATE_EPOCH` when it is
    set, as reproducible builds do, so that two runs of one plan write byte-identical files."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if fixed.isdigit():
        return float(fixed)
    import time

    return time.time()


class RunError(Exception):
    """A known failure of a run (missing model, empty or unreadable data, diverged loss)."""


@contextlib.contextmanager
def saving(path: str | os.PathLike[str], intact: str = "the previous save is intact") -> Iterator[None]:
    """A write that fails (a full disk, a lost mount, no permission) stops the run cleanly, naming the
    path and the free space of its disk; atomic writes leave what was there before intact."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunError(f"could not write {path}: {reason} ({_free(path)}); {intact}") from exc


def _free(path: str | os.PathLike[str]) -> str:
    from sdxlc.plan.files import free_bytes

    free = free_bytes(path)
    return "free space unknown" if free is None else f"{free / 2**20:.1f} MiB free on its disk"


class InputChanged(RunError):
    """An input of the plan (an image, the model) is not what was planned: the run must be planned again."""

    REPLAN = ("plan again: `sdxlc run RECIPE` (or `sdxlc plan RECIPE -o plan.json`, then "
              "`sdxlc run plan.json`), with `--overwrite` when the output folder holds this run's first "
              "steps")

    def __init__(self, changes: list[str]) -> None:
        self.changes = changes
        shown = changes[:20] + ([f"… and {len(changes) - 20} more"] if len(changes) > 20 else [])
        super().__init__(f"{len(changes)} input(s) changed since the plan was made:\n  "
                         + "\n  ".join(shown) + "\n" + self.REPLAN)

    def __reduce__(self) -> tuple[type[InputChanged], tuple[list[str]]]:
        """Pickled by its changes (a data-loading worker hands it to the training process)."""
        return type(self), (self.changes,)


def __getattr__(name: str) -> Any:
    if name in ("execute", "RunResult"):
        from runtime.train import run

        return getattr(run, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = ["InputChanged", "RunError", "RunResult", "execute", "saving", "timestamp"]
