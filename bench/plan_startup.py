"""Cold-start cost of `sdxlc plan` against `import torch`.

Run from the repository root: ``.venv/bin/python bench/plan_startup.py``. Each command runs in a fresh
process 5 times (after one untimed warm-up run that fills the file cache); the median wall time is
reported. Target: planning costs at most a quarter of importing torch. Writes
``bench/results/plan_startup.md``.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/style_lora.sdx"
RUNS = 5
TARGET_RATIO = 0.25
RESULT = ROOT / "bench" / "results" / "plan_startup.md"


def _sdxlc() -> list[str]:
    exe = Path(sys.executable).parent / "sdxlc"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sdxlc.cli"]


def _time(cmd: list[str], runs: int = RUNS) -> tuple[float, list[float]]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0")
    warm = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if warm.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({warm.returncode}):\n{warm.stderr or warm.stdout}")
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    plan_cmd = [*_sdxlc(), "plan", RECIPE]
    torch_cmd = [sys.executable, "-c", "import torch"]
    plan_s, plan_all = _time(plan_cmd)
    torch_s, torch_all = _time(torch_cmd)
    ratio = plan_s / torch_s
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{cpus} CPUs (nproc), {_cpu_model()}, Python {platform.python_version()}"
    header = ("| date | machine | `sdxlc plan` median (s) | `import torch` median (s) | ratio "
              "| target ≤ 0.25 |")
    rule = "|---|---|---|---|---|---|"
    row = f"| {date} | {machine} | {plan_s:.3f} | {torch_s:.3f} | {ratio:.2f} | {verdict} |"
    detail = (
        f"\nCommands: `{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(plan_cmd))}` and "
        f"`python -c \"import torch\"`, {RUNS} runs each after one warm-up, fresh process per run.\n"
        f"All runs (s): plan {', '.join(f'{s:.3f}' for s in plan_all)}; "
        f"torch {', '.join(f'{s:.3f}' for s in torch_all)}.\n"
    )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    text = f"# plan start-up vs `import torch`\n\n{header}\n{rule}\n{row}\n{detail}"
    RESULT.write_text(text, encoding="utf-8")
    print(header)
    print(rule)
    print(row)
    print(f"ratio {ratio:.2f} ({verdict} the target of {TARGET_RATIO}); "
          f"written to {RESULT.relative_to(ROOT)}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
