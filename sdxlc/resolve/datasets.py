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

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

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
}


@dataclass(frozen=True)
class ImageItem:
    """One training image: its path, its displayed size (EXIF orientation applied) and its caption."""

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


@dataclass(frozen=True)
class Problem:
    """A file that cannot be trained on, and why."""

    path: str
    reason: str

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
) -> ScanResult:
    """Every image of a folder (recursive, sorted) or manifest, with its size, hash and caption."""
    index = index if index is not None else Index(None)
    result = ScanResult()
    if is_manifest(path):
        _scan_manifest(path, dataset, index, result)
    elif path.is_dir():
        for file, repeat, tokens in _walk(path, result):
            sidecar = file.with_suffix(caption_ext)
            caption, problem = index.caption(sidecar)
            source = str(sidecar)
            if caption is None and problem is None and tokens:  # kohya: the folder's class tokens
                caption, source = tokens, f"folder {file.parent.name}"
                result.folder_captions += 1
            _add(file, caption, repeat, dataset, index, problem, result, source)
    else:
        result.problems.append(Problem(str(path), "not a folder or a .jsonl/.csv manifest"))
    return result


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
        regular = S_ISREG(stat.st_mode)
        probe = index.image(file, stat) if regular else Probe(0, 0, "not a regular file (a pipe or device)")
    except OSError as exc:
        probe = Probe(0, 0, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
    if probe.error is not None:
        result.problems.append(Problem(str(file), probe.error))
        return
    if caption_problem is not None:
        result.problems.append(Problem(str(file), caption_problem))
        return
    if caption is None:
        result.missing_captions += 1
    result.items.append(
        ImageItem(str(file), probe.width, probe.height, caption or "", dataset, repeat, caption is not None,
                  probe.sha256, probe.size, caption_from if caption is not None else "default")
    )


def _walk(root: Path, result: ScanResult) -> list[tuple[Path, int, str]]:
    """Image files under root, sorted, with the repeat and class tokens of their nearest `<N>_name`
    folder (kohya's DreamBooth layout: `10_sks dog` repeats 10 times, captioned `sks dog` by default)."""
    found: list[tuple[Path, int, str]] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        try:
            stat = here.stat()
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            result.problems.append(Problem(str(here), "symlink loop: folder already scanned, not followed"))
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        repeat, tokens = _kohya_folder(here.relative_to(root))
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_EXTENSIONS:
                found.append((here / name, repeat, tokens))
            elif suffix in UNSUPPORTED_EXTENSIONS:
                result.problems.append(Problem(str(here / name), f"unsupported image format ({suffix})"))
    found.sort(key=lambda pair: str(pair[0]))
    return found


def _kohya_folder(relative: Path) -> tuple[int, str]:
    """(repeats, class tokens) of the nearest `<N>_<tokens>` folder; (1, "") when there is none."""
    for part in reversed(relative.parts):
        match = _KOHYA_FOLDER.match(part)
        if match:
            return max(1, int(match.group(1))), match.group(2).strip()
    return 1, ""


def _scan_manifest(path: Path, dataset: int, index: Index, result: ScanResult) -> None:
    base = path.parent
    for where, row in _manifest_rows(path, result):
        name = row.get("path")
        if not isinstance(name, str) or not name:
            result.problems.append(Problem(where, "manifest row has no `path`"))
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
        if text is not None and len(text.encode("utf-8")) > MAX_CAPTION_BYTES:
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
