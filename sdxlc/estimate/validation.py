"""What `ema` and `validate` add to the estimate: the EMA copy's memory and the validation passes' time.

The EMA is an fp32 copy of every trained parameter, kept on the training device (4 bytes per trained
parameter, on every process). A validation pass is one forward pass (no gradients) per validation image,
at every multiple of `validate.every_steps` and after the last step; with `ema` it runs twice (raw and
EMA weights). docs/TRAINING.md "EMA" and "Validation loss".
"""

from __future__ import annotations

from typing import Any

EMA_BYTES = 4  # fp32


def ema_bytes(plan: dict[str, Any], trained: int) -> int:
    """Bytes of the EMA copy of `trained` parameters (0 without `ema`)."""
    return trained * EMA_BYTES if plan["training"].get("ema") else 0


def validation_events(plan: dict[str, Any]) -> int:
    """How many times the run computes the validation loss: at every multiple of `every_steps` and after
    the last step (once when the last step is such a multiple); 0 without `validate`."""
    validate = plan.get("validate")
    if not validate:
        return 0
    total, every = int(plan["training"]["total_steps"]), validate["every_steps"]
    if not every:
        return 1
    return total // int(every) + (0 if total % int(every) == 0 else 1)


def validation_forward_passes(plan: dict[str, Any]) -> int:
    """Forward passes of single images over the run: events × images × (2 with the EMA, else 1)."""
    validate = plan.get("validate")
    if not validate:
        return 0
    return validation_events(plan) * int(validate["count"]) * (2 if validate["ema"] else 1)


def validation_seconds(plan: dict[str, Any], image_flops: float, throughput: float) -> float:
    """Seconds of the validation passes, from the FLOPs of one image's forward pass."""
    return validation_forward_passes(plan) * image_flops / throughput if throughput > 0 else 0.0
