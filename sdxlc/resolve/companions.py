"""Companion images of a dataset: a loss mask and a control image per training image, found by stem.

`mask "folder"` and `control "folder"` name a folder holding, for each training image, an image with the
same stem (`a.png` ↔ `masks/a.png`, any image extension). An image under a `<N>_name` sub-folder looks for
the same relative path first (`10_dog/a.png` ↔ `masks/10_dog/a.*`), then for its bare stem. `mask alpha`
takes each image's own alpha channel instead.

The pairing is decided here, once, and recorded per image in the sample manifest (the companion's path
and sha256); the runtime cuts the companion exactly like its image (runtime/train/companions.py).

- an image without a mask trains unmasked (all white), as kohya does: counted (`masks_missing`) and warned
  (SDX0536); under `mask alpha` an image without an alpha channel is the same (SDX0537);
- an image without a readable control image is a bad input: left out (listed in the warnings) or, under
  `on bad image fail`, an error (SDX0530) — the run trains the complete pairs;
- a companion whose shape differs from its image's is stretched to it: a mask is warned (SDX0538); a
  control image is a bad input (its content would not line up).

Pure Python: Pillow reads headers only (and the index hashes the files it has not seen).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, Span, make
from sdxlc.resolve.datasets import IMAGE_EXTENSIONS, ImageItem, Problem, ScanResult
from sdxlc.resolve.index import Index, Probe

ALPHA = "alpha"
SHOWN = 5  # paths named in a warning; the rest are counted
ASPECT_TOLERANCE = 0.01  # relative aspect difference a companion may have (rounding of a resize)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SUFFIXES = frozenset(IMAGE_EXTENSIONS)


@dataclass
class Pairing:
    """What pairing a dataset's images with their companions found."""

    masks_missing: int = 0
    control_pairs: int = 0
    control_missing: int = 0
    no_mask: list[str] = field(default_factory=list)  # images without a mask (the first few)
    no_alpha: list[str] = field(default_factory=list)  # `mask alpha` images without alpha (the first few)
    stretched: list[str] = field(default_factory=list)  # masks of another shape (the first few)
    stretched_count: int = 0
    transparent: list[str] = field(default_factory=list)  # mask files with an alpha channel (the first few)
    transparent_count: int = 0
    absent: list[tuple[str, str, str]] = field(default_factory=list)  # (word, folder, what is wrong)

    def counts(self) -> dict[str, int]:
        return {"masks_missing": self.masks_missing, "control_pairs": self.control_pairs,
                "control_missing": self.control_missing}


def folder_setting(value: Any, base: Path, alpha: bool = False) -> str | None:
    """A dataset's `mask` or `control` as the plan records it: None, `alpha` (with `alpha`: the mask's
    word for the image's own alpha channel), or the folder's absolute path (relative to `base`, the
    recipe's folder)."""
    if value is None:
        return None
    if alpha and value == ALPHA:
        return ALPHA
    return os.path.realpath(base / str(value))


class Folder:
    """The image files of a companion folder, by relative stem and by bare stem."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.relative: dict[str, str] = {}
        self.bare: dict[str, list[str]] = {}
        self.exists = os.path.isdir(root)
        for path in sorted(self._files()):
            stem = os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")
            self.relative.setdefault(stem, path)
            self.bare.setdefault(os.path.basename(stem), []).append(path)

    def _files(self) -> Iterator[str]:
        seen: set[tuple[int, int]] = set()
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:
                subfolders.clear()
                continue
            seen.add((stat.st_dev, stat.st_ino))
            subfolders.sort()
            for name in files:
                if os.path.splitext(name)[1].lower() in _SUFFIXES:
                    yield os.path.join(folder, name)

    def find(self, image: str, dataset_root: str) -> str | None:
        """The companion of `image`: the same relative stem under the folder, else the only file with its
        bare stem (the first in path order when several share it)."""
        stem = os.path.splitext(image)[0]
        try:
            relative = os.path.relpath(stem, dataset_root).replace(os.sep, "/")
        except ValueError:  # another drive
            relative = ""
        if relative and not relative.startswith("..") and relative in self.relative:
            return self.relative[relative]
        matches = self.bare.get(os.path.basename(stem))
        return matches[0] if matches else None


def probe(path: str, index: Index) -> Probe:
    """The companion's displayed size and sha256 through the index (header read, hashed once)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        return Probe(0, 0, f"cannot be read ({exc.strerror or type(exc).__name__})")
    if not S_ISREG(stat.st_mode):
        return Probe(0, 0, "not a regular file")
    return index.image(path, stat)


