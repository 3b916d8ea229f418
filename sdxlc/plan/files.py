"""Atomic file writes: a file is either its old self or its complete new self, never half written.

Every file sdxlc and its runtime write that someone may read later (plans, manifests, artifacts,
checkpoints, caches, indexes) goes through here: the data goes to a temporary file in the same folder
(`.<name>.<random>.tmp`), is fsynced, then `os.replace`d over the target, and the folder is fsynced.
On any failure the temporary file is removed and the error propagates (an `OSError` for the file
system's own failures); the previous file is untouched. New files get the permissions `open()` would
give them (0o666 less the umask). `atomic_folder` does the same for a folder of files (a checkpoint).

Pure standard library: the runtime imports it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A new empty file beside `path` for a writer that needs a file name (safetensors, torch);
    fsynced and moved over `path` when the block ends, removed when it raises."""
    target = Path(path)
    if target.exists() and not target.is_file():  # a device or a fifo is never replaced by a file
        raise OSError(errno.EINVAL, "not a regular file", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _new_temp(target)
    try:
        yield temp
        fsync(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_folder(target.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path written."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder `.<name>.tmp-<pid>` beside `path` to fill; when the block ends every file in it
    is fsynced and it replaces `path` (an existing `path` is removed first); removed when it raises."""
    import shutil  # loaded by the writers of folders, not by every writer of a file

    target = Path(path)
    temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    try:
        yield temp
        for root, _, names in os.walk(temp):
            for name in names:
                fsync(Path(root, name))
            fsync_folder(Path(root))
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_folder(target.parent)


def fsync(file: Path) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk, where the platform can."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # …or do not sync them
        pass
    finally:
        os.close(fd)


_TEMP = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp")  # `.<name>.<random>.tmp`, as _new_temp names them


def temp_target(name: str) -> str | None:
    """The name of the file a temporary file named `name` was writing (`_new_temp`), or None when `name`
    is not such a temporary file."""
    named = _TEMP.fullmatch(name)
    return named[1] if named else None


def _new_temp(target: Path) -> Path:
    """Create `.<name>.<random>.tmp` beside `target`, with the permissions `open()` gives a new file."""
    for _ in range(100):
        temp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(f"no free temporary name beside {target}")


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk that holds `path` (or its nearest existing folder); None when unknown."""
    folder = Path(path)
    while not os.path.exists(folder) and folder != folder.parent:  # False, not an error, where unsearchable
        folder = folder.parent
    try:
        if hasattr(os, "statvfs"):  # what shutil.disk_usage reads there, without loading shutil
            stat = os.statvfs(folder)
            return stat.f_bavail * stat.f_frsize
        import shutil

        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None
