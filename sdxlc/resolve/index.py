"""What each image file is, read once: its displayed size or the reason it cannot be used.

`probe_image` reads an image's header (and checks the rest of the file where that is cheap);
`Index` remembers the answers, with the sha256 of each readable image's bytes (what the plan's sample
manifest records), in `<cache dir>/index.json`, keyed by path with the file's size and modification
time, so that a second scan of a large dataset only lists and stats its files.
Pure Python (Pillow), shared by the compiler and the runtime.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

from sdxlc.plan.files import write_atomic
from sdxlc.plan.manifest import file_sha256

INDEX_FILE = "index.json"
INDEX_VERSION = 2
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_JPEG_FORMATS = {"JPEG", "MPO"}


@dataclass(frozen=True)
class Probe:
    """An image's displayed size (EXIF orientation applied), or why it cannot be trained on."""

    width: int
    height: int
    error: str | None = None
    sha256: str = ""  # of the file's bytes (set by `Index.image` for a readable image)
    size: int = 0


def probe_image(path: Path) -> Probe:
    """Read the header; report empty, unidentified, truncated, corrupt and oversized images."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except OSError as exc:
        return Probe(0, 0, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
    if size == 0:
        return Probe(0, 0, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                fmt = image.format or ""
                orientation = image.getexif().get(_EXIF_ORIENTATION)
                if width * height > (Image.MAX_IMAGE_PIXELS or 0) > 0:
                    return Probe(width, height, _bomb(width, height))
            if fmt == "PNG":
                with Image.open(path) as again:
                    again.verify()  # walks every chunk to IEND: catches truncation and bad CRCs
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Probe(0, 0, f"decompression bomb ({exc})")
    except UnidentifiedImageError:
        return Probe(0, 0, "not an image Pillow can read (corrupt or unsupported format)")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return Probe(0, 0, f"corrupt or truncated image ({exc.__class__.__name__}: {exc})")
    if width < 1 or height < 1:
        return Probe(0, 0, "image has no pixels")
    if fmt in _JPEG_FORMATS and not _ends_with_eoi(path):
        return Probe(width, height, "truncated JPEG (no end-of-image marker)")
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return Probe(width, height)


def _bomb(width: int, height: int) -> str:
    from PIL import Image

    return f"decompression bomb ({width}x{height} px is over Pillow's limit of {Image.MAX_IMAGE_PIXELS})"


def _ends_with_eoi(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-2, os.SEEK_END)
        tail = handle.read(2)
        if tail == b"\xff\xd9":
            return True
        # Some writers pad after the marker: look at the last few hundred bytes.
        handle.seek(max(0, handle.tell() - 512))
        return b"\xff\xd9" in handle.read()


MAX_CAPTION_BYTES = 16 * 1024  # CLIP reads 77 tokens; a caption file this long is a wrong file


def read_caption(path: Path) -> tuple[str | None, str | None]:
    """(caption, None) for a UTF-8 caption file, (None, reason) otherwise. At most MAX_CAPTION_BYTES
    are read: a longer file is a bad input, never read whole into memory."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CAPTION_BYTES + 1)
    except OSError as exc:
        return None, f"caption file {path.name} cannot be read ({exc.strerror})"
    if len(raw) > MAX_CAPTION_BYTES:
        return None, (f"caption file {path.name} is over {MAX_CAPTION_BYTES // 1024} KiB "
                      "(a caption is read as 77 tokens): not a caption file?")
    try:
        return raw.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as exc:
        return None, f"caption file {path.name} is not UTF-8 (byte {exc.start})"


def stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns]


class Index:
    """Answers of `probe_image` and `read_caption` keyed by path, valid while size and mtime match."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self.entries: dict[str, list[Any]] = {}
        self.hits = 0
        self.misses = 0
        self.dirty = False
        if file is not None and file.is_file():
            try:
                stored = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = {}
            if isinstance(stored, dict) and stored.get("version") == INDEX_VERSION:
                self.entries = dict(stored.get("entries", {}))

    @classmethod
    def in_dir(cls, cache_dir: str | Path | None) -> Index:
        return cls(Path(cache_dir) / INDEX_FILE if cache_dir else None)

    def image(self, path: Path, stat: os.stat_result) -> Probe:
        key, stamp = str(path), stat_key(stat)
        entry = self.entries.get(key)
        if entry is not None and entry[0] == "image" and entry[1] == stamp:
            self.hits += 1
            return Probe(entry[2], entry[3], entry[4], entry[5], stamp[0])
        self.misses += 1
        probe = probe_image(path)
        if probe.error is None:
            try:
                probe = Probe(probe.width, probe.height, None, file_sha256(path), stamp[0])
            except OSError as exc:
                probe = Probe(0, 0, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
        self.entries[key] = ["image", stamp, probe.width, probe.height, probe.error, probe.sha256]
        self.dirty = True
        return probe

    def file_hash(self, path: Path) -> tuple[int, str]:
        """(size, sha256) of any file (a model's weights), hashed again only when size or mtime changed."""
        key, stamp = str(path), stat_key(path.stat())
        entry = self.entries.get(key)
        if entry is not None and entry[0] == "hash" and entry[1] == stamp:
            return stamp[0], str(entry[2])
        digest = file_sha256(path)
        self.entries[key] = ["hash", stamp, digest]
        self.dirty = True
        return stamp[0], digest

    def caption(self, path: Path) -> tuple[str | None, str | None]:
        """(caption, problem); (None, None) when there is no caption file."""
        key = str(path)
        try:
            stat = path.stat()
        except OSError:
            return None, None
        if not S_ISREG(stat.st_mode):
            return None, f"caption {path.name} is not a regular file (a pipe or device)"
        stamp = stat_key(stat)
        entry = self.entries.get(key)
        if entry is not None and entry[0] == "caption" and entry[1] == stamp:
            return entry[2], entry[3]
        text, problem = read_caption(path)
        self.entries[key] = ["caption", stamp, text, problem]
        self.dirty = True
        return text, problem

    def save(self) -> None:
        """Write the index atomically; a cache folder that cannot be written is not an error."""
        if self.file is None or not self.dirty:
            return
        text = json.dumps({"version": INDEX_VERSION, "entries": self.entries}, separators=(",", ":"))
        try:
            write_atomic(self.file, text.encode("utf-8"))
            self.dirty = False
        except OSError:
            return
