"""What `compile` (torch.compile of the UNet's training step) does to the time estimate.

Two terms, both measured on the CPU with `bench/compile_speed.py` (bench/results/compile_speed.md):

- **Steps run faster.** A compiled step runs the UNet's forward and backward as generated kernels instead of
  thousands of separately dispatched operations. Where dispatch is most of a step (a LoRA on the attention
  layers of a small model) that is most of the gain; where the convolutions' arithmetic is (a LoRA on the
  convolutions too, whose rank-wide convolutions inductor leaves to the same oneDNN kernels) there is
  little to gain, and what stays eager (data loading, the optimizer step, the encoders) does not change.
  The step's seconds are multiplied by the measured factor of the model family on the device for the
  kind of run (`STEP_FACTOR`: a LoRA on attention layers only, or a LoRA that adapts more). Where nothing
  was measured (fine-tune and embedding runs, the SDXL family, CUDA) the factor is 1: no gain is promised;
  nor where the adapter's layers break the graph at every layer (LoHa, LoKr, DoRA: SDX0618).
- **The first run compiles.** Each batch shape the plan lists (`training.compile.shapes`) is traced and
  compiled once, in the host process, whatever the device: seconds per layer of the compiled graph (the
  UNet's layers and the LoRA layers in it) per shape, fitted to the two cold compiles of
  bench/results/compile_speed.md (166 s and 217 s; the rule gives 175 s and 227 s) and scaled by the layer
  counts: an extrapolation for larger models and for a GPU host's compiler. TorchInductor caches the
  result on disk; the estimate's total counts a first run.
- **A later run still traces.** On a filled cache no kernel is generated again, but dynamo traces the
  step's Python once per shape and the cached code is loaded: seconds per layer per shape too
  (`compile_cached`, shown beside the first run's compile and not counted in the total), fitted to
  bench/results/compile_cached.md (a compiled run's wall time over an eager one's, plus the step time it
  saved, in interleaved pairs).
"""

from __future__ import annotations

from typing import Any

from sdxlc.check.compiled import breaking_adapter

# steady compiled step ÷ eager step, per (model family, device, kind of run): bench/results/compile_speed.md
# (2026-12-06, 2 threads: attention LoRA r8 at 96 px batch 2 0.67, from 3 interleaved eager/compiled pairs;
# attention+ff+conv LoRA r16 at 64 px batch 4 0.90, one run of each)
STEP_FACTOR: dict[tuple[str, str, str], float] = {("tiny", "cpu", "attention lora"): 0.67,
                                                   ("tiny", "cpu", "wider lora"): 0.90}
ATTENTION = frozenset({"to_q", "to_k", "to_v", "to_out.0"})
# seconds of a cold compile (forward and backward) per layer of the graph per batch shape, 2 CPU cores
COMPILE_SECONDS_PER_LAYER = 0.42
# seconds a run on a filled cache spends per layer per batch shape (tracing, loading the cached code):
# bench/results/compile_cached.json (2 interleaved eager/compiled pairs per configuration) measured 0.0399
# (attention LoRA) and 0.0333 (attention+ff+conv)
CACHED_SECONDS_PER_LAYER = 0.037


def kind_of_run(plan: dict[str, Any]) -> str:
    """`attention lora`, `wider lora` (a LoRA that adapts more than attention layers), or the method."""
    method = plan["method"]
    if method.get("kind") != "lora":
        return str(method.get("kind"))
    return "attention lora" if set(method.get("unet_modules") or []) <= ATTENTION else "wider lora"


def step_factor(plan: dict[str, Any], family: str, device: str) -> float:
    """The measured factor, or 1 where nothing was measured or the adapter's layers break the compiled
    graph at every layer (SDX0618, sdxlc/check/compiled.py)."""
    if breaking_adapter(plan) is not None:
        return 1.0
    return STEP_FACTOR.get((family, device, kind_of_run(plan)), 1.0)


def graph_layers(plan: dict[str, Any], model: dict[str, Any]) -> int:
    """Layers of the compiled graph: the UNet's, and the LoRA layers a LoRA on the UNet adds."""
    layers = int(model["layer_count"]["unet"])
    method = plan["method"]
    if method.get("kind") == "lora" and "unet" in (method.get("targets") or []):
        table = model["lora_layer_count"]["unet"]
        layers += sum(int(table.get(m, 0)) for m in method.get("unet_modules") or [])
    return layers


def compile_seconds(plan: dict[str, Any], model: dict[str, Any]) -> float:
    """Seconds the first run spends compiling: every planned shape, at the graph's layer count."""
    spec = plan["training"].get("compile")
    if not spec:
        return 0.0
    return float(spec["shapes"]) * graph_layers(plan, model) * COMPILE_SECONDS_PER_LAYER


def cached_compile_seconds(plan: dict[str, Any], model: dict[str, Any]) -> float:
    """Seconds a run on a filled compile cache still spends before its compiled steps: every shape traced
    and its code loaded."""
    spec = plan["training"].get("compile")
    if not spec:
        return 0.0
    return float(spec["shapes"]) * graph_layers(plan, model) * CACHED_SECONDS_PER_LAYER
