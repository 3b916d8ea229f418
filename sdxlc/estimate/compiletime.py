"""What `compile` (torch.compile of the UNet's training step) does to the time estimate.

Two terms, both measured on the CPU with `bench/compile_speed.py` (bench/results/compile_speed.md):

- **Steps run faster.** A compiled step runs the UNet's forward and backward as generated kernels instead of
  thousands of separately dispatched operations. On a small model, where dispatch is most of a step, that
  is most of the gain; what stays eager (data loading, the optimizer step, encoders outside the UNet) does
  not change. The step's seconds are multiplied by the measured `STEP_FACTOR` of the model family on the
  device. Where nothing was measured (the SDXL family, CUDA) the factor is 1: no gain is promised; nor
  where the adapter's layers break the graph at every layer (LoHa, LoKr, DoRA: SDX0618).
- **The first run compiles.** Each batch shape the plan lists (`training.compile.shapes`) is traced and
  compiled once, in the host process, whatever the device: seconds per UNet layer per shape, measured on
  the tiny-shapes model's cold compile and scaled by the UNet's layer count (an extrapolation for larger
  models). TorchInductor caches the result on disk, so a second run of the same plan compiles in seconds;
  the estimate counts a first run.
"""

from __future__ import annotations

from typing import Any

from sdxlc.check.compiled import breaking_adapter

# steady compiled step ÷ eager step, per (model family, device): bench/results/compile_speed.md
STEP_FACTOR: dict[tuple[str, str], float] = {("tiny", "cpu"): 0.62}
# seconds of a cold compile (forward and backward) per UNet layer per batch shape, on 2 CPU cores
COMPILE_SECONDS_PER_LAYER = 0.55


def step_factor(plan: dict[str, Any], family: str, device: str) -> float:
    """The measured factor, or 1 where nothing was measured or the adapter's layers break the compiled
    graph at every layer (SDX0618, sdxlc/check/compiled.py)."""
    if breaking_adapter(plan) is not None:
        return 1.0
    return STEP_FACTOR.get((family, device), 1.0)


def compile_seconds(plan: dict[str, Any], model: dict[str, Any]) -> float:
    """Seconds the first run spends compiling: every planned shape, at the UNet's layer count."""
    spec = plan["training"].get("compile")
    if not spec:
        return 0.0
    layers = int(model["layer_count"]["unet"])
    return float(spec["shapes"]) * layers * COMPILE_SECONDS_PER_LAYER
