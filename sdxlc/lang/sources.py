"""The recipe files a plan was compiled from: their hashes and the git commit they were at.

Recorded in the plan's `sources` (not hashed: they say where the plan came from, not what it does),
so a run's output folder tells which revision of which recipe produced it, and whether the recipe
had uncommitted edits.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any


def describe(sources: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per file read: path, sha256 of its text, and its git state when it is in a repository.
    The `--set` options (kept with the sources to show their diagnostics) are no file."""
    return [
        {"file": name, "sha256": hashlib.sha256(text.encode()).hexdigest(), "git": git_state(Path(name))}
        for name, text in sources.items()
        if name != "--set"
    ]


def git_state(file: Path) -> dict[str, Any] | None:
    """{commit, dirty, path} of the file's repository, or None outside git (or without git)."""
    folder = file.resolve().parent
    commit = _git(folder, "rev-parse", "HEAD")
    top = _git(folder, "rev-parse", "--show-toplevel")
    if commit is None or top is None:
        return None
    relative = str(file.resolve().relative_to(Path(top).resolve()))
    status = _git(folder, "status", "--porcelain", "--", str(file.resolve()))
    return {"commit": commit, "dirty": bool(status), "path": relative}


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
