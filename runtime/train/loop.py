"""The training loop: accumulation, clipping, optimizer and schedule steps, exact resume.

A batch's latents and text embeddings come from runtime/train/conditioning.py, the step's objective
from runtime/train/loss.py, the optimizer and schedule from runtime/train/optim.py."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime import RunError
from runtime.methods import registry as methods
from runtime.methods.base import Method
from runtime.methods.finetune import fuse_backward
from runtime.model.load import Models
from runtime.train import checkpoint, ema
from runtime.train.compiling import compiled
from runtime.train.conditioning import Conditioning, Say
from runtime.train.data import Batch, TrainData
from runtime.train.loader import Loader, Ticket, batches
from runtime.train.loader import batch_stream as batch_stream
from runtime.train.loss import batch_loss
from runtime.train.loss import snr_weights as snr_weights
from runtime.train.optim import make_optimizer as make_optimizer
from runtime.train.optim import make_schedule
from runtime.train.readout import Read, Readout, due

StepHook = Callable[[int, int], None]  # (optimizer step done, epoch) -> None
# (optimizer step done, gradient norm before clipping, optimizer param groups) -> None
MetricsHook = Callable[[int, float | None, list[dict[str, Any]]], None]


@dataclass
class TrainStats:
    steps: int = 0
    epoch: int = 0
    losses: list[float] = field(default_factory=list)  # mean batch loss of each optimizer step
    # where the next batch comes from: (0-based epoch, index of the batch within it)
    next_epoch: int = 0
    next_batch: int = 0
    # the live objects a checkpoint saves (set by `train`)
    optimizer: Any = None
    schedule: Any = None
    ema: Any = None  # the EMA of the trained weights with `training.ema` (runtime/train/ema.py)

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    @property
    def average_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


# ---- the loop ---------------------------------------------------------------------------------


@dataclass
class Resume:
    """A checkpoint to continue from; `rebuild_schedule` rebuilds the lr schedule from the current step."""

    saved: checkpoint.Saved
    rebuild_schedule: bool = False


def _restore(resume: Resume, plan: dict[str, Any], method: Method, pipe: Any, stats: TrainStats) -> None:
    saved, live = resume.saved, method.trainable_state(pipe)
    if set(saved.trainable) != set(live):
        raise RunError(f"checkpoint {saved.folder} holds other trainable parameters than this plan")
    with torch.no_grad():
        for name, parameter in live.items():
            parameter.copy_(saved.trainable[name].to(parameter.device, parameter.dtype))
    position = saved.position
    stats.steps, stats.losses = position.step, list(position.losses)
    stats.epoch = position.epoch + (1 if position.batch_index else 0)
    stats.next_epoch, stats.next_batch = position.epoch, position.batch_index
    if stats.steps >= plan["training"]["total_steps"]:
        raise RunError(
            f"the checkpoint is at step {stats.steps}; the plan ends at step "
            f"{plan['training']['total_steps']}: nothing left to train"
        )


def _restore_state(resume: Resume, plan: dict[str, Any], stats: TrainStats, acc: Any) -> None:
    """Optimizer, schedule, grad scaler and RNG states, right before the first resumed batch."""
    saved = resume.saved
    stats.optimizer.load_state_dict(saved.optimizer)
    if resume.rebuild_schedule:
        stats.schedule = make_schedule(plan, stats.optimizer)
        with warnings.catch_warnings():  # stepping a fresh schedule forward warns about the order
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(stats.steps):
                stats.schedule.step()
    else:
        stats.schedule.load_state_dict(saved.scheduler)
    if saved.scaler is not None and acc.scaler is not None:
        acc.scaler.load_state_dict(saved.scaler)
    checkpoint.restore_rng(saved.rng)


def train(
    plan: dict[str, Any],
    models: Models,
    data: TrainData,
    on_step: StepHook | None = None,
    on_loss: Callable[[int, float, float], None] | None = None,
    on_message: Say | None = None,
    on_metrics: MetricsHook | None = None,
    resume: Resume | None = None,
    stats: TrainStats | None = None,
) -> TrainStats:
    """Run exactly training.total_steps optimizer steps of training.accumulate batches each.

    With `resume`, the trainable weights, optimizer, schedule and RNG states and the data position
    come from the checkpoint, so the run continues exactly where the checkpointed run stood.
    `stats` (optional) is filled in as training goes, for hooks that save checkpoints.
    """
    acc = models.accelerator
    stats = stats if stats is not None else TrainStats()
    unet, world = models.pipe.unet, acc.num_processes
    method = methods.for_plan(plan)
    if resume is not None:
        _restore(resume, plan, method, models.pipe, stats)
    optimizer = make_optimizer(plan["optimizer"], method.param_groups(models.pipe))
    schedule = make_schedule(plan, optimizer)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    in_unet = {id(p) for p in unet.parameters()}
    outside = [p for p in trainable if id(p) not in in_unet]  # averaged here with several processes
    conditioning = Conditioning(models, data, plan["data"]["cache"], on_message)
    conditioning.text_grad, conditioning.captions = method.trains_text, method.caption_map()
    if world > 1 and len(outside) == len(trainable):  # nothing of the UNet trains: DDP has nothing to do
        model, optimizer = unet, acc.prepare(optimizer)
    else:
        model, optimizer = acc.prepare(unet, optimizer)
    model = compiled(model, plan["training"].get("compile"), on_message)  # runtime/train/compiling.py
    encoders = method.text_encoders(models.pipe)
    for module in (model, *encoders):
        module.train()
    fused = plan["method"].get("fused_backward", False)
    if fused and acc.scaler is not None:
        raise RunError("the fused backward pass cannot step loss-scaled fp16 gradients: use bf16 or fp32")
    hooks = fuse_backward(getattr(optimizer, "optimizer", optimizer), plan["optimizer"]["max_grad_norm"]) \
        if fused else []
    stats.optimizer, stats.schedule = optimizer, schedule
    stats.ema = ema.for_plan(plan, method.trainable_state(models.pipe), resume.saved.ema if resume else None)
    if resume is not None:
        _restore_state(resume, plan, stats, acc)
    live = _Live(conditioning, model, optimizer, trainable, outside, fused, method)
    with batches(data, Loader.of(plan), conditioning.latents is None, stats.next_epoch,
                 stats.next_batch) as stream:
        _steps(plan, models, live, stream, stats, _Hooks(on_step, on_loss, on_metrics))
    for handle in hooks:
        handle.remove()
    for module in (model, *encoders):
        module.eval()
    return stats


@dataclass
class _Live:
    """What a training pass steps: the prepared model and optimizer, and the batches' conditioning."""

    conditioning: Conditioning
    model: Any
    optimizer: Any
    trainable: list[torch.nn.Parameter]
    outside: list[torch.nn.Parameter]  # trained parameters outside the UNet (averaged by hand)
    fused: bool
    method: Method | None = None  # its `before_forward` sees each batch right before the UNet call


