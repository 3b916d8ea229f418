"""Training speed of the tiny model on the CPU: one process against two (gloo), same batch per process.

Run from the repository root: ``.venv/bin/python bench/multiprocess.py``. Each configuration compiles
the same recipe (``--set launch.processes=N``), trains STEPS optimizer steps and times the training
phase only (model loading and the final save and samples are left out) on rank 0. The threads of the
machine's cores are split evenly over the processes. Two processes are started with
``accelerate.debug_launcher``, as the tests do. Writes ``bench/results/multiprocess.md``.

On a CPU the processes share the same cores, so two processes are not expected to be faster: the point
of the CPU path is to test the multi-process code (docs/SCALE.md). The numbers show what it costs.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULT = ROOT / "bench" / "results" / "multiprocess.md"
STEPS = 20
BATCH = 2
RECIPE = f"""sdx 1
model tiny
profile cpu
data "{ROOT / 'recipes' / 'data' / 'quickstart'}" repeat 4
resolution 64 buckets 64..128 step 32
lora rank 4
batch {BATCH}
steps {STEPS}
log every 1000 no tensorboard
seed 3
"""


def compile_plan(folder: Path, processes: int) -> dict[str, Any]:
    from sdxlc.pipeline import compile_recipe

    recipe = folder / "bench.sdx"
    recipe.write_text(RECIPE + f'output "{folder / "out"}"\n', encoding="utf-8")
    compiled = compile_recipe(recipe, (f"launch.processes={processes}",))
    if compiled.plan is None:
        problems = "; ".join(d.message for d in compiled.diagnostics)
        raise SystemExit(f"the bench recipe does not compile: {problems}")
    plan: dict[str, Any] = compiled.plan
    return plan


def rank_main(folder: str, processes: int, threads: int) -> None:
    """One process: train and, on rank 0, write the training phase's seconds."""
    import torch
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from runtime.train import run

    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    state = PartialState(cpu=True)
    timed: dict[str, float] = {}
    original = run.train

    def train(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        stats = original(*args, **kwargs)
        timed["seconds"] = time.perf_counter() - start
        return stats

    run.train = train  # type: ignore[assignment]
    plan = compile_plan(Path(folder), processes)
    run.run_plan(plan, progress=False)
    if state.is_main_process:
        (Path(folder) / "seconds.json").write_text(json.dumps(timed), encoding="utf-8")


def measure(processes: int, threads: int) -> float:
    """Seconds of the training phase, measured in a fresh interpreter: forking the ranks from a process
    whose OpenMP threads already ran can hang them."""
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--measure", str(processes), str(threads)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def measure_here(processes: int, threads: int) -> float:
    from accelerate import debug_launcher

    with tempfile.TemporaryDirectory() as folder:
        if processes == 1:
            rank_main(folder, 1, threads)
        else:
            debug_launcher(rank_main, args=(folder, processes, threads), num_processes=processes)
        seconds: float = json.loads((Path(folder) / "seconds.json").read_text(encoding="utf-8"))["seconds"]
    return seconds


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cores = os.cpu_count() or 1
    rows = []
    for processes, threads in ((1, cores), (1, 1), (2, max(1, cores // 2))):
        seconds = measure(processes, threads)
        rows.append((processes, threads, seconds, STEPS / seconds, STEPS * BATCH * processes / seconds))
        print(f"{processes} process(es) × {threads} thread(s): {STEPS / seconds:.2f} steps/s", flush=True)
    lines = [
        "# Multi-process training speed on the CPU (tiny model)",
        "",
        f"`bench/multiprocess.py`, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"**{cores} cores**, Python {platform.python_version()}.",
        f"Tiny model, batch {BATCH} per process, {STEPS} optimizer steps, training phase only (rank 0).",
        "Two processes: gloo, `Accelerator(cpu=True)`, started with `accelerate.debug_launcher`.",
        "",
        "| processes | threads each | seconds | steps/s | images/s (all ranks) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {t} | {s:.2f} | {sps:.2f} | {ips:.1f} |" for p, t, s, sps, ips in rows]
    lines += [
        "",
        "Each step of two processes trains twice the images (global batch 2 × batch) and adds a gloo",
        "all-reduce of the LoRA gradients; both processes share the same cores. On a CPU this path exists",
        "to test the multi-process code, not for speed (SDX0561 says so). Where the two-process steps lose",
        "more than the shared cores explain (gloo's polling threads competing with two compute processes",
        "on few cores is the likely cause) has not been profiled.",
        "",
    ]
    RESULT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(measure_here(int(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
