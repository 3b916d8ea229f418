"""`compile` on the CPU: steady steps/s compiled against eager, and what a first run pays to compile.

Usage: python bench/compile_speed.py [--steps 120] [--threads 2] [--out bench/results/compile_speed.md]

Each configuration is one recipe run by `sdxlc run` as a user runs it, three times, each in a fresh
process and output folder: eager (no `compile`), compiled on an empty TorchInductor cache (`cold`: a first
run, which compiles), and compiled again on the cache the cold run filled (`warm`: any later run of the
recipe). Measured per run: the whole-process wall time, the steady steps/s from the TensorBoard loss
stamps of every 10th step past step 10 (as bench/vs_diffusers.py reads them: no start-up, loading or
saving), and the peak RSS. The compile cost is wall(cold) − wall(warm); the step factor is the compiled
steady seconds per step over the eager ones. Both are what sdxlc/estimate/compiletime.py holds, and the
estimate of each plan (seconds per step, compile seconds) is printed beside the measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from vs_diffusers import MODEL, SDXLC, logged_speed, make_data, run_timed  # noqa: E402

RESULT = ROOT / "bench" / "results" / "compile_speed.md"
RECIPE = """sdx 1
model "{model}"
profile cpu
data "{data}" caption .txt
resolution {px} no buckets
{method} fp32 {words}
lr 1e-4 adamw; schedule constant
batch {batch}
steps {steps}
seed 42
output "out"
"""
# name: (method line, resolution, batch)
CONFIGS = {
    "attention r8, 96 px, batch 2 (bench/vs_diffusers.py's job)": ("lora rank 8 alpha 8 on unet", 96, 2),
    "attention+ff+conv r16, 64 px, batch 4 (the quickstart's LoRA)":
        ("lora rank 16 alpha 16 on unet modules attention+ff+conv", 64, 4),
}


def one(work: Path, name: str, kind: str, steps: int, data: Path, env: dict[str, str]) -> dict[str, Any]:
    method, px, batch = CONFIGS[name]
    folder = work / f"{list(CONFIGS).index(name)}-{kind}"
    folder.mkdir()
    recipe = folder / "bench.sdx"
    recipe.write_text(RECIPE.format(model=MODEL, data=data, px=px, method=method, batch=batch, steps=steps,
                                    words="" if kind == "eager" else "compile"))
    wall, rss = run_timed([str(SDXLC), "run", str(recipe)], env, folder, folder / "run.log")
    plan = json.loads((folder / "out" / "plan.json").read_text())
    estimate = plan["estimate"]
    return {"config": name, "kind": kind, "wall": wall, "rss_mib": rss, "sps": logged_speed(folder, 10),
            "estimate_step": estimate["seconds_per_step"],
            "estimate_compile": estimate["time_breakdown"].get("compile", 0.0)}


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# `compile` on the CPU: compiled against eager steps, and the first run's compile", "",
             "Written by `bench/compile_speed.py` (its docstring says what is measured).", "",
             f"- date: {meta['date']} UTC; machine: {meta['machine']}, {meta['cpus']} CPUs, "
             f"{meta['threads']} threads; torch {meta['torch']}",
             f"- load average before: {meta['load_before']}; after: {meta['load_after']}",
             f"- steps per run: {meta['steps']}; command: `{meta['command']}`", "",
             "| configuration | run | wall (s) | steady steps/s | peak RSS (MiB) | estimate s/step | "
             "estimate compile (s) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['kind']} | {r['wall']:.1f} | {r['sps']:.2f} | {r['rss_mib']:.0f} | "
              f"{r['estimate_step']:.3f} | {r['estimate_compile']:.0f} |" for r in rows]
    lines += ["", "## Per configuration", ""]
    for name in CONFIGS:
        got = {r["kind"]: r for r in rows if r["config"] == name}
        if len(got) < 3:
            continue
        factor = got["eager"]["sps"] / got["warm"]["sps"]
        compile_s = got["cold"]["wall"] - got["warm"]["wall"]
        lines.append(f"- {name}: compiled steady steps/s {got['warm']['sps'] / got['eager']['sps']:.2f}× "
                     f"eager (step factor {factor:.2f}); the first run compiles for {compile_s:.0f} s "
                     f"(cold {got['cold']['wall']:.0f} s − warm {got['warm']['wall']:.0f} s; the estimate "
                     f"says {got['cold']['estimate_compile']:.0f} s); a warm compiled run's whole process "
                     f"{got['eager']['wall'] / got['warm']['wall']:.2f}× as fast as eager; peak RSS "
                     f"+{got['warm']['rss_mib'] - got['eager']['rss_mib']:.0f} MiB warm, "
                     f"+{got['cold']['rss_mib'] - got['eager']['rss_mib']:.0f} MiB cold")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--only", default="", help="run the configurations whose name contains this")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    import torch

    meta = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}", "cpus": os.cpu_count(),
            "machine": platform.machine(), "threads": args.threads, "torch": torch.__version__,
            "steps": args.steps, "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "command": " ".join(["python", *sys.argv])}
    work = Path(tempfile.mkdtemp(prefix="compile-speed-"))
    rows: list[dict[str, Any]] = []
    try:
        data, _ = make_data(work)
        for name in (n for n in CONFIGS if args.only in n):
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                   "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{list(CONFIGS).index(name)}")}
            for kind in ("eager", "cold", "warm"):
                rows.append(one(work, name, kind, args.steps, data, env))
                r = rows[-1]
                print(f"{name} {kind}: {r['wall']:.1f} s, {r['sps']:.2f} steps/s, {r['rss_mib']:.0f} MiB",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    args.out.write_text(render(rows, meta))
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
