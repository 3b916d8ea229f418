"""`sdxlc plan --exact` against real memory: the same training step of a small SDXL-topology model (UNet
block widths 96/192/384, transformer depth 1/2/2, 84 M parameters; a full fine-tune with AdamW) run by the
runtime in a fresh process under `MALLOC_MMAP_THRESHOLD_=65536` (so RSS follows live bytes), its peak RSS
per phase (VmHWM reset at each seam) minus an empty process's RSS (bench/memory_vs_rss.py).

In the steady-state step the fine-tune holds weights W, AdamW state 2W and, from the backward pass on,
gradients W: miscounting any one of them (gradients twice, state once, weights in another dtype) moves
a phase by 20% or more, and TOLERANCE fails it."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import memory_vs_rss as bench  # noqa: E402

TOLERANCE = 0.08  # of the measured phase peak; what the process itself adds is ~1-4% here
ROW: bench.Row = ("small96", "finetune", 64, 1, False, "adamw")


def test_exact_matches_peak_rss_phase_by_phase(tmp_path: Path) -> None:
    # bench.measure_row's steps, overlapped: each process's own peaks are the same whatever runs beside it
    run = tmp_path / "run"
    run.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        base = pool.submit(bench.spawn, ["--baseline"], 1, 600)  # imports while the model is built
        model_line = f'model "{bench.build_mid_folder("small96", tmp_path / "model")}"'
        plan_path = run / "plan.json"
        plan_path.write_text(json.dumps(bench.plan_for(model_line, ROW, run)))
        real = pool.submit(bench.spawn, ["--worker", str(plan_path)], 1, 1800)  # trains while --exact runs
        plan, predicted = bench.predictions(model_line, ROW, run)
        assert plan == json.loads(plan_path.read_text())  # the step measured is the step simulated
        r = {"baseline": base.result()["VmRSS"], **real.result(), **predicted}
    s = bench.summary(r)
    real, exact = s["third"], r["exact_phases"]
    assert r["resettable"], "VmHWM could not be reset: phase peaks would be cumulative"
    for phase in ("forward", "backward", "optimizer"):
        error = (exact[phase] - real[phase]) / real[phase]
        assert abs(error) <= TOLERANCE, (phase, exact[phase] >> 20, real[phase] >> 20, f"{error:+.1%}")
    # AdamW's state appears in the first optimizer step: the third forward pass holds it, the first does not
    state = r["exact_breakdown"]["optimizer_state"]
    grown = real["forward"] - s["first"]["forward"]
    assert abs(grown - state) <= 0.1 * state, (grown >> 20, state >> 20)
