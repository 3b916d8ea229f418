"""Training images and their captions, from a folder tree or a manifest file, and what is wrong with them.

Sources:
- a folder, walked recursively (symlinks followed, loops reported, never followed twice); a sub-folder
  named `<N>_<name>` (kohya style) multiplies the repeats of every image beneath it by N;
- a manifest, `*.jsonl` (objects with `path`, `caption`, optional `weight`) or `*.csv` (a header row
  naming `path`, `caption`, optional `weight`): paths are relative to the manifest, `weight` is a
  whole number of repeats.

Pure Python (Pillow reads the image headers through `sdxlc.resolve.index`). The compiler records what
it finds in the plan's sample manifest (`sdxlc.plan.manifest`), which is all the runtime reads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from stat import S_ISREG
from typing import Any, NamedTuple, Protocol

from sdxlc.resolve.index import MAX_CAPTION_BYTES, Index, Probe

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".tga", ".qoi",
    ".ppm", ".pgm", ".pbm", ".pnm",
)
# Image files Pillow cannot read: reported rather than silently ignored.
UNSUPPORTED_EXTENSIONS = (".heic", ".heif", ".svg", ".jxl", ".exr", ".raw", ".cr2", ".nef", ".arw", ".dng")
MANIFEST_EXTENSIONS = (".jsonl", ".csv")
_KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")

# Per-dataset settings and their defaults: the compiler resolves each into the plan.
DATASET_DEFAULTS: dict[str, Any] = {
    "repeat": 1,
    "caption_ext": ".txt",
    "shuffle": False,
    "keep_tokens": 0,
    "separator": ",",
    "caption_dropout": 0.0,
    "tag_dropout": 0.0,
    "prefix": "",
    "suffix": "",
    "default_caption": "",
    "flip": False,
    "random_crop": False,
    "color_jitter": 0.0,
    "regularization": False,
    "loss_weight": 1.0,
    "bad_image": "skip",
    "mask": None,  # "alpha" or a folder of same-stem masks (sdxlc/resolve/companions.py)
    "control": None,  # a folder of same-stem control images
}


class ImageItem(NamedTuple):
    """One training image: its path, its displayed size (EXIF orientation applied) and its caption.
    (A named tuple: a dataset of 50k images makes 50k of them on every plan.)"""

    path: str
    width: int
    height: int
    caption: str
    dataset: int = 0
    repeat: int = 1  # from a `<N>_name` folder or a manifest weight; the dataset's repeat multiplies it
    has_caption: bool = True
    sha256: str = ""  # of the file's bytes, as indexed
    size: int = 0  # bytes
    caption_source: str = "default"  # the caption file, "manifest", or "default" when there is none
    mask: str = ""  # its mask file, "alpha" (its own alpha channel), or "" (sdxlc/resolve/companions.py)
    mask_sha256: str = ""  # of the mask file's bytes
    control: str = ""  # its control image, or ""
    control_sha256: str = ""


@dataclass(frozen=True)
class Problem:
    """A file that cannot be trained on, and why."""

    path: str
    reason: str

    def __post_init__(self) -> None:  # a name that is not UTF-8 is shown with \x escapes (the plan is UTF-8)
        if not _utf8(self.path):
            try:
                raw = self.path.encode("utf-8", "surrogateescape")  # the name's own bytes
            except UnicodeEncodeError:  # a lone surrogate no file name decodes to
                raw = self.path.encode("utf-8", "backslashreplace")
            object.__setattr__(self, "path", raw.decode("utf-8", "backslashreplace"))

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ScanResult:
    items: list[ImageItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    missing_captions: int = 0
    folder_captions: int = 0  # images without a caption file that take their `<N>_<tokens>` folder's tokens


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_EXTENSIONS and path.is_file()


def scan_dataset(
    path: Path,
    caption_ext: str = ".txt",
    dataset: int = 0,
    *,
    index: Index | None = None,
    seen: Seen | None = None,
) -> ScanResult:
    """Every image of a folder (recursive, sorted) or manifest, with its size, hash and caption. `seen`
    is told the stamp of every folder listed and every file looked at (for a scan snapshot)."""
    index = index if index is not None else Index(None)
    result = ScanResult()
    if is_manifest(path):
        _scan_manifest(path, dataset, index, result)
    elif path.is_dir():
        for found in _walk(path, caption_ext, result, seen):
            caption, problem = _sidecar_caption(found, index, seen)
            source = found.sidecar
            if caption is None and problem is None and found.tokens:  # kohya: the folder's class tokens
                caption, source = found.tokens, f"folder {os.path.basename(os.path.dirname(found.path))}"
                result.folder_captions += 1
            try:
                stat = found.entry.stat()
                if seen is not None:
                    seen.file(found.path, stat)
                probe = index.image(found.path, stat) if S_ISREG(stat.st_mode) else _NOT_REGULAR
            except OSError as exc:
                if seen is not None:
                    seen.file(found.path, None)
                probe = Probe(0, 0, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
            _take(found.path, probe, caption, problem, found.repeat, dataset, result, source)
    else:
        result.problems.append(Problem(str(path), "not a folder or a .jsonl/.csv manifest"))
    return result


_NOT_REGULAR = Probe(0, 0, "not a regular file (a pipe or device)")


class Seen(Protocol):
    """Told what a folder scan looked at: each folder's stat before it is listed, each file's stat
    (None: the file could not be stat'ed)."""

    def folder(self, path: str, stat: os.stat_result | None) -> None: ...

    def file(self, path: str, stat: os.stat_result | None) -> None: ...


def _sidecar_caption(found: _Found, index: Index, seen: Seen | None = None) -> tuple[str | None, str | None]:
    """The image's caption file through the index; (None, None) when there is none."""
    if found.sidecar_entry is None and not found.maybe_sidecar:
        return None, None
    try:
        stat = found.sidecar_entry.stat() if found.sidecar_entry is not None else os.stat(found.sidecar)
    except OSError:  # a dangling link is no caption
        if seen is not None:
            seen.file(found.sidecar, None)
        return None, None
    if seen is not None:
        seen.file(found.sidecar, stat)
    return index.caption(found.sidecar, stat)


def _add(
    file: Path,
    caption: str | None,
    repeat: int,
    dataset: int,
    index: Index,
    caption_problem: str | None,
    result: ScanResult,
    caption_from: str,
) -> None:
    try:
        stat = file.stat()
        probe = index.image(file, stat) if S_ISREG(stat.st_mode) else _NOT_REGULAR
    except OSError as exc:
        probe = Probe(0, 0, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
    _take(str(file), probe, caption, caption_problem, repeat, dataset, result, caption_from)


def _take(
    path: str, probe: Probe, caption: str | None, caption_problem: str | None, repeat: int, dataset: int,
    result: ScanResult, caption_from: str,
) -> None:
    """The image as an item, or its problem (a name the manifest cannot hold, a bad image, a bad caption)."""
    if not _utf8(path):
        result.problems.append(Problem(path, "its file name is not UTF-8 (rename it)"))
        return
    if probe.error is not None:
        result.problems.append(Problem(path, probe.error))
        return
    if caption_problem is not None:
        result.problems.append(Problem(path, caption_problem))
        return
    if caption is None:
        result.missing_captions += 1
    result.items.append(
        ImageItem(path, probe.width, probe.height, caption or "", dataset, repeat, caption is not None,
                  probe.sha256, probe.size, caption_from if caption is not None else "default")
    )


def _utf8(text: str) -> bool:
    """Whether UTF-8 can hold `text` (the manifest's encoding): a file name of bytes that are not UTF-8
    comes back from the file system with lone surrogates, and a JSON string may hold one."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Found(NamedTuple):
    """An image file met by `_walk`, with its caption file's entry when the folder lists one."""

    path: str
    entry: os.DirEntry[str]
    sidecar: str
    sidecar_entry: os.DirEntry[str] | None
    maybe_sidecar: bool  # listed under another letter case (found on a case-insensitive disk)
    repeat: int
    tokens: str


def _walk(root: Path, caption_ext: str, result: ScanResult, seen: Seen | None = None) -> list[_Found]:
    """Image files under root, sorted by path, with the repeat and class tokens of their nearest
    `<N>_name` folder (kohya's DreamBooth layout: `10_sks dog` repeats 10 times, captioned `sks dog` by
    default). Folders are listed top down in name order; each is stat'ed to catch symlink loops."""
    found: list[_Found] = []
    walked: set[tuple[int, int]] = set()
    stack: list[tuple[str, int, str]] = [(str(root), 1, "")]
    while stack:
        folder, repeat, tokens = stack.pop()
        try:
            stat = os.stat(folder)
        except OSError as exc:
            if seen is not None:
                seen.folder(folder, None)
            result.problems.append(_unlisted(folder, exc))
            continue
        if seen is not None:
            seen.folder(folder, stat)
        if (stat.st_dev, stat.st_ino) in walked:
            result.problems.append(Problem(folder, "symlink loop: folder already scanned, not followed"))
            continue
        walked.add((stat.st_dev, stat.st_ino))
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:  # its images are not silently left out
            result.problems.append(_unlisted(folder, exc))
            continue
        names = {entry.name: entry for entry in entries}
        lower: set[str] | None = None  # the names in lower case, made when a caption is not listed
        prefix = os.path.join(folder, "")
        subfolders = []
        for entry in entries:
            if _is_dir(entry):
                subfolders.append(entry.name)
                continue
            stem, suffix = _split(entry.name)
            if suffix in _IMAGE_SUFFIXES:
                sidecar = stem + caption_ext
                listed = names.get(sidecar)
                if listed is None and lower is None:
                    lower = {name.lower() for name in names}
                maybe = listed is None and lower is not None and sidecar.lower() in lower
                found.append(_Found(entry.path, entry, prefix + sidecar, listed, maybe, repeat, tokens))
                continue
            if suffix in UNSUPPORTED_EXTENSIONS:
                result.problems.append(Problem(entry.path, f"unsupported image format ({suffix})"))
            if seen is not None:
                _note_link(entry, seen)
        for name in sorted(subfolders, reverse=True):
            stack.append((prefix + name, *_kohya_folder(name, repeat, tokens)))
    found.sort(key=itemgetter(0))
    return found


_IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)


def _unlisted(folder: str, exc: OSError) -> Problem:
    why = exc.strerror or exc.__class__.__name__
    return Problem(folder, f"folder cannot be listed ({why}): its images are left out")


def _note_link(entry: os.DirEntry[str], seen: Seen) -> None:
    """Stamp a symlink that is neither a folder nor an image: its target may become a folder of images
    (or stop being one) with nothing in this folder's listing changing."""
    try:
        if not entry.is_symlink():
            return
        stat: os.stat_result | None = os.stat(entry.path)
    except OSError:
        stat = None
    seen.file(entry.path, stat)


def _split(name: str) -> tuple[str, str]:
    """`os.path.splitext(name)` with the extension in lower case (faster: called for every file)."""
    dot = name.rfind(".")
    if dot > 0 and name[0] != ".":
        return name[:dot], name[dot:].lower()
    stem, suffix = os.path.splitext(name)
    return stem, suffix.lower()


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _kohya_folder(name: str, repeat: int, tokens: str) -> tuple[int, str]:
    """(repeats, class tokens) of a folder: its own when it is named `<N>_<tokens>`, else its parent's."""
    match = _KOHYA_FOLDER.match(name)
    if match:
        return max(1, int(match.group(1))), match.group(2).strip()
    return repeat, tokens


def _scan_manifest(path: Path, dataset: int, index: Index, result: ScanResult) -> None:
    base = path.parent
    for where, row in _manifest_rows(path, result):
        name = row.get("path")
        if not isinstance(name, str) or not name:
            result.problems.append(Problem(where, "manifest row has no `path`"))
            continue
        if not _utf8(name):
            result.problems.append(Problem(where, "its `path` is not UTF-8 text (a lone surrogate)"))
            continue
        file = (base / name).resolve()
        weight = _weight(row.get("weight"))
        if weight is None:
            result.problems.append(Problem(where, f"weight `{row.get('weight')}` is not a whole number ≥ 1"))
            continue
        if not file.is_file():
            result.problems.append(Problem(str(file), f"listed in {where} but does not exist"))
            continue
        caption = row.get("caption")
        text = caption.strip() if isinstance(caption, str) else None
        problem = None
        if text is not None and not _utf8(text):
            text, problem = None, f"its caption in {where} is not UTF-8 text (a lone surrogate)"
        elif text is not None and len(text.encode("utf-8")) > MAX_CAPTION_BYTES:
            text, problem = None, f"its caption in {where} is over {MAX_CAPTION_BYTES // 1024} KiB"
        _add(file, text, weight, dataset, index, problem, result, "manifest")


def _weight(value: Any) -> int | None:
    if value is None or value == "":
        return 1
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and number >= 1 else None


def _manifest_rows(path: Path, result: ScanResult) -> list[tuple[str, dict[str, Any]]]:
    try:
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    except OSError as exc:
        result.problems.append(Problem(str(path), f"manifest cannot be read ({exc.strerror or exc})"))
        return []
    lines = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as exc:
            result.problems.append(Problem(f"{path}:{number}", f"not UTF-8 (at byte {exc.start + 1})"))
            lines.append("")  # keeps the numbering; a blank row is skipped
    text = "\n".join(lines)
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.suffix.lower() == ".csv":
        import csv  # only for CSV manifests

        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            result.problems.append(Problem(str(path), "CSV manifest needs a header row naming `path`"))
            return []
        for number, row in enumerate(reader, start=2):
            rows.append((f"{path}:{number}", dict(row)))
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            result.problems.append(Problem(f"{path}:{number}", f"not a JSON object ({exc})"))
            continue
        if not isinstance(row, dict):
            result.problems.append(Problem(f"{path}:{number}", "not a JSON object"))
            continue
        rows.append((f"{path}:{number}", row))
    return rows
