"""The plan's `training.compile`: the UNet compiled with torch.compile for its training step.

The compiled module shares the UNet's parameters, so the optimizer, checkpoints, EMA and saved weights see
the same tensors; sampling and validation call the UNet itself (eager). Each batch shape compiles once:
the plan counts the shapes its buckets give (sdxlc/resolve/compile.py) and the run allows that many
compiles, so dynamo never gives up on a shape and falls back to eager in the middle of a run. TorchInductor
writes C++ on the CPU, so a CPU run needs a C++ compiler: its absence is a clear error before the model
loads, not an internal error at the first step.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import torch

from runtime import RunError

COMPILERS = ("c++", "g++", "clang++", "cc", "gcc")  # what TorchInductor's CPU code generator may call


def check_compiler(spec: dict[str, Any] | None, device: str) -> None:
    """A RunError when the plan compiles on a CPU that has no C++ compiler on PATH."""
    if not spec or device != "cpu":
        return
    if not any(shutil.which(name) for name in COMPILERS):
        raise RunError("`compile` on the CPU needs a C++ compiler (TorchInductor generates C++): none of "
                       f"{', '.join(COMPILERS)} is on PATH; install one (e.g. g++) or leave `compile` out")


def compiled(model: torch.nn.Module, spec: dict[str, Any] | None,
             say: Callable[[str], None] | None = None) -> Any:
    """`model` itself without a compile spec, else its compiled wrapper, allowed `shapes` compiles; `say`
    tells the user that the first step of each shape compiles (a silent step of minutes looks hung)."""
    if not spec:
        return model
    if say is not None:
        shapes = int(spec["shapes"])
        plural = "s" if shapes > 1 else ""
        say(f"compile: the first step of each of {shapes} batch shape{plural} compiles the UNet's step "
            "(minutes on a CPU the first time; cached on disk for later runs)")
    import torch._dynamo.config as dynamo_config

    limit = max(int(spec["shapes"]), dynamo_config.recompile_limit)
    dynamo_config.recompile_limit = limit
    dynamo_config.accumulated_recompile_limit = max(limit, dynamo_config.accumulated_recompile_limit)
    return torch.compile(model, backend=spec["backend"], mode=spec["mode"], dynamic=False)
