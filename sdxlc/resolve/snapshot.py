"""Scan snapshots: a dataset folder's scan, reused while nothing the scan looked at has changed.

A warm plan of a large dataset spends most of its time walking the folders, sorting the listings and
asking the index about every image and caption. The snapshot keeps the outcome of that work (the
items, the bad inputs and the caption counts) with the stamp of everything it depended on:

- every folder listed: device, inode, modification and change time (ns). A folder's modification time
  changes when an entry is added, removed or renamed in it, so an unchanged stamp is an unchanged
  listing;
- every image and caption file looked at, and every other symlink listed (its target may become a
  folder): inode, size, modification and change time (ns), the stamp the index trusts (a file that
  could not be stat'ed is stamped as missing, and must still be missing).

The next plan stats exactly those folders and files; when every stamp is the same, it takes the items
from the snapshot instead of listing, sorting and looking up; any difference and the dataset is scanned
as before (and the snapshot rewritten). A snapshot whose folders were modified within `RACY_NS` of the
scan is not written: a change within the file system's clock tick could leave a folder's stamp as it was
(the next plan writes it).

One file per dataset, `<cache dir>/scans/scan-<hash of path and position>.bin`: a header (magic,
format version, the key, the body's length and sha256) then the body in `marshal` form. The key is the
sha256 of everything the scan result depends on (the dataset's resolved settings, its position, the
snapshot, index and sdxlc versions, the item fields, the Python version): another recipe line or
another sdxlc gives another key and the snapshot is not used. A truncated, damaged or foreign file is
ignored (and replaced), never trusted. Written atomically; a cache folder that cannot be written is not
an error.
"""

from __future__ import annotations

import gc
import hashlib
import json
import marshal
import os
import struct
import sys
import time
from collections.abc import Callable
from functools import partial, wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sdxlc import __version__
from sdxlc.plan.files import write_atomic
from sdxlc.resolve.datasets import ImageItem, Problem, ScanResult, is_manifest, scan_dataset
from sdxlc.resolve.index import INDEX_VERSION, Index

SNAPSHOT_DIR = "scans"  # under the cache folder
SNAPSHOT_VERSION = 2
RACY_NS = 2_000_000_000  # folders modified this close to the scan are not trusted to stamp their listing
_MAGIC = b"SDXLCSCN"
_HEADER = struct.Struct("<8sI32sQ32s")  # magic, version, key, body length, body sha256
_GONE_FILE = (-1, -1, -1, -1)
_GONE_FOLDER = (-1, -1, -1, -1)

_FIELDS = len(ImageItem._fields)
_item = partial(tuple.__new__, ImageItem)  # ImageItem._make less its length check (`load` checks them all)

P = ParamSpec("P")
T = TypeVar("T")

FileStamp = tuple[int, int, int, int]  # inode, size, modification and change time (ns)
FolderStamp = tuple[int, int, int, int]  # device, inode, modification and change time (ns)


def gc_paused(function: Callable[P, T]) -> Callable[P, T]:
    """`function` with the cyclic garbage collector paused while it runs: a large dataset's scan makes
    hundreds of thousands of small acyclic objects, and each collection pass walks all of them."""

    @wraps(function)
    def paused(*args: P.args, **kwargs: P.kwargs) -> T:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused


def scan(
    path: Path, settings: dict[str, Any], number: int, index: Index, cache_dir: str | None
) -> ScanResult:
    """`scan_dataset` of a dataset folder, from its snapshot when nothing it looked at has changed."""
    caption_ext = str(settings["caption_ext"])
    if cache_dir is None or is_manifest(path) or not path.is_dir():
        return scan_dataset(path, caption_ext, number, index=index)
    file = snapshot_file(cache_dir, path, number)
    key = snapshot_key(path, settings, number)
    reused = load(file, key)
    if reused is not None:
        return reused
    started = time.time_ns()
    seen = Recorder()
    result = scan_dataset(path, caption_ext, number, index=index, seen=seen)
    if seen.settled(started):
        save(file, key, seen, result)
    return result


