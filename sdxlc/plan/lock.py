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
processes it launches (`accelerate launch`, several ranks) share it instead of being refused. Each of those
processes also holds a shared lock on `<out>/.sdxlc-run.ranks.lock` (`join`) for as long as it lives, and
`acquire` takes the folder only when that file is free too: a launcher killed with -9 frees its own lock,
but while one of the processes it launched still trains and writes into the folder, a new run is refused.

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
RANKS_FILE = ".sdxlc-run.ranks.lock"  # shared by the launched processes of the run that holds LOCK_FILE
INHERITED = "SDXLC_OUTPUT_LOCK"  # "<pid> <lock file>": set by the holder for the processes it launches

BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # another process holds the lock
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a file system without flock

_held: dict[str, list[int]] = {}  # lock file → [descriptor, times taken] in this process


class OutputLocked(OutputInUse):
    """An output folder that a running run holds."""


class OutputLock:
    """A held output folder; `release` (or leaving a `with` block) lets it go."""

    def __init__(self, path: Path, owned: bool, shared: int | None = None) -> None:
        self.path, self.owned, self.shared = path, owned, shared  # shared: a launched process's RANKS_FILE

    def release(self) -> None:
        if self.shared is not None:
            os.close(self.shared)
            self.shared = None
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
        taken = _exclusive(fd)
    except OSError:
        os.close(fd)
        raise
    if taken is not True:
        os.close(fd)
        if taken is None:  # a file system without flock
            return OutputLock(path, owned=False)
        pid = holder(out)
        if pid is not None and os.environ.get(INHERITED) == f"{pid} {path}":
            return join(out)  # held by the process that launched this one
        raise OutputLocked(
            f"output folder {out} is in use by a running run (pid {pid if pid is not None else 'unknown'}): "
            "wait for it to end or stop it, or give this run its own `output \"…\"`; nothing was changed"
        ) from None
    try:
        busy = _ranks_busy(out)
    except BaseException:  # the ranks file cannot be opened or probed: the error is reported, the lock let go
        os.close(fd)
        raise
    if busy:
        os.close(fd)
        raise OutputLocked(
            f"output folder {out} is in use by the training processes of a run whose launcher has ended: "
            "wait for them to end or stop them, or give this run its own `output \"…\"`; nothing was changed")
    # the pid is for the refusal message only: written in place (the lock is on this very file), and a
    # write that fails (a full disk) leaves the lock held, with the pid unknown
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held[str(path)] = [fd, 1]
    os.environ[INHERITED] = f"{os.getpid()} {path}"
    return OutputLock(path, owned=True)


def _exclusive(fd: int) -> bool | None:
    """Take `fd`'s file exclusively without waiting: True when taken, False when another process holds
    it, None when the file system has no flock; any other OSError is raised."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in BUSY:
            return False
        if exc.errno in NO_FLOCK:
            return None
        raise
    return True


def _open_ranks(out: Path) -> int:
    return os.open(out.resolve() / RANKS_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)


def _ranks_busy(out: Path) -> bool:
    """Whether a launched process of an earlier run still holds RANKS_FILE (probed, never kept: the
    processes this run launches take it shared)."""
    fd = _open_ranks(out)
    try:
        return _exclusive(fd) is False
    finally:
        os.close(fd)  # closing drops the probe's lock


def join(out: Path) -> OutputLock:
    """In a process launched by the holder of `out` (SDXLC_OUTPUT_LOCK names its lock file): hold
    RANKS_FILE shared until this process ends or releases it, so that the folder stays in use while this
    process lives, whatever becomes of its launcher; raise OutputLocked when the launcher no longer holds
    the folder (it was killed before this process started: another run may own the folder now). Elsewhere
    (no lock to share, no flock): nothing held."""
    path = lock_file(out)
    if not LOCKS or os.environ.get(INHERITED, "").partition(" ")[2] != str(path) or str(path) in _held:
        return OutputLock(path, owned=False)
    try:
        fd = _open_ranks(out)
    except OSError:  # the folder cannot take the file: share nothing (the launcher's lock still holds)
        return OutputLock(path, owned=False)
    try:
        # blocking: the only exclusive holder of this file is a starting run's probe, for an instant
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:  # no flock on this file system: share nothing
        os.close(fd)
        return OutputLock(path, owned=False)
    shared = OutputLock(path, owned=False, shared=fd)
    if not _held_elsewhere(path):
        shared.release()
        raise OutputLocked(
            f"the run that launched this process no longer holds its output folder {out} (it has ended): "
            "this process stops before writing anything")
    return shared


def _held_elsewhere(path: Path) -> bool:
    """Whether another process holds the lock file `path` (its launcher, for a launched process)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # no lock file: nobody holds it
        return False
    try:
        return _exclusive(fd) is not True  # no flock (None): cannot tell, so trust the launcher
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock the check took
