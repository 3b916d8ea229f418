"""Time `sdxlc plan` over a large dataset as a user sees it: `python bench/plan_50k.py [--count N]
[--root DIR] [--runs R]`.

Writes N distinct small real images once (64 px PNGs and JPEGs of four shapes, each with a `.txt`
caption but every tenth, in kohya `<N>_<name>` folders split into sub-folders of 1,000) under
`DIR/images` (default `/tmp/sdxlc-bench-<N>`, reused by later runs), with a recipe beside them. Then runs
`sdxlc plan` as a subprocess: cold (the cache folder, and so the index, removed before each run) and
warm (the index left by the run before), R times each, and prints the median with the load average.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

SHAPES = [((64, 64), "PNG"), ((64, 48), "JPEG"), ((48, 64), "PNG"), ((80, 64), "JPEG")]
CONCEPTS = ["2_sks dog", "3_ohwx cat", "1_style"]
RECIPE = """sdx 1
model tiny
profile cpu
data "images" caption .txt
resolution 96 buckets 64..160 step 32
lora rank 8 alpha 8 on unet
lr 1e-3 adamw
batch 2
steps 100
output "out"
"""


def make_dataset(root: Path, count: int) -> float:
    """Write the images (once: a finished folder holds `.complete`); returns the seconds it took."""
    images = root / "images"
    done = images / ".complete"
    if done.is_file() and done.read_text() == str(count):
        return 0.0
    shutil.rmtree(images, ignore_errors=True)
    started = time.perf_counter()
    bases = [Image.effect_noise(size, 30).convert("RGB") for size, _ in SHAPES]
    for n in range(count):
        (size, fmt), base = SHAPES[n % len(SHAPES)], bases[n % len(SHAPES)]
        folder = images / CONCEPTS[n % len(CONCEPTS)] / f"{n // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = base.copy()
        for bit in range(20):  # a few pixels spell n: every file's bytes differ
            picture.putpixel((bit, 0), (255, 255, 255) if n >> bit & 1 else (0, 0, 0))
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 85}))
        stem = folder / f"{n:06d}"
        stem.with_suffix(".png" if fmt == "PNG" else ".jpg").write_bytes(buffer.getvalue())
        if n % 10:
            caption = f"sks, picture {n}, shape {size[0]}x{size[1]}"
            stem.with_suffix(".txt").write_text(caption, encoding="utf-8")
    (root / "plan.sdx").write_text(RECIPE, encoding="utf-8")
    done.write_text(str(count))
    return time.perf_counter() - started


def plan_seconds(root: Path, cold: bool) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one `sdxlc plan` subprocess (stdout discarded); exits on
    a failed plan."""
    if cold:
        shutil.rmtree(root / ".sdxlc-cache", ignore_errors=True)
    command = [str(Path(sys.executable).parent / "sdxlc"), "plan", str(root / "plan.sdx")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` exited {done.returncode}:\n{done.stderr}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["cold", "warm"], default=None)
    args = parser.parse_args()
    root = args.root or Path(f"/tmp/sdxlc-bench-{args.count}")
    root.mkdir(parents=True, exist_ok=True)
    wrote = make_dataset(root, args.count)
    if wrote:
        print(f"wrote {args.count} images in {wrote:.1f} s")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs; "
          f"`sdxlc plan {root / 'plan.sdx'}`")
    for label in ("cold", "warm"):
        if args.only not in (None, label):
            continue
        if label == "warm" and not (root / ".sdxlc-cache").is_dir():
            plan_seconds(root, cold=False)  # leaves the index the warm runs read
        before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        runs = [plan_seconds(root, cold=label == "cold") for _ in range(args.runs)]
        walls, cpus = [wall for wall, _ in runs], [cpu for _, cpu in runs]
        after = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        each = ", ".join(f"{t:.2f}" for t in walls)
        print(f"{label}: median {wall:.2f} s wall, {cpu:.2f} s CPU of {args.runs} runs (wall {each}); "
              f"load average before {before}, after {after}")


if __name__ == "__main__":
    main()
