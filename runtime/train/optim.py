"""The optimizer and learning-rate schedule the plan names.

The class is the plan's `optimizer.class` (the compiler resolved it from schema/optimizers.json, the
table it checks `args` against), and every argument is the plan's: the runtime adds none of its own.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from diffusers.optimization import get_scheduler

from runtime import RunError

# what each `optimizer.implementation` passes to torch's AdamW or SGD
CLASS_ARGS: dict[str, dict[str, bool]] = {
    "fused": {"fused": True, "foreach": False},
    "foreach": {"foreach": True, "fused": False},
    "for_loop": {"foreach": False, "fused": False},
}


def optimizer_class(name: str, path: str) -> type[torch.optim.Optimizer]:
    """The optimizer class at `path` (module path and name), as the plan names it."""
    module, _, attribute = path.rpartition(".")
    try:
        cls: type[torch.optim.Optimizer] = getattr(importlib.import_module(module), attribute)
    except ImportError as error:
        raise RunError(f"optimizer {name!r} needs the `{module.split('.')[0]}` package ({error})") from None
    return cls


def relative_step(optimizer: dict[str, Any]) -> bool:
    """Whether Adafactor computes its own learning rate (then the plan's lr only labels the logs)."""
    return optimizer["name"] == "adafactor" and bool(optimizer["args"].get("relative_step"))


def implementation_args(optimizer: dict[str, Any]) -> dict[str, bool]:
    """`fused=` and `foreach=` for the plan's `optimizer.implementation` (none when the plan has no
    implementation: one of an older sdxlc passes its `args` as they are)."""
    implementation = optimizer.get("implementation")
    if implementation is None:
        return {}
    if implementation not in CLASS_ARGS:
        raise RunError(f"the plan's optimizer.implementation {implementation!r} is not one of "
                       f"{', '.join(CLASS_ARGS)}")
    return dict(CLASS_ARGS[implementation])


def make_optimizer(optimizer: dict[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer the plan names, with exactly the plan's arguments and implementation."""
    cls = optimizer_class(optimizer["name"], optimizer["class"])
    args = {**optimizer["args"], **implementation_args(optimizer)}
    if relative_step(optimizer):  # the class refuses an explicit lr; group lrs are ignored
        return cls(groups, lr=None, **args)
    return cls(groups, lr=optimizer["lr"], **args)


def make_schedule(plan: dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
    """The learning-rate schedule; Adafactor with relative_step gets transformers' AdafactorSchedule,
    which only reports the learning rate Adafactor computes (the compiler allows no other schedule)."""
    if "optimizer" in plan and relative_step(plan["optimizer"]):
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=plan["optimizer"]["lr"])
    return get_scheduler(
        plan["schedule"]["name"], optimizer, num_warmup_steps=plan["schedule"]["warmup_steps"],
        num_training_steps=plan["training"]["total_steps"],
    )
