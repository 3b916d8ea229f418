"""Trainable parameters of LoHa, LoKr and DoRA, from a LoRA's count per rank (docs/ESTIMATE.md).

A module of in·k² inputs and out outputs holds per rank `in·k² + out` LoRA values (`per_rank`, summed
over the targeted modules):

  lora   rank · per_rank
  loha   2 · rank · per_rank: two LoRA-shaped pairs (w1a·w1b, w2a·w2b), exactly
  lokr   at most rank · per_rank: w2 is a LoRA of a width/factor block (or a full block no larger than
         such a LoRA), w1 a factor × factor matrix; counted as the LoRA of the same rank, an upper bound
         but for that small matrix (the model facts hold no per-layer shapes to count the split exactly)
  dora   + one magnitude per output row: per_rank / 2 (exact for square layers, the attention projections)

Activations: LoHa and LoKr build each layer's ΔW (as large as its weight) in the forward pass and apply
it to the layer's input; autograd keeps both for the backward pass: `delta_weight_bytes` counts the ΔW
(on the tiny model `--exact` measures 1.74 MiB more activations for a LoHa than a LoRA, this counts
1.81 MiB). Not counted: with gradient checkpointing, one block's ΔW at a time; the ΔW products' FLOPs
(the adapted layers' matrix products run twice: `--exact` measures +40% step FLOPs for a LoHa on the
tiny model); DoRA's weight built per layer to take its row norms (a transient) and the base layer's
output it keeps for the magnitude's gradient.
"""

from __future__ import annotations

from typing import Any

LORA_DTYPE_BYTES = 4  # the adapters' weights, and so the ΔW they build, are fp32


def delta_weight_bytes(plan: dict[str, Any], model: dict[str, Any]) -> int:
    """Activations a LoHa or LoKr keeps beyond a LoRA's: each adapted layer's ΔW, built in the forward
    pass and kept for the backward pass of `x · ΔWᵀ`, as large as the layer's weight (model facts
    `lora_weight_elements`). With gradient checkpointing the UNet's are rebuilt one block at a time in the
    backward pass and are not counted; the text encoders' are."""
    method = plan["method"]
    if method.get("kind") != "lora" or method.get("adapter") not in ("loha", "lokr"):
        return 0
    sizes = model.get("lora_weight_elements")
    if not sizes:
        return 0
    targets = set(method["targets"])
    elements = 0
    if "unet" in targets and not plan["training"]["gradient_checkpointing"]:
        elements += sum(int(sizes["unet"].get(m, 0)) for m in method["unet_modules"])
    for te in sorted(targets & {"te1", "te2"}):
        elements += sum(int(sizes[te].get(m, 0)) for m in method["te_modules"])
    return elements * LORA_DTYPE_BYTES


def param_count(method: dict[str, Any], rank: int, per_rank: int) -> int:
    """Trainable values of the plan's adapter, given LoRA's `per_rank` over the targeted modules."""
    adapter = method.get("adapter", "lora")
    count = rank * per_rank * (2 if adapter == "loha" else 1)
    if method.get("dora"):
        count += per_rank // 2
    return count
