"""Resolve the plan's `launch` section: how many processes train, how they share the model, and the
step arithmetic of a run spread over them.

The arithmetic (docs/SCALE.md): the epoch's batches are dealt out over the ranks (rank r takes
batches r, r+N, r+2N, … of the epoch, N = world size, the last round padded by repeating batches from
the epoch's start), so each optimizer step consumes N × accumulate batches: one per rank per
micro-step. Hence

    steps_per_epoch = ceil(batches_per_epoch / (accumulate × N))
    effective_batch = batch_size × accumulate × N   (images per optimizer step, all ranks together)

`training.batches_per_epoch` stays the count over all ranks; `training.total_steps` is what every rank
runs. `steps N` still means N optimizer steps, so N processes see N times the images of one; `epochs N`
keeps the images seen and divides the steps.

Pure Python: no torch.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from sdxlc.lang.layers import Layers, Provenance
from sdxlc.resolve.profiles import Profile

MIXED_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
DISTRIBUTED_TYPE = {"ddp": "MULTI_GPU", "deepspeed-zero2": "DEEPSPEED", "fsdp": "FSDP"}
MAIN_PROCESS_PORT = 29500
FSDP_MIN_NUM_PARAMS = 10_000_000  # size-based wrapping: units of at least this many parameters


class Builder(Protocol):
    """What resolve.py's builder offers: values with their provenance, keyed by plan path."""

    layers: Layers
    provenance: dict[str, Provenance]

    def take(self, recipe_path: str, plan_path: str, default: Any = None) -> Any: ...

    def derived(self, plan_path: str, value: Any, source: str = "derived") -> Any: ...


def resolve_launch(
    b: Builder,
    training: dict[str, Any],
    precision: dict[str, Any],
    optimizer: dict[str, Any],
    profile: Profile,
) -> dict[str, Any]:
    """The `launch` section; corrects `training`'s per-epoch and total step counts for the world size.

    Every combination resolves; sdxlc/check/semantic.py judges them.
    """
    processes = int(b.take("launch.processes", "launch.processes", 1))
    machines = int(b.take("launch.machines", "launch.machines", 1))
    strategy = str(b.take("launch.strategy", "launch.strategy", "ddp"))
    world = processes * machines
    split_steps(b, training, world)
    batch, accumulate = int(training["batch_size"]), int(training["accumulate"])
    mixed = MIXED_PRECISION[str(precision["mixed"])]
    sharded = world > 1 and strategy != "ddp"
    for key in ("world_size", "distributed_type", "backend", "mixed_precision", "batch_per_process",
                "batches_per_step", "global_batch", "main_process_port", "deepspeed", "fsdp"):
        b.derived(f"launch.{key}", None)
    return {
        "processes": processes,
        "machines": machines,
        "world_size": world,
        "strategy": strategy,
        "distributed_type": DISTRIBUTED_TYPE[strategy] if world > 1 else "NO",
        "backend": "gloo" if profile.device == "cpu" else "nccl",
        "mixed_precision": mixed,
        "batch_per_process": batch,
        "batches_per_step": accumulate * world,
        "global_batch": batch * accumulate * world,
        "main_process_port": MAIN_PROCESS_PORT,
        "deepspeed": deepspeed_config(training, world, mixed, optimizer)
        if sharded and strategy == "deepspeed-zero2" else None,
        "fsdp": fsdp_settings() if sharded and strategy == "fsdp" else None,
    }


def split_steps(b: Builder, training: dict[str, Any], world: int) -> None:
    """Per-epoch and total optimizer steps when each step consumes accumulate × world batches."""
    accumulate = int(training["accumulate"])
    per_epoch = max(1, math.ceil(int(training["batches_per_epoch"]) / (accumulate * world)))
    training["steps_per_epoch"] = per_epoch
    training["effective_batch"] = int(training["batch_size"]) * accumulate * world
    if b.layers.given("training.epochs"):
        training["total_steps"] = int(training["epochs"]) * per_epoch
    else:
        training["epochs"] = math.ceil(int(training["total_steps"]) / per_epoch)


def deepspeed_config(
    training: dict[str, Any], world: int, mixed: str, optimizer: dict[str, Any]
) -> dict[str, Any]:
    """A DeepSpeed ZeRO-2 config with every value decided (no `auto`): DeepSpeed clips gradients itself
    and accelerate needs the micro-batch to prepare a model without a dataloader."""
    batch, accumulate = int(training["batch_size"]), int(training["accumulate"])
    return {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": accumulate,
        "train_batch_size": batch * accumulate * world,
        "gradient_clipping": float(optimizer["max_grad_norm"]),
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": mixed == "bf16"},
        "fp16": {"enabled": mixed == "fp16", "loss_scale": 0},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def fsdp_settings() -> dict[str, Any]:
    """accelerate's FullyShardedDataParallelPlugin arguments: full sharding, size-based wrapping, and the
    original parameters kept (LoRA trains a few of them among frozen ones)."""
    return {
        "fsdp_version": 1,
        "sharding_strategy": "FULL_SHARD",
        "auto_wrap_policy": "size_based_wrap",
        "min_num_params": FSDP_MIN_NUM_PARAMS,
        "backward_prefetch": "BACKWARD_PRE",
        "state_dict_type": "FULL_STATE_DICT",
        "use_orig_params": True,
        "sync_module_states": True,
        "cpu_ram_efficient_loading": False,
        "cpu_offload": False,
    }
