"""How long an uncached run waits for its batches, with and without data-loading workers:
`python bench/data_wait.py [--images 32] [--size 1024] [--workers 0 1] [--resolution 64] [--steps 40]`.

Writes `--images` JPEGs of `--size` px (noise over gradients, so they compress like photos) and their
captions in a temporary folder, compiles a tiny-model LoRA recipe on them (`profile cpu`, no latent
cache: every batch decodes, resizes and crops its images) and runs it once per worker count. The loop's
batch stream is timed from the outside: "wait" is the time the loop spends in `next()` of the stream
(reading and decoding when there are no workers, waiting for a worker's batch otherwise), "step" is the
rest of the loop (VAE encode, text encoders, UNet forward and backward, optimizer, hooks). The first
step (model warm-up, worker start) is left out of the per-step figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_images(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for n in range(count):
        base = (ramp[None, :, None] * rng.uniform(0.3, 1.0, 3) + ramp[:, None, None] * rng.uniform(0, 0.7, 3))
        pixels = np.clip(base / 2 + rng.normal(0, 24, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{n:03d}.jpg", quality=90)
        (folder / f"{n:03d}.txt").write_text(f"a test picture number {n}", encoding="utf-8")


def compile_plan(folder: Path, workers: int, resolution: int, steps: int, batch: int) -> dict[str, Any]:
    from sdxlc.pipeline import compile_recipe

    recipe = folder / f"bench-{workers}.sdx"
    recipe.write_text(
        f'sdx 1\nprofile cpu\ndata "data" caption .txt\nresolution {resolution} no buckets\n'
        f"lora rank 4 on unet\nbatch {batch}\nsteps {steps}\nlog every 1000 no tensorboard\n"
        f'loader workers {workers}\noutput "out-{workers}"\n', encoding="utf-8")
    compiled = compile_recipe(recipe, ())
    if compiled.plan is None:
        problems = "; ".join(d.message for d in compiled.diagnostics)
        raise SystemExit(f"the bench recipe does not compile: {problems}")
    plan: dict[str, Any] = compiled.plan
    return plan


def measure(plan: dict[str, Any]) -> dict[str, float]:
    """Run the plan; per optimizer step, the seconds spent waiting for the batch and the seconds after."""
    from runtime.train import loop, run

    waits: list[float] = []
    marks: list[float] = []
    original = loop.batches

    @contextlib.contextmanager
    def timed(*args: Any, **kwargs: Any) -> Iterator[Iterator[Any]]:
        with original(*args, **kwargs) as stream:
            def wrapped() -> Iterator[Any]:
                while True:
                    start = time.perf_counter()
                    try:
                        item = next(stream)
                    except StopIteration:
                        return
                    waits.append(time.perf_counter() - start)
                    marks.append(start)
                    yield item
            yield wrapped()
            marks.append(time.perf_counter())

    loop.batches = timed  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        run.execute(plan, progress=False)
        total = time.perf_counter() - started
    finally:
        loop.batches = original  # type: ignore[assignment]
    spans = [b - a for a, b in zip(marks, marks[1:], strict=False)]  # one batch: its wait plus its step
    wait, span = sum(waits[1:]), sum(spans[1:])
    count = max(1, len(spans) - 1)
    return {"wait_ms": 1000 * wait / count, "step_ms": 1000 * (span - wait) / count,
            "in_step": (span - wait) / span if span else float("nan"), "first_s": spans[0] if spans else 0.0,
            "run_s": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024, help="side of the generated JPEGs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--resolution", type=int, default=64, help="training resolution of the tiny model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} cores | load {load} | {torch.get_num_threads()} torch threads | "
          f"torch {torch.__version__}")
    print(f"{args.images} JPEGs of {args.size} px, tiny model at {args.resolution} px, batch {args.batch}, "
          f"{args.steps} steps, no latent cache")
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        (folder / "data").mkdir()
        write_images(folder / "data", args.images, args.size)
        print("| workers | data wait / step | step (no wait) | time in the step | first batch | whole run |")
        print("|---|---|---|---|---|---|")
        for workers in args.workers:
            result = measure(compile_plan(folder, workers, args.resolution, args.steps, args.batch))
            print(f"| {workers} | {result['wait_ms']:.1f} ms | {result['step_ms']:.1f} ms | "
                  f"{100 * result['in_step']:.1f}% | {result['first_s']:.2f} s | {result['run_s']:.1f} s |")


if __name__ == "__main__":
    main()
