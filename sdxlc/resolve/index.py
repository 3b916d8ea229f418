"""What each image file is, read once: its displayed size or the reason it cannot be used.

`probe_image` reads an image's header (and checks the rest of the file where that is cheap);
`Index` remembers the answers, with the sha256 of each readable image's bytes (what the plan's sample
manifest records), the text of each caption file and the hash of each model file, in
`<cache dir>/index.bin`, keyed by path and checked against the file's inode, size, modification
and change time (nanoseconds): a second scan of a large dataset only lists and stats its files, and
reads again exactly the files that changed.

The file is a packed table (see `_pack`) behind a header with its own sha256: a truncated, damaged or
foreign file, or one from another format version, is never trusted; it is noted on the `sdxlc.index`
logger and rebuilt. It is replaced atomically, so two processes planning at once each leave a whole
file (the last one wins; an entry it lacks is read again next time).
Pure Python (Pillow), shared by the compiler and the runtime.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, NamedTuple

from sdxlc.plan.files import write_atomic
from sdxlc.plan.manifest import file_sha256

INDEX_FILE = "index.bin"
LEGACY_FILES = ("index.json",)  # earlier formats: removed when the index is next written
INDEX_VERSION = 4  # 4: the stamp holds the change time
_MAGIC = b"SDXLCIDX"
_HEADER = struct.Struct("<8sIIQQ32s")  # magic, version, byte order, rows, strings length, body sha256
_ORDER = 0 if sys.byteorder == "little" else 1
_KINDS = b"IBCPH"  # image, bad image, caption, caption problem, file hash
_READ_WHOLE = 64 << 20  # images up to this size are read once for header, checks and hash
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_JPEG_FORMATS = {"JPEG", "MPO"}
_NO_DIGEST = bytes(32)


def _note(message: str, *args: object) -> None:
    """A warning on the `sdxlc.index` logger (logging is loaded only when there is one)."""
    import logging

    logging.getLogger("sdxlc.index").warning(message, *args)


class Probe(NamedTuple):
    """An image's displayed size (EXIF orientation applied), or why it cannot be trained on."""

    width: int
    height: int
    error: str | None = None
    sha256: str = ""  # of the file's bytes (set by `Index.image` for a readable image)
    size: int = 0


def probe_image(path: str | Path) -> Probe:
    """Read the header; report empty, unidentified, truncated, corrupt and oversized images. A readable
    image of at most 64 MiB is read once, and its sha256 comes with the answer."""
    path = Path(path)
    try:
        size = path.stat().st_size
        data = path.read_bytes() if 0 < size <= _READ_WHOLE else None
    except OSError as exc:
        return Probe(0, 0, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
    if size == 0 or data == b"":
        return Probe(0, 0, "empty file (0 bytes)")
    probe = _probe(path, data)
    if probe.error is None and data is not None:
        return Probe(probe.width, probe.height, None, hashlib.sha256(data).hexdigest(), len(data))
    return probe


def _probe(path: Path, data: bytes | None) -> Probe:
    from PIL import Image, UnidentifiedImageError

    def source() -> BinaryIO | Path:
        return io.BytesIO(data) if data is not None else path

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source()) as image:
                width, height = image.size
                fmt = image.format or ""
                orientation = None if _no_png_exif(fmt, data) else image.getexif().get(_EXIF_ORIENTATION)
                if width * height > (Image.MAX_IMAGE_PIXELS or 0) > 0:
                    return Probe(width, height, _bomb(width, height))
            if fmt == "PNG":
                with Image.open(source()) as again:
                    again.verify()  # walks every chunk to IEND: catches truncation and bad CRCs
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Probe(0, 0, f"decompression bomb ({exc})")
    except UnidentifiedImageError:
        return Probe(0, 0, "not an image Pillow can read (corrupt or unsupported format)")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return Probe(0, 0, f"corrupt or truncated image ({exc.__class__.__name__}: {exc})")
    if width < 1 or height < 1:
        return Probe(0, 0, "image has no pixels")
    if fmt in _JPEG_FORMATS and not _ends_with_eoi(path, data):
        return Probe(width, height, "truncated JPEG (no end-of-image marker)")
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return Probe(width, height)


def _no_png_exif(fmt: str, data: bytes | None) -> bool:
    """A PNG without an eXIf chunk: Pillow's `getexif` would decode every pixel to look for one."""
    return fmt == "PNG" and data is not None and b"eXIf" not in data


def _bomb(width: int, height: int) -> str:
    from PIL import Image

    return f"decompression bomb ({width}x{height} px is over Pillow's limit of {Image.MAX_IMAGE_PIXELS})"


def _ends_with_eoi(path: Path, data: bytes | None) -> bool:
    if data is None:
        with path.open("rb") as handle:
            handle.seek(-min(514, path.stat().st_size), os.SEEK_END)
            data = handle.read()
    # Some writers pad after the marker: look at the last few hundred bytes.
    return data.endswith(b"\xff\xd9") or b"\xff\xd9" in data[-514:]


