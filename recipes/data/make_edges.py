"""Draw control images for recipes/lllite_canny.sdx: the edges of the quickstart shapes.

For every image of a folder (default: recipes/data/quickstart) writes a same-stem PNG of the same size
with its edges white on black: the image in greyscale, a 3×3 edge filter, then a threshold (a small,
dependency-free stand-in for a Canny detector). Deterministic. Run from anywhere:
    python recipes/data/make_edges.py [--images recipes/data/quickstart] [--out recipes/data/quickstart_edges]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
THRESHOLD = 24  # edge strength (0-255) drawn white


def edges(image: Image.Image) -> Image.Image:
    """White edges on black, RGB, the image's size."""
    grey = image.convert("L").filter(ImageFilter.FIND_EDGES)
    return grey.point(lambda value: 255 if value >= THRESHOLD else 0).convert("RGB")


def make_edges(images: Path, out: Path) -> list[Path]:
    """An edge image in `out` for every image in `images`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in SUFFIXES):
        try:
            with Image.open(path) as opened:
                drawn = edges(opened)
        except (OSError, ValueError) as exc:  # not an image, or truncated: no edges, the rest go on
            print(f"skipped {path}: {exc}", file=sys.stderr)
            continue
        target = out / f"{path.stem}.png"
        drawn.save(target, optimize=False)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=HERE / "quickstart")
    parser.add_argument("--out", type=Path, default=HERE / "quickstart_edges")
    args = parser.parse_args()
    if not args.images.is_dir():
        parser.error(f"--images {args.images}: not a folder")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: a file, not a folder")
    if args.out.resolve() == args.images.resolve():  # the edges would train as images of the dataset
        parser.error("--out must be another folder than --images: a control folder sits beside its images")
    written = make_edges(args.images, args.out)
    print(f"wrote {len(written)} edge images to {args.out}")


if __name__ == "__main__":
    main()
