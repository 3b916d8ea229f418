"""What a compiled run on a filled TorchInductor cache still pays before its faster steps.

Usage: python bench/compile_cached.py [--steps 120] [--pairs 2] [--threads 2]

For each configuration of bench/compile_speed.py: one short compiled run fills a fresh inductor cache
(a first run's compile; not timed here, bench/results/compile_speed.md has it), then `--pairs` pairs of
`sdxlc run` in alternation, eager and compiled on that cache, each a fresh process. Per pair the cached
compile's cost is what the compiled run's whole process took beyond the eager one's, plus the step time
its faster steps saved: `wall(compiled) - wall(eager) + steps × (1/sps(eager) - 1/sps(compiled))`, with
the steady steps/s from the runs' TensorBoard stamps. Divided by the compiled graph's layers
(sdxlc/estimate/compiletime.py `graph_layers`) and batch shapes it is what `CACHED_SECONDS_PER_LAYER`
holds (tests/test_compile.py checks it against bench/results/compile_cached.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from compile_speed import CONFIGS, one  # noqa: E402
from vs_diffusers import make_data  # noqa: E402

from sdxlc.estimate.analytic import model_facts  # noqa: E402
from sdxlc.estimate.compiletime import CACHED_SECONDS_PER_LAYER, graph_layers  # noqa: E402

RESULT = ROOT / "bench" / "results" / "compile_cached.md"
FILL_STEPS = 12


def layers_of(work: Path, name: str, kind: str) -> tuple[int, int]:
    """(graph layers, batch shapes) of the plan a run wrote."""
    plan = json.loads((work / f"{list(CONFIGS).index(name)}-{kind}" / "out" / "plan.json").read_text())
    return graph_layers(plan, model_facts(plan)), int(plan["training"]["compile"]["shapes"])


def measure(work: Path, name: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    index = list(CONFIGS).index(name)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{index}")}
    one(work, name, "fill", FILL_STEPS, data, env)  # the first run: compiles and fills the cache
    layers, shapes = layers_of(work, name, "fill")
    pairs = []
    for pair in range(args.pairs):
        order = ("eager", "warm") if pair % 2 == 0 else ("warm", "eager")
        got = {}
        for kind in order:
            shutil.rmtree(work / f"{index}-{kind}", ignore_errors=True)
            got[kind] = one(work, name, kind, args.steps, data, env)
        eager, warm = got["eager"], got["warm"]
        cost = warm["wall"] - eager["wall"] + args.steps * (1 / eager["sps"] - 1 / warm["sps"])
        pairs.append({"eager_wall": eager["wall"], "eager_sps": eager["sps"], "compiled_wall": warm["wall"],
                      "compiled_sps": warm["sps"], "cached_compile_s": cost})
        print(f"{name} pair {pair}: eager {eager['wall']:.1f} s {eager['sps']:.2f} steps/s, compiled "
              f"{warm['wall']:.1f} s {warm['sps']:.2f} steps/s: cached compile {cost:.1f} s", flush=True)
    median = statistics.median(p["cached_compile_s"] for p in pairs)
    return {"config": name, "layers": layers, "shapes": shapes, "pairs": pairs, "cached_compile_s": median,
            "per_layer": median / (layers * shapes)}


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = ["# `compile`: what a run on a filled compile cache still pays", "",
             "Written by `bench/compile_cached.py` (its docstring says what is measured).", "",
             f"- date: {meta['date']} UTC; {meta['cpus']} CPUs, {meta['threads']} threads; "
             f"torch {meta['torch']}",
             f"- load average before: {meta['load_before']}; after: {meta['load_after']}",
             f"- {meta['steps']} steps per run, {meta['pairs']} eager/compiled pairs in alternation per "
             f"configuration; command: `{meta['command']}`", "",
             "| configuration | graph layers × shapes | cached compile per pair (s) | median (s) | "
             "per layer per shape (s) | estimate constant (s) |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        per_pair = ", ".join(f"{p['cached_compile_s']:.1f}" for p in row["pairs"])
        lines.append(f"| {row['config']} | {row['layers']} × {row['shapes']} | {per_pair} | "
                     f"{row['cached_compile_s']:.1f} | {row['per_layer']:.4f} | {CACHED_SECONDS_PER_LAYER} |")
    lines += ["", "Per run (wall s, steady steps/s):", ""]
    for row in result["rows"]:
        for i, p in enumerate(row["pairs"]):
            lines.append(f"- {row['config']}, pair {i}: eager {p['eager_wall']:.1f} s at "
                         f"{p['eager_sps']:.2f}, compiled {p['compiled_wall']:.1f} s at "
                         f"{p['compiled_sps']:.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    import torch

    meta = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}", "cpus": os.cpu_count(),
            "threads": args.threads, "torch": torch.__version__, "steps": args.steps, "pairs": args.pairs,
            "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "command": " ".join(["python", *sys.argv])}
    work = Path(tempfile.mkdtemp(prefix="compile-cached-"))
    try:
        data, _ = make_data(work)
        rows = [measure(work, name, args, data) for name in CONFIGS]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    result = {"meta": meta, "rows": rows}
    args.out.write_text(render(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