MAX_CAPTION_BYTES = 16 * 1024  # CLIP reads 77 tokens; a caption file this long is a wrong file


def read_caption(path: str | Path) -> tuple[str | None, str | None]:
    """(caption, None) for a UTF-8 caption file, (None, reason) otherwise. At most MAX_CAPTION_BYTES
    are read: a longer file is a bad input, never read whole into memory."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CAPTION_BYTES + 1)
    except OSError as exc:
        return None, f"caption file {name} cannot be read ({exc.strerror})"
    if len(raw) > MAX_CAPTION_BYTES:
        return None, (f"caption file {name} is over {MAX_CAPTION_BYTES // 1024} KiB "
                      "(a caption is read as 77 tokens): not a caption file?")
    try:
        return raw.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as exc:
        return None, f"caption file {name} is not UTF-8 (byte {exc.start})"


Stamp = tuple[int, int, int, int]  # inode, size, modification and change time in ns
Row = tuple[int, int, int, int, bytes, int, int, str, bytes]  # stamp, kind, width, height, text, digest


def stamp_of(stat: os.stat_result) -> Stamp:
    """What a file's answer is valid for. The change time catches what the others miss: bytes rewritten
    in place with the size and modification time put back, a permission change."""
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


class IndexDamaged(ValueError):
    """An index file that cannot be trusted (and is rebuilt)."""


class Index:
    """Answers of `probe_image`, `read_caption` and `file_sha256` keyed by path, valid while the file's
    inode, size, modification and change time match. The file is read on the first lookup."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self.hits = 0
        self.misses = 0
        self.dirty = False
        self._loaded = file is None
        self._rows: dict[str, int] = {}  # path -> row of the table read from the file
        self._table = _Table.empty()
        self._fresh: dict[str, Row] = {}  # answers found in this process

    @classmethod
    def in_dir(cls, cache_dir: str | Path | None) -> Index:
        return cls(Path(cache_dir) / INDEX_FILE if cache_dir else None)

    def image(self, path: str | Path, stat: os.stat_result) -> Probe:
        key = str(path)
        row = self._get(key, stat)
        if row is not None and row[4] in b"IB":
            self.hits += 1
            _, size, _, _, kind, width, height, text, digest = row
            return Probe(width, height, text or None, digest.hex() if kind == b"I" else "", size)
        self.misses += 1
        stamp = stamp_of(stat)
        probe = probe_image(key)
        if probe.error is None and not probe.sha256:  # too large to read at once: hashed as a stream
            try:
                probe = Probe(probe.width, probe.height, None, file_sha256(key), stamp[1])
            except OSError as exc:
                probe = Probe(0, 0, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
        probe = Probe(probe.width, probe.height, probe.error, probe.sha256, stamp[1])
        digest = bytes.fromhex(probe.sha256) if probe.error is None else _NO_DIGEST
        kind = b"I" if probe.error is None else b"B"
        self._put(key, (*stamp, kind, probe.width, probe.height, probe.error or "", digest))
        return probe

    def file_hash(self, path: Path) -> tuple[int, str]:
        """(size, sha256) of any file (a model's weights), hashed again only when it changed."""
        key, stat = str(path), path.stat()
        row = self._get(key, stat)
        stamp = stamp_of(stat)
        if row is not None and row[4] == b"H":
            return stamp[1], row[8].hex()
        digest = file_sha256(path)
        self._put(key, (*stamp, b"H", 0, 0, "", bytes.fromhex(digest)))
        return stamp[1], digest

    def caption(self, path: str | Path, stat: os.stat_result | None = None) -> tuple[str | None, str | None]:
        """(caption, problem); (None, None) when there is no caption file. `stat` saves a system call
        when the caller has it."""
        key = str(path)
        if stat is None:
            try:
                stat = os.stat(key)
            except OSError:
                return None, None
        if not S_ISREG(stat.st_mode):
            return None, f"caption {os.path.basename(key)} is not a regular file (a pipe or device)"
        row = self._get(key, stat)
        if row is not None and row[4] in b"CP":
            return (row[7], None) if row[4] == b"C" else (None, row[7])
        text, problem = read_caption(key)
        kind = b"C" if problem is None else b"P"
        self._put(key, (*stamp_of(stat), kind, 0, 0, problem or text or "", _NO_DIGEST))
        return text, problem

    def _get(self, key: str, stat: os.stat_result) -> Row | None:
        """The row of `key` when it was made from the file `stat` describes (same inode, size, mtime and
        ctime)."""
        if not self._loaded:
            self.load()
        row = self._fresh.get(key)
        if row is not None:
            return row if row[:4] == stamp_of(stat) else None
        number = self._rows.get(key)
        table = self._table
        if number is None or table.inodes[number] != stat.st_ino or table.sizes[number] != stat.st_size \
                or table.mtimes[number] != stat.st_mtime_ns or table.ctimes[number] != stat.st_ctime_ns:
            return None
        return table.row(number)

    def _put(self, key: str, row: Row) -> None:
        self._fresh[key] = row
        self.dirty = True

    def load(self) -> None:
        """Read the index file (done by the first lookup otherwise); a file that cannot be trusted is
        noted, left out and rewritten by `save`."""
        if self._loaded or self.file is None:
            self._loaded = True
            return
        self._loaded = True
        try:
            raw = self.file.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            _note("note: the image index %s cannot be read (%s): it is rebuilt", self.file,
                  exc.strerror)
            return
        try:
            paths, self._table = _unpack(raw)
        except IndexDamaged as exc:
            _note("note: the image index %s is not usable (%s): it is rebuilt", self.file, exc)
            self.dirty = True  # replaced by a good one even when nothing changed
            return
        self._rows = {path: number for number, path in enumerate(paths)}

    def save(self) -> None:
        """Write the index atomically; a cache folder that cannot be written is not an error."""
        if self.file is None or not self.dirty:
            return
        rows = dict(self._fresh)
        for path, number in self._rows.items():
            rows.setdefault(path, self._table.row(number))
        try:
            write_atomic(self.file, _pack(rows))
            self.dirty = False
            for name in LEGACY_FILES:
                if name != self.file.name:
                    (self.file.parent / name).unlink(missing_ok=True)
        except OSError:
            return


@dataclass
class _Table:
    """The rows of an index file as packed columns (decoded one row at a time, when looked up)."""

    texts: list[str]
    inodes: array[int]
    sizes: array[int]
    mtimes: array[int]
    ctimes: array[int]
    dims: array[int]  # width, height per row
    kinds: bytes
    digests: bytes  # 32 per row

    @classmethod
    def empty(cls) -> _Table:
        return cls([], array("Q"), array("q"), array("q"), array("q"), array("i"), b"", b"")

    def row(self, n: int) -> Row:
        return (self.inodes[n], self.sizes[n], self.mtimes[n], self.ctimes[n], self.kinds[n:n + 1],
                self.dims[2 * n], self.dims[2 * n + 1], self.texts[n], self.digests[32 * n:32 * n + 32])


def _pack(rows: dict[str, Row]) -> bytes:
    """Header, then the paths and texts as one JSON list (ASCII), then the columns: inodes, sizes and
    modification and change times (8 bytes each), width and height (4 bytes each), kind (1 byte), digest
    (32)."""
    paths = list(rows)
    values = list(rows.values())
    strings = json.dumps(paths + [row[7] for row in values], separators=(",", ":")).encode("ascii")
    body = b"".join([
        strings,
        array("Q", [row[0] for row in values]).tobytes(),
        array("q", [row[1] for row in values]).tobytes(),
        array("q", [row[2] for row in values]).tobytes(),
        array("q", [row[3] for row in values]).tobytes(),
        array("i", [v for row in values for v in (row[5], row[6])]).tobytes(),
        b"".join(row[4] for row in values),
        b"".join(row[8] for row in values),
    ])
    digest = hashlib.sha256(body).digest()
    return _HEADER.pack(_MAGIC, INDEX_VERSION, _ORDER, len(paths), len(strings), digest) + body


def _unpack(raw: bytes) -> tuple[list[str], _Table]:
    """The paths and the table of an index file; IndexDamaged for anything but an intact file of this
    version and byte order."""
    if len(raw) < _HEADER.size or raw[:8] != _MAGIC:
        raise IndexDamaged("not an index file" if len(raw) >= _HEADER.size else "truncated")
    _, version, order, n, strings_len, digest = _HEADER.unpack_from(raw)
    if version != INDEX_VERSION or order != _ORDER:
        raise IndexDamaged(f"format {version} written on another machine or sdxlc version")
    body = memoryview(raw)[_HEADER.size:]
    if len(body) != strings_len + n * (8 * 4 + 8 + 1 + 32):
        raise IndexDamaged("truncated or padded")
    if hashlib.sha256(body).digest() != digest:
        raise IndexDamaged("its checksum does not match")
    try:
        strings = json.loads(bytes(body[:strings_len]))
    except (ValueError, RecursionError) as exc:
        raise IndexDamaged(f"unreadable paths ({type(exc).__name__})") from exc
    if not isinstance(strings, list) or len(strings) != 2 * n or not all(type(s) is str for s in strings):
        raise IndexDamaged("unreadable paths")
    inodes, sizes, mtimes, ctimes, dims = (array(code) for code in "Qqqqi")
    at = strings_len
    for column in (inodes, sizes, mtimes, ctimes, dims):  # 8 bytes a row each (dims: two 4-byte numbers)
        column.frombytes(body[at:at + 8 * n])
        at += 8 * n
    kinds = bytes(body[at:at + n])
    if kinds.translate(None, _KINDS) or min(dims, default=0) < 0:
        raise IndexDamaged("rows no sdxlc writes")
    return strings[:n], _Table(strings[n:], inodes, sizes, mtimes, ctimes, dims, kinds, bytes(body[at + n:]))
