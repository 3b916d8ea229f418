"""Image folders with sidecar captions: what is there, how big each image is, and what is wrong.

Pure Python (Pillow reads only the image headers), shared by the compiler and the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageItem:
    """One training image: its path, its displayed size (EXIF orientation applied) and its caption."""

    path: str
    width: int
    height: int
    caption: str
    dataset: int = 0


@dataclass
class ScanResult:
    items: list[ImageItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing_captions: int = 0


def scan_dataset(path: Path, caption_ext: str, dataset: int = 0) -> ScanResult:
    """Every image under path (recursive, sorted), with its size from the header and its caption."""
    from PIL import Image, UnidentifiedImageError

    result = ScanResult()
    if not path.is_dir():
        result.problems.append(f"{path}: not a folder")
        return result
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    for file in files:
        try:
            with Image.open(file) as image:
                width, height = image.size
                orientation = image.getexif().get(_EXIF_ORIENTATION)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            result.problems.append(f"{file}: unreadable image ({exc.__class__.__name__})")
            continue
        if width < 1 or height < 1:
            result.problems.append(f"{file}: empty image")
            continue
        if orientation in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        caption_file = file.with_suffix(caption_ext)
        if caption_file.is_file():
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        else:
            caption = ""
            result.missing_captions += 1
        result.items.append(ImageItem(str(file), width, height, caption, dataset))
    return result
