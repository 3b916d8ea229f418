"""The multi-process part of the estimate (docs/SCALE.md): the launch shape, what one process of a
sharded run holds, and the seconds spent moving gradients between processes. Pure Python: no torch."""

from __future__ import annotations

from typing import Any

# Gradient traffic between processes (docs/SCALE.md): PCIe 4.0 x16 as measured by all-reduce benchmarks
# (NVLink is several times faster: the estimate errs slow), gloo over shared memory, a 100 Gbit/s network.
LINK_BYTES_PER_S = {"cuda": 20e9, "cpu": 2e9}
NETWORK_BYTES_PER_S = 12.5e9
GRADIENT_BYTES = 4  # gradients of the trained values are fp32


def launch_shape(plan: dict[str, Any]) -> tuple[int, int, str]:
    """(world size, machines, strategy); one process when the plan predates `launch`."""
    launch = plan.get("launch") or {}
    machines, strategy = int(launch.get("machines", 1)), str(launch.get("strategy", "ddp"))
    return int(launch.get("world_size", 1)), machines, strategy


def shard_terms(plan: dict[str, Any], terms: dict[str, int]) -> dict[str, int]:
    """The training terms of ONE process of a multi-process run (docs/SCALE.md).

    ddp: every process holds everything, plus DDP's gradient buckets (a flat copy of the gradients).
    deepspeed-zero2: optimizer state and gradients are split over the processes (`*_zero2_shard`).
    fsdp: the weights too (`*_fsdp_shard`); the all-gathered unit in flight is not counted.
    """
    world, _, strategy = launch_shape(plan)
    if world <= 1:
        return terms
    out = dict(terms)
    if strategy == "ddp":
        out["ddp_gradient_buckets"] = terms.get("gradients", 0)
        return out
    sharded = ["gradients", "optimizer_state"]
    if strategy == "fsdp":
        sharded += ["unet_weights", "trainable_params"]
    suffix = "_zero2_shard" if strategy == "deepspeed-zero2" else "_fsdp_shard"
    for key in sharded:  # a term the method's peak does not hold (a fine-tune trains its *_weights) stays out
        if key in out:
            out[key + suffix] = -(-out.pop(key) // world)
    return out


def communication_seconds(plan: dict[str, Any], trained: int, unet_weight_bytes: int, device: str) -> float:
    """Seconds per optimizer step spent averaging gradients (ring all-reduce: 2(N-1)/N of the `trained`
    values' fp32 bytes), plus FSDP's weight all-gathers (forward and backward); not overlapped with
    compute."""
    world, machines, strategy = launch_shape(plan)
    if world <= 1:
        return 0.0
    share = (world - 1) / world
    moved = 2 * share * trained * GRADIENT_BYTES
    if strategy == "fsdp":
        moved += 2 * share * unet_weight_bytes
    bandwidth = NETWORK_BYTES_PER_S if machines > 1 else LINK_BYTES_PER_S[device]
    return moved / bandwidth
