"""Cold-start cost of `sdxlc plan` against `import torch`.

Run from the repository root: ``.venv/bin/python bench/plan_startup.py [--runs N]``. After one untimed
warm-up of each (it fills the file cache, the bytecode cache and the parser cache), the two commands run
in alternation, N times each (default 15), each in a fresh process, so a change in the machine's load
reaches both alike; the medians of the wall times are compared. Target: planning costs at most 0.12 of
importing torch. Writes ``bench/results/plan_startup.md`` with the load average before and after.

Two kinds of plan run, in alternation with `import torch`: the recipe as it is (read before: its statements
come from the statement cache, sdxlc/lang/statement_cache.py) and, unless `--no-edited`, an edited copy
of it (a new comment line per run, written before the timer starts, beside the recipe so its relative
paths hold): what `sdxlc plan` costs after every edit, with the recipe parsed by lark again.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/style_lora.sdx"
RUNS = 15
TARGET_RATIO = 0.12
RESULT = ROOT / "bench" / "results" / "plan_startup.md"
EARLIER = "\n## Earlier results"


def _sdxlc() -> list[str]:
    exe = Path(sys.executable).parent / "sdxlc"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sdxlc.cli"]


def _env() -> dict[str, str]:
    # Any value of PYTHONDONTWRITEBYTECODE, even "0", stops Python writing bytecode: without it every
    # run would compile the modules again, which an installed package never does.
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _warm(cmd: list[str]) -> None:
    warm = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    if warm.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({warm.returncode}):\n{warm.stderr or warm.stdout}")


def _once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, check=True)
    return time.perf_counter() - start


EDITED = ROOT / "recipes" / ".plan-startup-edited.sdx"


def _edit(run: int) -> None:
    """The recipe with one more comment line: text the statement cache has not seen."""
    text = (ROOT / RECIPE).read_text(encoding="utf-8")
    EDITED.write_text(f"{text}\n# edit {run} {time.time_ns()}\n", encoding="utf-8")


def _interleaved(a: list[str], b: list[str], edited: list[str] | None,
                 runs: int) -> tuple[list[float], list[float], list[float]]:
    _warm(a)
    _warm(b)
    times_a, times_b, times_e = [], [], []
    try:
        if edited is not None:
            _edit(-1)
            _warm(edited)
        for run in range(runs):
            times_a.append(_once(a))
            times_b.append(_once(b))
            if edited is not None:
                _edit(run)
                times_e.append(_once(edited))
    finally:
        EDITED.unlink(missing_ok=True)
    return times_a, times_b, times_e


def _versions() -> str:
    found = []
    for name in ("lark", "jsonschema", "click", "torch"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each command (default %(default)s)")
    parser.add_argument("--no-edited", action="store_true", help="leave out the edited recipe's plan runs")
    args = parser.parse_args()
    runs = args.runs
    plan_cmd = [*_sdxlc(), "plan", RECIPE]
    torch_cmd = [sys.executable, "-c", "import torch"]
    edited_cmd = None if args.no_edited else [*_sdxlc(), "plan", str(EDITED.relative_to(ROOT))]
    load_before = _load()
    plan_all, torch_all, edited_all = _interleaved(plan_cmd, torch_cmd, edited_cmd, runs)
    load_after = _load()
    plan_s, torch_s = statistics.median(plan_all), statistics.median(torch_all)
    ratio = plan_s / torch_s
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{cpus} CPUs (nproc), {_cpu_model()}, Python {platform.python_version()}"
    header = ("| date | machine | `sdxlc plan` median (s) | `import torch` median (s) | ratio "
              f"| target ≤ {TARGET_RATIO} |")
    rule = "|---|---|---|---|---|---|"
    row = f"| {date} | {machine} | {plan_s:.3f} | {torch_s:.3f} | {ratio:.3f} | {verdict} |"
    if edited_all:
        edited_s = statistics.median(edited_all)
        edited_ratio = edited_s / torch_s
        meets = "meets" if edited_ratio <= TARGET_RATIO else "misses"
        row += (f"\n| {date}, the recipe edited before each run | {machine} | {edited_s:.3f} | "
                f"{torch_s:.3f} | {edited_ratio:.3f} | {meets} |")
    detail = (
        f"\nCommands: `{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(plan_cmd))}` and "
        f"`python -c \"import torch\"`, {runs} runs each in alternation after one warm-up of each, fresh "
        f"process per run (`.venv/bin/python bench/plan_startup.py --runs {runs}`).\n"
        f"Versions: {_versions()}. Load average (1, 5, 15 min) before {load_before}, after {load_after}.\n"
        f"All runs (s): plan {', '.join(f'{s:.3f}' for s in plan_all)}; "
        f"torch {', '.join(f'{s:.3f}' for s in torch_all)}"
        + (f"; edited recipe {', '.join(f'{s:.3f}' for s in edited_all)}" if edited_all else "") + ".\n"
    )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    previous = RESULT.read_text(encoding="utf-8") if RESULT.exists() else ""
    earlier = previous[previous.index(EARLIER):] if EARLIER in previous else ""  # kept as written
    text = f"# plan start-up vs `import torch`\n\n{header}\n{rule}\n{row}\n{detail}{earlier}"
    RESULT.write_text(text, encoding="utf-8")
    print(header)
    print(rule)
    print(row)
    print(f"ratio {ratio:.3f} ({verdict} the target of {TARGET_RATIO}); "
          f"written to {RESULT.relative_to(ROOT)}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
