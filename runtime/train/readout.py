"""Losses and gradient norms read from the device only when something needs the numbers.

Reading a tensor's value (`.item()`, `float(t)`) makes the host wait for the device, so the loop keeps
each batch's loss (and each step's gradient norm) as a tensor and reads them all in one transfer at the
run's read points: the steps that log, save, sample or validate, and the last step. A non-finite loss
is found there and reported with the step, epoch and batch it happened at, before anything is saved
from the weights it produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime import RunError

# (optimizer step, its mean batch loss, its learning rate, gradient norm before clipping or None,
# the optimizer's param groups as they were at that step)
Read = tuple[int, float, float, float | None, list[dict[str, Any]]]


def due(plan: dict[str, Any], step: int) -> bool:
    """Whether the values are read after optimizer step `step`: where the run logs, saves a checkpoint,
    samples or validates (runtime/train/run.py), and after the last step."""
    if step >= plan["training"]["total_steps"]:
        return True
    validate = plan.get("validate")
    cadences = (plan["log"]["every_steps"], plan["save"]["every_steps"], plan["sample"]["every_steps"],
                validate["every_steps"] if validate else None)
    return any(every and step % every == 0 for every in cadences)


@dataclass
class _Batch:
    loss: torch.Tensor  # detached
    epoch: int  # 0-based
    index: int  # 0-based, within the epoch
    captions: list[str]


@dataclass
class _Step:
    step: int
    batches: list[_Batch]
    lr: float
    norm: torch.Tensor | None
    groups: list[dict[str, Any]]


@dataclass
class Readout:
    """The batch losses and step norms not read yet."""

    batches: list[_Batch] = field(default_factory=list)  # of the optimizer step under way
    steps: list[_Step] = field(default_factory=list)

    def batch(self, loss: torch.Tensor, epoch: int, index: int, captions: Sequence[str]) -> None:
        self.batches.append(_Batch(loss.detach(), epoch, index, list(captions[:3])))

    def step(self, step: int, lr: float, norm: torch.Tensor | None,
             groups: list[dict[str, Any]] | None) -> None:
        """Close optimizer step `step` with the batches since the last one; `groups` only when measured."""
        kept = [{k: v for k, v in group.items() if k != "params"} for group in groups] if groups else []
        self.steps.append(_Step(step, self.batches, lr, norm, kept))
        self.batches = []

    def read(self, next_step: int) -> list[Read]:
        """Every closed step's values, in one transfer from the device; a non-finite batch loss raises
        RunError naming the step, epoch and batch (`next_step`: the step of batches not closed yet)."""
        steps, open_batches = self.steps, self.batches
        self.steps = []
        losses = [b.loss.float().reshape(()) for s in steps for b in s.batches] + \
                 [b.loss.float().reshape(()) for b in open_batches]
        norms = [s.norm.float().reshape(()) for s in steps if s.norm is not None]
        if not losses and not norms:
            return []
        values: list[float] = to_host(torch.stack([*losses, *(n.to(losses[0].device) for n in norms)])) \
            if losses else to_host(torch.stack(norms))
        read, position = [], 0
        placed = [(s.step, b) for s in steps for b in s.batches] + [(next_step, b) for b in open_batches]
        for (step, batch), value in zip(placed, values, strict=False):
            if not math.isfinite(value):
                self.batches = []
                raise RunError(diverged(value, step, batch.epoch, batch.index, batch.captions))
        norm_values = iter(values[len(losses):])
        for s in steps:
            batch_values = values[position:position + len(s.batches)]
            position += len(s.batches)
            norm = next(norm_values) if s.norm is not None else None
            read.append((s.step, sum(batch_values) / len(batch_values), s.lr, norm, s.groups))
        return read


def to_host(values: torch.Tensor) -> list[float]:
    """The values of a 1-D tensor as Python floats: the one place the loop waits for the device."""
    result: list[float] = values.tolist()
    return result


def diverged(loss: float, step: int, epoch: int, index: int, captions: Sequence[str]) -> str:
    """What to say when the loss stops being a number."""
    return (
        f"the loss became {loss} at step {step} (epoch {epoch + 1}, batch {index + 1}: "
        f"{', '.join(captions[:2])}{'…' if len(captions) > 2 else ''}); training stopped and "
        "the last checkpoint is intact. Usual causes: the stock SDXL VAE in fp16 (use an fp16-fix VAE "
        "or `vae fp32`), or a learning rate too high for the optimizer."
    )