@dataclass
class _Hooks:
    on_step: StepHook | None
    on_loss: Callable[[int, float, float], None] | None
    on_metrics: MetricsHook | None


def _steps(plan: dict[str, Any], models: Models, live: _Live, stream: Iterator[tuple[Ticket, Batch]],
           stats: TrainStats, hooks: _Hooks) -> None:
    """Optimizer steps until the plan's last, from the batches of `stream`."""
    training, acc = plan["training"], models.accelerator
    rank, world = acc.process_index, acc.num_processes
    model, optimizer, trainable, fused = live.model, live.optimizer, live.trainable, live.fused
    on_step, on_metrics = hooks.on_step, hooks.on_metrics
    seed, max_norm, total = training["seed"], plan["optimizer"]["max_grad_norm"], training["total_steps"]
    readout = Readout()  # losses and norms stay on the device until a read point (runtime/train/readout.py)
    for (epoch, index, _, _), batch in stream:
        live.conditioning.report()
        # noise, timesteps and dropout of a batch are seeded by its place in the global order: the ranks
        # draw different noise, and N processes reproduce one process with N× the accumulation
        torch.manual_seed(batch_seed(seed, epoch, index * world + rank))
        latents, states, pooled = live.conditioning.encode(batch)
        if live.method is not None:
            live.method.before_forward(models.pipe, batch)
        norm: Any = None
        with acc.accumulate(model):
            loss = batch_loss(model, models, training, latents, states, pooled, batch.time_ids, batch.weights,
                              batch.mask)
            acc.backward(loss)  # with the fused backward pass, every weight has stepped when it returns
            if acc.sync_gradients and world > 1:
                for parameter in live.outside:
                    if parameter.grad is not None:
                        parameter.grad = acc.reduce(parameter.grad, "mean")
            if not fused and acc.sync_gradients and (max_norm > 0 or on_metrics):  # inf bound only measures
                norm = acc.clip_grad_norm_(trainable, max_norm if max_norm > 0 else math.inf)
            if not fused:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        readout.batch(loss, epoch, index, batch.captions)
        if not acc.sync_gradients:
            continue
        stats.steps, stats.epoch = stats.steps + 1, epoch + 1
        stats.next_epoch, stats.next_batch = epoch, index + 1
        if stats.ema is not None:
            stats.ema.update(stats.steps)
        readout.step(stats.steps, stats.schedule.get_last_lr()[0], norm,
                     optimizer.param_groups if on_metrics else None)
        if due(plan, stats.steps):  # read before anything is saved from these weights
            _deliver(readout.read(stats.steps + 1), stats, hooks)
        stats.schedule.step()
        if on_step:
            on_step(stats.steps, stats.epoch)
        if stats.steps >= total:
            break
    _deliver(readout.read(stats.steps + 1), stats, hooks)  # a stream that ended early, batches left over


def _deliver(values: list[Read], stats: TrainStats, hooks: _Hooks) -> None:
    """The read steps' losses into the stats, and to the hooks in step order."""
    for step, loss, lr, norm, groups in values:
        stats.losses.append(loss)
        if hooks.on_loss:
            hooks.on_loss(step, loss, lr)
        if hooks.on_metrics:
            hooks.on_metrics(step, norm, groups)


def batch_seed(seed: int, epoch: int, position: int) -> int:
    """A seed for one batch from the run's seed and the batch's global position (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
