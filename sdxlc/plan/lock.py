"""One running run per output folder: an exclusive lock held for the whole life of a run.

`acquire(out)` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on `<out>/.sdxlc-run.lock` (creating the folder
when it does not exist yet) before a run reads a checkpoint to resume, moves earlier results aside or
writes anything; a second run into the folder is refused (`OutputLocked`, an `OutputInUse`) with the
holder's pid. The kernel drops the lock when the holding process ends, however it ends (a kill -9
included): a crashed run never leaves a stale lock. The lock file stays in the folder (removing it would
let two runs lock two different files of the same name) and `--overwrite` never moves it: it is not one
of the results `layout.claim` moves aside.

Taking it again in the process that holds it counts up (the CLI holds it, then the runtime takes it
for the training itself). The holder names its lock in the environment (`SDXLC_OUTPUT_LOCK`), so the
processes it launches (`accelerate launch`, several ranks) share it instead of being refused.

Pure standard library: the compiler and the runtime both take it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from types import TracebackType

from sdxlc.plan.layout import OutputInUse

try:
    import fcntl
except ImportError:  # no flock (Windows, not a target): runs take no lock and nothing refuses a second run
    LOCKS = False
else:
    LOCKS = True

LOCK_FILE = ".sdxlc-run.lock"
INHERITED = "SDXLC_OUTPUT_LOCK"  # "<pid> <lock file>": set by the holder for the processes it launches

_held: dict[str, list[int]] = {}  # lock file → [descriptor, times taken] in this process


class OutputLocked(OutputInUse):
    """An output folder that a running run holds."""


class OutputLock:
    """A held output folder; `release` (or leaving a `with` block) lets it go."""

    def __init__(self, path: Path, owned: bool) -> None:
        self.path, self.owned = path, owned

    def release(self) -> None:
        if not self.owned:
            return
        self.owned = False
        entry = _held.get(str(self.path))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[str(self.path)]
        if os.environ.get(INHERITED, "").partition(" ")[2] == str(self.path):
            del os.environ[INHERITED]
        os.close(entry[0])  # closing the last descriptor releases the flock

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()


def lock_file(out: Path) -> Path:
    return out.resolve() / LOCK_FILE


def holder(out: Path) -> int | None:
    """The pid written into the folder's lock file by the run that took it last (None: none readable)."""
    try:
        text = lock_file(out).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def acquire(out: Path) -> OutputLock:
    """Hold `out` for this run, or raise OutputLocked when another running run holds it."""
    path = lock_file(out)
    if not LOCKS:
        return OutputLock(path, owned=False)
    entry = _held.get(str(path))
    if entry is not None:
        entry[1] += 1
        return OutputLock(path, owned=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without flock
            return OutputLock(path, owned=False)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        pid = holder(out)
        if pid is not None and os.environ.get(INHERITED) == f"{pid} {path}":
            return OutputLock(path, owned=False)  # held by the process that launched this one
        raise OutputLocked(
            f"output folder {out} is in use by a running run (pid {pid if pid is not None else 'unknown'}): "
            "wait for it to end or stop it, or give this run its own `output \"…\"`; nothing was changed"
        ) from None
    # the pid is for the refusal message only: written in place (the lock is on this very file), and a
    # write that fails (a full disk) leaves the lock held, with the pid unknown
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held[str(path)] = [fd, 1]
    os.environ[INHERITED] = f"{os.getpid()} {path}"
    return OutputLock(path, owned=True)