def snapshot_file(cache_dir: str, path: Path, number: int) -> Path:
    name = hashlib.sha256(f"{number}\0{path}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(cache_dir) / SNAPSHOT_DIR / f"scan-{name}.bin"


def snapshot_key(path: Path, settings: dict[str, Any], number: int) -> bytes:
    """The sha256 of everything a dataset's scan result depends on."""
    described = {
        "snapshot": SNAPSHOT_VERSION, "index": INDEX_VERSION, "sdxlc": __version__, "python": sys.version,
        "fields": ImageItem._fields, "path": str(path), "dataset": number, "settings": settings,
    }
    text = json.dumps(described, sort_keys=True, default=repr, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).digest()


class Recorder:
    """The stamps of the folders and files a scan looked at, in the order it looked (`Seen`)."""

    def __init__(self) -> None:
        self.folders: list[str] = []
        self.folder_stamps: list[FolderStamp] = []
        self.files: list[str] = []
        self.file_stamps: list[FileStamp] = []

    def folder(self, path: str, stat: os.stat_result | None) -> None:
        self.folders.append(path)
        self.folder_stamps.append(_folder_stamp(stat))

    def file(self, path: str, stat: os.stat_result | None) -> None:
        self.files.append(path)
        self.file_stamps.append(_file_stamp(stat))

    def settled(self, started_ns: int) -> bool:
        """No folder was modified within `RACY_NS` of the scan (an entry added, removed or renamed
        sets the folder's modification time)."""
        return all(stamp[2] < started_ns - RACY_NS for stamp in self.folder_stamps)


def _folder_stamp(stat: os.stat_result | None) -> FolderStamp:
    return _GONE_FOLDER if stat is None else (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)


def _file_stamp(stat: os.stat_result | None) -> FileStamp:
    return _GONE_FILE if stat is None else (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def folder_stamps(paths: list[str]) -> list[FolderStamp]:
    return [_folder_stamp(_stat(path)) for path in paths]


def file_stamps(paths: list[str]) -> list[FileStamp]:
    """The stamps of `paths` now (one `stat` each, the fast way while every file exists)."""
    try:
        return [(s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in map(os.stat, paths)]
    except OSError:
        return [_file_stamp(_stat(path)) for path in paths]


def save(file: Path, key: bytes, seen: Recorder, result: ScanResult) -> None:
    body = marshal.dumps((
        seen.folders, seen.folder_stamps, seen.files, seen.file_stamps,
        [tuple(item) for item in result.items], [(p.path, p.reason) for p in result.problems],
        result.missing_captions, result.folder_captions,
    ))
    header = _HEADER.pack(_MAGIC, SNAPSHOT_VERSION, key, len(body), hashlib.sha256(body).digest())
    try:
        write_atomic(file, header + body)
    except OSError:
        return


def load(file: Path, key: bytes) -> ScanResult | None:
    """The snapshot's scan result when the file is intact, made for `key`, and every folder and file it
    stamped is unchanged; None otherwise (a damaged file is noted on the `sdxlc.snapshot` logger)."""
    try:
        raw = file.read_bytes()
    except OSError:
        return None
    body = _body(raw, key)
    if body is None:
        _note(file)
        return None
    if body == b"":  # made for other settings
        return None
    try:
        folders, folder_seen, files, file_seen, items, problems, missing, from_folders = marshal.loads(body)
        if folder_stamps(folders) != folder_seen or file_stamps(files) != file_seen:
            return None
        if any(type(item) is not tuple or len(item) != _FIELDS for item in items):
            raise ValueError("items of another shape")
        return ScanResult(list(map(_item, items)), [Problem(*p) for p in problems], int(missing),
                          int(from_folders))
    except (ValueError, TypeError, EOFError):
        _note(file)
        return None


def _note(file: Path) -> None:
    """Note a snapshot that cannot be used on the `sdxlc.snapshot` logger (loaded only then)."""
    import logging

    logging.getLogger("sdxlc.snapshot").info(
        "note: the scan snapshot %s is not usable: the dataset is scanned again", file)


def _body(raw: bytes, key: bytes) -> bytes | None:
    """The body of an intact snapshot file made for `key`; b"" for an intact one made for another key;
    None for anything else."""
    if len(raw) < _HEADER.size:
        return None
    magic, version, made_for, length, digest = _HEADER.unpack_from(raw)
    if magic != _MAGIC or version != SNAPSHOT_VERSION:
        return None
    body = raw[_HEADER.size:]
    if len(body) != length or hashlib.sha256(body).digest() != digest:
        return None
    return body if made_for == key else b""
