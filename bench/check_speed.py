"""How fast the compiler answers.

1. `sdxlc check` on every shipped recipe, as a whole process, against `python -c "import torch"`
   (target: at most a quarter).
2. A 500-line recipe compiled in-process (target: under 100 ms).

Run from the repository root: `python bench/check_speed.py`. Writes bench/results/check_speed.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def _median(cmd: list[str]) -> float:
    _wall(cmd)  # warm the file cache
    return statistics.median(_wall(cmd) for _ in range(RUNS))


def _long_recipe(lines: int) -> str:
    body = [
        "sdx 1",
        "model tiny",
        f'data "{ROOT / "recipes" / "data" / "quickstart"}" repeat 2',
        "lora rank 8 alpha 8 on unet",
        "lr 1e-3 adamw; schedule cosine warmup 10%",
        "steps 100",
    ]
    while len(body) < lines:
        # comments and repeated identical settings (allowed: same value twice is only a warning)
        body.append(f"# line {len(body) + 1}: notes kept in the recipe beside the settings")
        body.append("batch 2 accumulate 1")
    return "\n".join(body[:lines]) + "\n"


def _in_process(lines: int) -> float:
    from sdxlc.pipeline import compile_recipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "long.sdx"
        recipe.write_text(_long_recipe(lines), encoding="utf-8")
        compiled = compile_recipe(recipe)
        assert compiled.plan is not None, [d.message for d in compiled.errors]
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            compile_recipe(recipe)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    sdxlc = str(Path(sys.executable).parent / "sdxlc")
    recipes = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "recipes").glob("*.sdx"))]
    check = _median([sdxlc, "check", *recipes])
    torch = _median([sys.executable, "-c", "import torch"])
    long_ms = _in_process(500) * 1000
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        "# compiler speed",
        "",
        "| date | machine | `sdxlc check` all recipes (s) | `import torch` (s) | ratio (≤ 0.25) "
        "| 500-line recipe in-process (ms, ≤ 100) |",
        "|---|---|---|---|---|---|",
        f"| {stamp} | {os.cpu_count()} CPUs, {cpu}, Python {platform.python_version()} | {check:.3f} "
        f"| {torch:.3f} | {check / torch:.2f} | {long_ms:.1f} |",
        "",
        f"Medians of {RUNS} runs after one warm-up. `check` ran on: {', '.join(recipes)}.",
        "The 500-line recipe is mostly comments and repeated settings, over the 12-image quickstart dataset,",
        "compiled with `sdxlc.pipeline.compile_recipe` (lowering, schema, resolve, checks, estimate, seal).",
    ]
    out = ROOT / "bench" / "results" / "check_speed.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