def has_alpha(path: str) -> bool:
    """Whether the image carries an alpha channel (or palette transparency): a header read."""
    from PIL import Image  # loaded when a mask folder is read, not by every plan

    try:
        with Image.open(path) as image:
            return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def same_shape(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two (width, height) have the same aspect, up to the rounding of a resize."""
    return abs(a[0] * b[1] - a[1] * b[0]) <= ASPECT_TOLERANCE * a[1] * b[1]


def pair(scan: ScanResult, dataset_root: str, mask: str | None, control: str | None,
         index: Index) -> Pairing:
    """Give every scanned image its mask and control image (in place); an image whose control image is
    missing or unreadable moves to the scan's problems."""
    result = Pairing()
    result.absent = [(word, folder, problem) for word, folder in (("mask", mask), ("control", control))
                     if folder is not None and folder != ALPHA
                     for problem in [_folder_problem(folder, dataset_root)] if problem]
    if result.absent or (mask is None and control is None):
        return result
    masks = Folder(mask) if mask not in (None, ALPHA) else None
    controls = Folder(control) if control is not None else None
    kept: list[ImageItem] = []
    for item in scan.items:
        if controls is not None:
            found, problem = _control(item, dataset_root, controls, index)
            if problem is not None:
                scan.problems.append(Problem(item.path, problem))
                result.control_missing += 1
                continue
            item = item._replace(control=found[0], control_sha256=found[1])
            result.control_pairs += 1
        if mask == ALPHA:
            item = _alpha(item, result)
        elif masks is not None:
            item, problem = _mask(item, dataset_root, masks, index, result)
            if problem is not None:
                scan.problems.append(Problem(item.path, problem))
                continue
        kept.append(item)
    scan.items[:] = kept
    return result


def _folder_problem(folder: str, dataset_root: str) -> str:
    """Why a companion folder cannot be used ("" when it can): missing, or inside the dataset's folder
    (its images would train as images, and an image could be its own mask)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return "is a file, not a folder (name the folder that holds the files of the same stems)"
    if not os.path.isdir(folder):
        return "does not exist"
    root = os.path.realpath(dataset_root)
    if os.path.isdir(root) and os.path.commonpath([folder, root]) == root:
        return f"is inside the dataset folder {root}: its images would train as training images"
    if os.path.isdir(root) and os.path.commonpath([folder, root]) == os.path.realpath(folder):
        return (f"holds the dataset folder {root}: an image would pair with itself or with another folder's "
                "image of its stem")
    return ""


def _control(item: ImageItem, root: str, controls: Folder, index: Index
             ) -> tuple[tuple[str, str], str | None]:
    path = controls.find(item.path, root)
    if path is None:
        return ("", ""), f"no control image with its stem in {controls.root}"
    found = probe(path, index)
    if found.error is not None:
        return ("", ""), f"its control image {path} {found.error}"
    if not same_shape((found.width, found.height), (item.width, item.height)):
        return ("", ""), (f"its control image {path} is {found.width}x{found.height}, the image "
                          f"{item.width}x{item.height}: another shape")
    return (path, found.sha256), None


def _alpha(item: ImageItem, result: Pairing) -> ImageItem:
    if has_alpha(item.path):
        return item._replace(mask=ALPHA)
    result.masks_missing += 1
    if len(result.no_alpha) < SHOWN:
        result.no_alpha.append(item.path)
    return item


def _mask(item: ImageItem, root: str, masks: Folder, index: Index, result: Pairing
          ) -> tuple[ImageItem, str | None]:
    path = masks.find(item.path, root)
    if path is None:
        result.masks_missing += 1
        if len(result.no_mask) < SHOWN:
            result.no_mask.append(item.path)
        return item, None
    found = probe(path, index)
    if found.error is not None:
        return item, f"its mask {path} {found.error}"
    if not same_shape((found.width, found.height), (item.width, item.height)):
        result.stretched_count += 1
        if len(result.stretched) < SHOWN:
            result.stretched.append(f"{path} ({found.width}x{found.height} for {item.width}x{item.height})")
    if has_alpha(path):
        result.transparent_count += 1
        if len(result.transparent) < SHOWN:
            result.transparent.append(path)
    return item._replace(mask=path, mask_sha256=found.sha256), None


def listing(paths: list[str], count: int) -> str:
    """A few paths, and how many more."""
    more = count - len(paths)
    return ", ".join(paths) + (f", … and {more} more" if more > 0 else "")


def diagnostics(pairing: Pairing, name: str, mask: str | None, spans: dict[str, Span | None]
                ) -> list[Diagnostic]:
    """What a dataset's pairing found: unusable folders; images without a mask or alpha, masks of another
    shape. `spans`: where the recipe sets `mask` and `control`."""
    span = spans.get("mask")
    found: list[Diagnostic] = [
        make("SDX0539", f"the folder of `{word}` for `{name}`, {folder}, {problem}", spans.get(word),
             help="give a folder beside the dataset's, relative to the recipe")
        for word, folder, problem in pairing.absent
    ]
    if pairing.no_mask:
        found.append(make(
            "SDX0536",
            f"{pairing.masks_missing} image(s) of `{name}` have no mask in {mask} and train unmasked (all "
            f"white, as kohya does): {listing(pairing.no_mask, pairing.masks_missing)}",
            span, help="add a mask with the same stem for each, or ignore this if they should train whole"))
    if pairing.no_alpha:
        found.append(make(
            "SDX0537",
            f"`mask alpha`: {pairing.masks_missing} image(s) of `{name}` have no alpha channel and train "
            f"unmasked (all white): {listing(pairing.no_alpha, pairing.masks_missing)}",
            span, help='save them as RGBA PNG or WebP, the ignored parts transparent, or use `mask "dir"`'))
    if pairing.stretched:
        found.append(make(
            "SDX0538",
            f"{pairing.stretched_count} mask(s) of `{name}` differ in shape from their image and are "
            f"stretched to it: {listing(pairing.stretched, pairing.stretched_count)}",
            span, help="a mask needs its image's aspect (the same size is best): export it from the image"))
    if pairing.transparent:
        found.append(make(
            "SDX0535",
            f"{pairing.transparent_count} mask(s) of `{name}` have an alpha channel, which a mask does not "
            "use: their transparent pixels count as composited onto white, so they train: "
            f"{listing(pairing.transparent, pairing.transparent_count)}",
            span, help="save masks as opaque grayscale (black = ignored), or put the mask into each image's "
                       "alpha channel and use `mask alpha`"))
    return found


def report_lines(dataset: dict[str, Any]) -> list[str]:
    """The `sdxlc plan` lines of a dataset's masks and control images (none without them)."""
    lines = []
    if dataset.get("mask"):
        source = "their alpha channel" if dataset["mask"] == ALPHA else dataset["mask"]
        missing = dataset.get("masks_missing", 0)
        lines.append(f"    masked loss: {dataset['images'] - missing} of {dataset['images']} images masked "
                     f"by {source}" + (f"; {missing} without a mask train unmasked" if missing else ""))
    if dataset.get("control"):
        left_out = dataset.get("control_missing", 0)
        lines.append(f"    control images: {dataset.get('control_pairs', 0)} pairs from {dataset['control']}"
                     + (f"; {left_out} image(s) without one left out" if left_out else ""))
    return lines
