"""Time cold and warm dataset indexing: `python bench/index_speed.py [N] [--dir DIR] [--images FOLDER]`.

Writes N tiny real images (alternating PNG and JPEG, a few sizes, each with a caption), or takes the
images already in FOLDER (such as the ones `bench/plan_50k.py` leaves), then scans the folder twice
through the persistent index (`<cache>/index.bin`): once with no index (cold) and once with it (warm),
the warm pass also split into reading the index file and the scan itself.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from PIL import Image

from sdxlc.resolve.datasets import scan_dataset
from sdxlc.resolve.index import Index


def make_images(folder: Path, count: int) -> None:
    blobs = []
    kinds = [((16, 12), "PNG"), ((12, 16), "JPEG"), ((16, 16), "PNG"), ((20, 10), "JPEG")]
    for n, (size, fmt) in enumerate(kinds):
        buffer = io.BytesIO()
        Image.effect_noise(size, 20 + n).convert("RGB").save(buffer, format=fmt)
        blobs.append((buffer.getvalue(), ".png" if fmt == "PNG" else ".jpg"))
    for n in range(count):
        sub = folder / f"{n // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        data, ext = blobs[n % len(blobs)]
        (sub / f"{n:06d}{ext}").write_bytes(data)
        (sub / f"{n:06d}.txt").write_text(f"sks, image {n}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int, nargs="?", default=50_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--images", type=Path, default=None, help="scan this folder instead of writing one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        folder, cache = args.images or Path(root) / "images", Path(root) / "cache"
        if args.images is None:
            started = time.perf_counter()
            make_images(folder, args.count)
            print(f"wrote {args.count} images in {time.perf_counter() - started:.1f} s")
        for label in ("cold", "warm"):
            started = time.perf_counter()
            index = Index.in_dir(cache)
            index.load()
            loaded = time.perf_counter() - started
            found = scan_dataset(folder, ".txt", index=index)
            index.save()
            seconds = time.perf_counter() - started
            print(f"{label}: {len(found.items)} images, {len(found.problems)} problems in {seconds:.2f} s "
                  f"(index read {loaded:.2f} s; hits {index.hits}, misses {index.misses})")


if __name__ == "__main__":
    main()
