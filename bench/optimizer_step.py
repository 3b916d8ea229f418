"""How fast torch's AdamW and SGD step the quickstart's LoRA on the CPU: for-loop, foreach and fused.

The trained parameters of recipes/quickstart.sdx (tiny-shapes UNet, LoRA rank 16 on attention, ff and
conv: 318 tensors, 0.86 M values) with fixed random gradients; `optimizer.step()` + `zero_grad()` of
the three implementations interleaved call by call, so a loaded machine slows all three alike; medians
after a warmup. This is what `optimizer.implementation` (sdxlc/resolve/implementation.py) is chosen from.

Run from the repository root: `python bench/optimizer_step.py`. Writes bench/results/optimizer_step_cpu.md.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

REPEATS, WARMUP = 60, 5
KINDS: dict[str, dict[str, bool]] = {
    "for_loop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"fused": True, "foreach": False},
}


def quickstart_parameters() -> list[torch.nn.Parameter]:
    from runtime.methods import registry
    from runtime.train.run import setup_model
    from sdxlc.pipeline import compile_recipe

    folder = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(ROOT / "recipes", folder / "recipes", ignore=shutil.ignore_patterns("out"))
        plan = compile_recipe(folder / "recipes" / "quickstart.sdx").plan
        assert plan is not None
        pipe = setup_model(plan).pipe
        return [p for group in registry.for_plan(plan).param_groups(pipe) for p in group["params"]]
    finally:
        shutil.rmtree(folder)


def measure(name: str, params: list[torch.nn.Parameter]) -> dict[str, float]:
    cls: Any = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    extra = {"momentum": 0.9, "nesterov": True} if name == "sgd" else {}  # sdxlc's SGD defaults
    optimizers = {kind: cls([{"params": list(params)}], lr=1e-4, **extra, **args)
                  for kind, args in KINDS.items()}
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(REPEATS):
        for kind, optimizer in optimizers.items():
            for parameter, grad in zip(params, grads, strict=True):
                parameter.grad = grad.clone()
            start = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[kind].append(time.perf_counter() - start)
    return {kind: 1000 * statistics.median(values[WARMUP:]) for kind, values in times.items()}


def main() -> None:
    params = quickstart_parameters()
    rows = []
    for name in ("adamw", "sgd"):
        ms = measure(name, params)
        rows.append(f"| {name} | {ms['for_loop']:.1f} | {ms['foreach']:.1f} | {ms['fused']:.1f} | "
                    f"{ms['for_loop'] / ms['fused']:.1f}× |")
        print(name, {k: round(v, 2) for k, v in ms.items()}, flush=True)
    load = os.getloadavg()
    text = "\n".join([
        "# Optimizer step on the CPU: for-loop, foreach, fused",
        "",
        f"`python bench/optimizer_step.py`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, OMP_NUM_THREADS="
        f"{os.environ['OMP_NUM_THREADS']}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        "",
        f"The quickstart's LoRA: {len(params)} tensors, {sum(p.numel() for p in params):,} values. "
        f"`step()` + `zero_grad()`, the three implementations interleaved call by call, median of "
        f"{REPEATS - WARMUP} calls after {WARMUP} warmup calls, in ms.",
        "",
        "| optimizer | for_loop (torch's CPU default) | foreach | fused | fused vs for_loop |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    out = ROOT / "bench" / "results" / "optimizer_step_cpu.md"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
