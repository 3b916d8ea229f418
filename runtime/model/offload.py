"""`offload text encoders` / `offload vae`: components that live on the CPU and visit the device to encode.

Caching already parks components for good (runtime/train/conditioning.py moves the text encoders and the
VAE to the CPU once their outputs are cached, and sampling brings them back with `unparked`). Offloading is
for runs that encode every batch: the component is marked, kept on the CPU, and `visiting` moves it to the
device for one encode and back before the UNet step. Sampling's `unparked` brings it over like a parked one.
The plan writes the offload words false on the CPU profile (nothing to move) and for trained encoders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

MARK = "_sdxlc_offloaded"


def apply_offload(pipe: Any, plan: dict[str, Any]) -> list[str]:
    """Mark and move the plan's offloaded components to the CPU; returns their pipeline names."""
    precision = plan["precision"]
    names = []
    if precision.get("offload_text_encoders"):
        names += ["text_encoder", "text_encoder_2"]
    if precision.get("offload_vae"):
        names.append("vae")
    for name in names:
        module = getattr(pipe, name)
        setattr(module, MARK, True)
        module.to("cpu")
    return names


def offloaded(module: torch.nn.Module) -> bool:
    return bool(getattr(module, MARK, False))


@contextmanager
def visiting(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """An offloaded module on `device` for the duration, back on the CPU after; any other module, or one
    already on the device (a nested visit), is left where it is."""
    here = next(module.parameters()).device
    move = offloaded(module) and here != device
    if move:
        module.to(device)
    try:
        yield
    finally:
        if move:
            module.to("cpu")
