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
    names = [name for name in sources if name != "--set"]
    states = git_states([Path(name) for name in names])
    return [
        {"file": name, "sha256": hashlib.sha256(sources[name].encode()).hexdigest(), "git": state}
        for name, state in zip(names, states, strict=True)
    ]


def git_state(file: Path) -> dict[str, Any] | None:
    """{commit, dirty, path} of the file's repository, or None outside git (or without git)."""
    return git_states([file])[0]


def git_states(files: list[Path]) -> list[dict[str, Any] | None]:
    """`git_state` of each file; the git commands of all of them run side by side."""
    resolved = [file.resolve() for file in files]
    heads = [_start(path.parent, "rev-parse", "HEAD", "--show-toplevel") for path in resolved]
    statuses = [_start(path.parent, "status", "--porcelain", "--", str(path)) for path in resolved]
    states: list[dict[str, Any] | None] = []
    for path, head, status in zip(resolved, heads, statuses, strict=True):
        lines = (_finish(head) or "").split("\n")
        changed = _finish(status)
        if len(lines) != 2 or not all(lines):
            states.append(None)
            continue
        commit, top = lines
        relative = str(path.relative_to(Path(top).resolve()))
        states.append({"commit": commit, "dirty": bool(changed), "path": relative})
    return states


def _start(folder: Path, *args: str) -> subprocess.Popen[str] | None:
    try:
        return subprocess.Popen(["git", "-C", str(folder), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    except OSError:
        return None


def _finish(process: subprocess.Popen[str] | None) -> str | None:
    """The stripped output of a git command, None when it failed or took over 10 s."""
    if process is None:
        return None
    try:
        out, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None
    return out.strip() if process.returncode == 0 else None
