"""An exponential moving average (EMA) of the trained weights (the plan's `training.ema`).

Whatever the method trains (LoRA parameters, fine-tuned weights, embedding rows: its
`trainable_state`) gets an fp32 shadow copy on the same device. After optimizer step s (counted from 1):

  s <= from_step                         ema = weights                 (re-initialised)
  s > from_step, (s - from_step) % every == 0   ema = ema + (1 - decay) · (weights - ema)
                                                 (= decay · ema + (1 - decay) · weights, torch.lerp)
  otherwise                              unchanged

Before the first step the EMA is the initial weights. This is diffusers' `EMAModel` with
`update_after_step = from_step`, without its decay warmup (the decay is the plan's from the first
update) and with an update interval (OneTrainer's `ema_update_step_interval`).

The EMA is saved beside each artifact as `<name>-ema…safetensors` (the method's own format and
metadata, with `sdxlc_ema` = `true` and `sdxlc_ema_decay`), in every training-state checkpoint
(`ema.safetensors`, so a resumed run goes on with the same average), and samples during training are
rendered with the EMA weights (`swapped`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from runtime import RunError
from runtime.methods import base as method_base


class Ema:
    """The fp32 shadow weights of the trained parameters, updated by the plan's rule."""

    def __init__(self, settings: dict[str, Any], named: dict[str, torch.Tensor]) -> None:
        self.decay = float(settings["decay"])
        self.every, self.from_step = int(settings["every"]), int(settings["from_step"])
        self.named = named
        with torch.no_grad():
            self.shadow = {name: p.detach().float().clone() for name, p in named.items()}

    def update(self, step: int) -> None:
        """Apply the rule after optimizer step `step` (counted from 1)."""
        with torch.no_grad():
            if step <= self.from_step:
                for name, parameter in self.named.items():
                    self.shadow[name].copy_(parameter.detach())
            elif (step - self.from_step) % self.every == 0:
                for name, parameter in self.named.items():
                    self.shadow[name].lerp_(parameter.detach().float(), 1.0 - self.decay)

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores (fp32, by parameter name)."""
        return self.shadow

    def load(self, saved: dict[str, torch.Tensor]) -> None:
        if set(saved) != set(self.shadow):
            raise RunError("the checkpoint's EMA holds other parameters than this plan trains")
        with torch.no_grad():
            for name, value in saved.items():
                self.shadow[name].copy_(value.to(self.shadow[name].device, torch.float32))

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The EMA weights in place of the trained ones inside the block; the trained ones after it
        (the same tensors: nothing is copied for fp32 weights)."""
        live = {name: p.data for name, p in self.named.items()}
        try:
            for name, parameter in self.named.items():
                parameter.data = self.shadow[name].to(live[name].dtype)
            yield
        finally:
            for name, parameter in self.named.items():
                parameter.data = live[name]


def for_plan(plan: dict[str, Any], named: dict[str, torch.Tensor],
             saved: dict[str, torch.Tensor] | None = None) -> Ema | None:
    """The run's EMA (None without `training.ema`), from the checkpoint's when resuming from one that
    has it, else from the current weights."""
    settings = plan["training"].get("ema")
    if not settings:
        return None
    ema = Ema(settings, named)
    if saved is not None:
        ema.load(saved)
    return ema


def ema_path(path: Path, name: str) -> Path:
    """`<name>.safetensors` → `<name>-ema.safetensors`; `<name>-step000100…` → `<name>-ema-step000100…`."""
    return path.with_name(path.name.replace(name, f"{name}-ema", 1))


@contextmanager
def marked(ema: Ema) -> Iterator[None]:
    """Files saved inside the block carry the EMA marks in their metadata."""
    keys = {"sdxlc_ema": "true", "sdxlc_ema_decay": str(ema.decay), "sdxlc_ema_every": str(ema.every),
            "sdxlc_ema_from_step": str(ema.from_step)}
    method_base.EXTRA_METADATA.update(keys)
    try:
        yield
    finally:
        for key in keys:
            method_base.EXTRA_METADATA.pop(key, None)


@contextmanager
def weights(ema: Ema | None) -> Iterator[None]:
    """`ema.swapped()`, or nothing without an EMA."""
    if ema is None:
        yield
        return
    with ema.swapped():
        yield
