"""The training loop: SDXL conditioning, accumulation, clipping, optimizer and schedule steps.

The step's objective is in runtime/loss.py, the optimizer and schedule in runtime/optim.py."""

from __future__ import annotations

import hashlib
import math
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from runtime import RunError
from runtime.cache.store import (
    Counts,
    DiskCache,
    file_hash,
    fingerprint,
    latent_key,
    text_key,
    tokenizer_fingerprint,
)
from runtime.methods import registry as methods
from runtime.methods.finetune import fuse_backward
from runtime.model.load import Models
from runtime.train import checkpoint
from runtime.train.data import (
    Batch,
    Sample,
    TrainData,
    all_captions,
    load_pixels,
    make_batch,
    mark_bad,
    setting,
)
from runtime.train.loss import batch_loss
from runtime.train.loss import snr_weights as snr_weights
from runtime.train.optim import make_optimizer as make_optimizer
from runtime.train.optim import make_schedule

StepHook = Callable[[int, int], None]  # (optimizer step done, epoch) -> None
# (optimizer step done, gradient norm before clipping, optimizer param groups) -> None
MetricsHook = Callable[[int, float | None, list[dict[str, Any]]], None]
Say = Callable[[str], None]


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
    data_rng: random.Random | None = None

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    @property
    def average_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


# ---- conditioning -----------------------------------------------------------------------------


@torch.no_grad()
def encode_text(models: Models, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders' penultimate hidden states side by side, and TE2's pooled projection."""
    return text_states(models, captions)


def text_states(models: Models, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`encode_text` with gradients: for methods that train the text encoders or their embeddings."""
    pipe = models.pipe
    states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else None
    if pooled is None:
        raise RunError("text_encoder_2 gives no pooled projection (text_embeds)")
    return torch.cat(states, dim=-1).to(models.device), pooled.to(models.device)


@torch.no_grad()
def encode_pixels(models: Models, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE's latent distribution parameters (mean and log-variance) for a batch of pixels."""
    vae = models.pipe.vae
    return vae.encode(pixels.to(models.device, models.vae_dtype)).latent_dist.parameters


@torch.no_grad()
def encode_finite(models: Models, pixels: torch.Tensor, say: Say, what: str) -> torch.Tensor:
    """`encode_pixels`; NaN or inf in the result encodes the batch again with the VAE in fp32."""
    parameters = encode_pixels(models, pixels)
    if torch.isfinite(parameters).all():
        return parameters
    vae = models.pipe.vae
    dtype = vae.dtype
    say(f"{what}: the VAE gave NaN/inf latents in {str(dtype).removeprefix('torch.')}; encoded again in fp32")
    vae.to(torch.float32)
    try:
        parameters = vae.encode(pixels.to(models.device, torch.float32)).latent_dist.parameters
    finally:
        vae.to(dtype)
    if not torch.isfinite(parameters).all():
        raise RunError(f"{what}: the VAE gives NaN/inf latents even in fp32")
    return parameters.to(models.vae_dtype)


def sample_latents(models: Models, parameters: torch.Tensor) -> torch.Tensor:
    latents = DiagonalGaussianDistribution(parameters).sample()
    return (latents * models.pipe.vae.config.scaling_factor).to(models.weight_dtype)


class Conditioning:
    """Latents and text embeddings for a batch, from the caches the plan asks for.

    Without `to_disk` the caches live in memory for this run; with it, every entry is looked up in the
    content-addressed disk cache (runtime/cache.py) first and stored there when it had to be encoded.

    With N processes, rank r encodes only images and captions r, r+N, r+2N, … and the ranks then
    exchange their shares: through the disk cache with `to_disk` (each rank writes its share, all wait,
    every rank loads the rest), otherwise by gathering the tensors (on the CPU) from every rank. Every
    rank ends with the whole cache; the counts are totals over the ranks, printed by the main process.
    """

    def __init__(
        self, models: Models, data: TrainData, cache: dict[str, Any], say: Say | None = None
    ) -> None:
        self.models, self.data = models, data
        self.say: Say = say or (lambda text: None)
        self.disk = DiskCache(cache["dir"]) if cache["to_disk"] else None
        acc = models.accelerator
        self.rank, self.world = int(acc.process_index), int(acc.num_processes)
        self.latent_counts, self.text_counts = Counts(), Counts()
        self.text: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.latents: dict[tuple[int, bool], torch.Tensor] | None = None
        self.shown = 0
        self.text_grad = False  # encode captions with gradients (the method trains the text encoders)
        self.captions: Callable[[list[str]], list[str]] | None = None  # the method's caption rewrite
        if cache["text_encoder"]:
            self._cache_text()
        if cache["latents"]:
            self._cache_latents()
        if self.disk is not None and acc.is_main_process:
            self.say(f"latent cache: {self.latent_counts}; text-encoder cache: {self.text_counts}")
        self._flush()

    def _flush(self) -> None:
        for warning in self.data.warnings[self.shown :]:
            self.say(f"warning: {warning}")
        self.shown = len(self.data.warnings)

    def _text_identity(self) -> tuple[str, str]:
        pipe = self.models.pipe
        tokenizers = tokenizer_fingerprint(pipe.tokenizer) + tokenizer_fingerprint(pipe.tokenizer_2)
        encoders = fingerprint(pipe.text_encoder, pipe.text_encoder.config) + fingerprint(
            pipe.text_encoder_2, pipe.text_encoder_2.config
        )
        return tokenizers, encoders

    def _gather(self, mine: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order (this rank's own with one process)."""
        if self.world <= 1:
            return mine
        return list(gather_object(mine))

    def _total(self, counts: Counts) -> Counts:
        """The counts summed over the ranks."""
        pairs = self._gather([(counts.encoded, counts.reused)])
        return Counts(sum(e for e, _ in pairs), sum(r for _, r in pairs))

    def _cache_text(self) -> None:
        if any(d["shuffle"] or setting(d, "tag_dropout") > 0 for d in self.data.datasets):
            raise RunError(
                "shuffled captions (or tag dropout) change every step: they cannot use the text-encoder cache"
            )
        self.text = {}
        device = self.models.device
        identity = self._text_identity() if self.disk is not None else None
        captions = all_captions(self.data)
        keys = {c: text_key(c, *identity) if identity is not None else "" for c in captions}
        counts = Counts()
        for caption in captions[self.rank :: self.world]:
            entry = self.disk.load("text", keys[caption]) if self.disk is not None else None
            if entry is not None:
                self.text[caption] = (entry["states"].to(device), entry["pooled"].to(device))
                counts.reused += 1
                continue
            states, pooled = encode_text(self.models, [caption])
            self.text[caption] = (states[0], pooled[0])
            counts.encoded += 1
            if self.disk is not None:
                self.disk.store("text", keys[caption], {"states": states[0], "pooled": pooled[0]})
        if self.world > 1:
            if self.disk is not None:
                self.models.accelerator.wait_for_everyone()  # every share is on disk
                for caption in captions:
                    if caption not in self.text:
                        entry = self.disk.load("text", keys[caption])
                        if entry is None:
                            raise RunError(f"text-encoder cache: another process's entry for {caption!r} "
                                           f"is missing from {self.disk.root}")
                        self.text[caption] = (entry["states"].to(device), entry["pooled"].to(device))
            else:
                mine = [(c, s.cpu(), p.cpu()) for c, (s, p) in self.text.items()]
                for caption, states, pooled in self._gather(mine):
                    self.text.setdefault(caption, (states.to(device), pooled.to(device)))
        self.text_counts = self._total(counts)
        if self.models.device.type != "cpu":
            self.models.pipe.text_encoder.to("cpu")
            self.models.pipe.text_encoder_2.to("cpu")

    def _cache_latents(self) -> None:
        self.latents = {}
        first: dict[int, Sample] = {}
        for sample in self.data.samples:
            first.setdefault(sample.image, sample)
        vae = fingerprint(self.models.pipe.vae, self.models.pipe.vae.config) if self.disk is not None else ""
        dtype = str(self.models.vae_dtype).removeprefix("torch.")
        device = self.models.device
        counts = Counts()
        keys: dict[tuple[int, bool], str] = {}  # the disk keys of this rank's share
        bad: list[tuple[int, str]] = []  # images of this rank's share that could not be read
        for image, sample in list(first.items())[self.rank :: self.world]:
            item = self.data.images[image]
            for flip in (False, True) if self.data.datasets[item.dataset]["flip"] else (False,):
                key = ""
                if self.disk is not None:
                    try:
                        digest = file_hash(item.path)
                    except OSError as exc:
                        bad.append((image, f"{item.path}: cannot be read ({exc.strerror})"))
                        break
                    key = latent_key(digest, sample.bucket, sample.crop, flip, vae, dtype)
                    keys[(image, flip)] = key
                    entry = self.disk.load("latents", key)
                    if entry is not None:
                        self.latents[(image, flip)] = entry["parameters"].to(device)
                        counts.reused += 1
                        continue
                try:
                    pixels = load_pixels(item, sample.crop, sample.bucket, flip)
                except RunError as exc:
                    bad.append((image, str(exc)))
                    break
                parameters = encode_finite(self.models, pixels[None], self.say, item.path)[0]
                self.latents[(image, flip)] = parameters
                counts.encoded += 1
                if self.disk is not None:
                    self.disk.store("latents", key, {"parameters": parameters})
        if self.world > 1:
            bad = self._gather(bad)
            if self.disk is not None:
                self.models.accelerator.wait_for_everyone()  # every share is on disk
                for (image, flip), key in self._gather([(k, keys[k]) for k in self.latents]):
                    if (image, flip) not in self.latents:
                        entry = self.disk.load("latents", key)
                        if entry is None:
                            raise RunError(f"latent cache: another process's entry for "
                                           f"{self.data.images[image].path} is missing from {self.disk.root}")
                        self.latents[(image, flip)] = entry["parameters"].to(device)
            else:
                mine = [(k, v.cpu()) for k, v in self.latents.items()]
                for (image, flip), parameters in self._gather(mine):
                    self.latents.setdefault((image, flip), parameters.to(device))
        for image, reason in sorted(bad):
            mark_bad(self.data, image, reason)
        self.latent_counts = self._total(counts)
        if self.models.device.type != "cpu":  # cached latents free the VAE (sampling brings it back)
            self.models.pipe.vae.to("cpu")

    def batch(self, indices: list[int], rng: random.Random) -> Batch:
        batch = make_batch(self.data, indices, rng, pixels=self.latents is None, substitute=True)
        self._flush()
        return batch

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents, prompt embeddings, pooled embeddings) for a batch."""
        if self.latents is None:
            parameters = encode_finite(self.models, batch.pixels, self.say, "a batch")
        else:
            parameters = torch.stack([self.latents[key] for key in batch.keys])
        if self.text is None:
            captions = self.captions(batch.captions) if self.captions else batch.captions
            states, pooled = (text_states if self.text_grad else encode_text)(self.models, captions)
        else:
            states = torch.stack([self.text[c][0] for c in batch.captions])
            pooled = torch.stack([self.text[c][1] for c in batch.captions])
        dtype = self.models.weight_dtype
        return sample_latents(self.models, parameters), states.to(dtype), pooled.to(dtype)


# ---- the loop ---------------------------------------------------------------------------------


def batch_stream(data: TrainData, epoch: int = 0, start: int = 0) -> Iterator[tuple[int, int, list[int]]]:
    """Batches in training order from (epoch, start) on: (epoch, index within the epoch, sample indices)."""
    while True:
        for index, indices in enumerate(data.epoch(epoch)):
            if index >= start:
                yield epoch, index, indices
        epoch, start = epoch + 1, 0


@dataclass
class Resume:
    """A checkpoint to continue from; `rebuild_schedule` rebuilds the lr schedule from the current step."""

    saved: checkpoint.Saved
    rebuild_schedule: bool = False


def trainable_state(pipe_or_unet: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (of a pipeline, or of a UNet alone): what a checkpoint stores."""
    return methods.trainable_state(pipe_or_unet)


def _restore(resume: Resume, plan: dict[str, Any], pipe: Any, stats: TrainStats) -> None:
    saved, live = resume.saved, trainable_state(pipe)
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
    assert stats.data_rng is not None
    checkpoint.restore_rng(saved.rng, stats.data_rng)


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
    training, acc = plan["training"], models.accelerator
    stats = stats if stats is not None else TrainStats()
    unet, rank, world = models.pipe.unet, acc.process_index, acc.num_processes
    if resume is not None:
        _restore(resume, plan, models.pipe, stats)
    optimizer = make_optimizer(plan["optimizer"], methods.param_groups(plan, models.pipe))
    schedule = make_schedule(plan, optimizer)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    in_unet = {id(p) for p in unet.parameters()}
    outside = [p for p in trainable if id(p) not in in_unet]  # averaged here with several processes
    conditioning = Conditioning(models, data, plan["data"]["cache"], on_message)
    conditioning.text_grad, conditioning.captions = methods.trains_text(plan), methods.caption_map(plan)
    if world > 1 and len(outside) == len(trainable):  # nothing of the UNet trains: DDP has nothing to do
        model, optimizer = unet, acc.prepare(optimizer)
    else:
        model, optimizer = acc.prepare(unet, optimizer)
    encoders = methods.text_encoders(plan, models.pipe)
    for module in (model, *encoders):
        module.train()
    fused = plan["method"].get("fused_backward", False)
    if fused and acc.scaler is not None:
        raise RunError("the fused backward pass cannot step loss-scaled fp16 gradients: use bf16 or fp32")
    hooks = fuse_backward(getattr(optimizer, "optimizer", optimizer), plan["optimizer"]["max_grad_norm"]) \
        if fused else []
    stats.optimizer, stats.schedule, stats.data_rng = optimizer, schedule, random.Random(training["seed"])
    if resume is not None:
        _restore_state(resume, plan, stats, acc)
    pending: list[float] = []
    for epoch, index, indices in batch_stream(data, stats.next_epoch, stats.next_batch):
        # noise, timesteps and dropout of a batch are seeded by its place in the global order: the ranks
        # draw different noise, and N processes reproduce one process with N× the accumulation
        torch.manual_seed(batch_seed(training["seed"], epoch, index * world + rank))
        latents, states, pooled = conditioning.encode(batch := conditioning.batch(indices, stats.data_rng))
        norm: Any = None
        with acc.accumulate(model):
            loss = batch_loss(model, models, training, latents, states, pooled, batch.time_ids, batch.weights)
            acc.backward(loss)  # with the fused backward pass, every weight has stepped when it returns
            if acc.sync_gradients and world > 1:
                for parameter in outside:
                    if parameter.grad is not None:
                        parameter.grad = acc.reduce(parameter.grad, "mean")
            max_norm = plan["optimizer"]["max_grad_norm"]
            if not fused and acc.sync_gradients and (max_norm > 0 or on_metrics):  # inf bound only measures
                norm = acc.clip_grad_norm_(trainable, max_norm if max_norm > 0 else math.inf)
            if not fused:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        pending.append(loss.detach().item())
        if not math.isfinite(pending[-1]):
            raise RunError(diverged(pending[-1], stats.steps + 1, epoch, index, batch))
        if not acc.sync_gradients:
            continue
        stats.steps, stats.epoch = stats.steps + 1, epoch + 1
        stats.next_epoch, stats.next_batch = epoch, index + 1
        stats.losses.append(sum(pending) / len(pending))
        pending = []
        if on_loss:
            on_loss(stats.steps, stats.losses[-1], stats.schedule.get_last_lr()[0])
        if on_metrics:
            on_metrics(stats.steps, None if norm is None else float(norm), optimizer.param_groups)
        stats.schedule.step()
        if on_step:
            on_step(stats.steps, stats.epoch)
        if stats.steps >= training["total_steps"]:
            break
    for handle in hooks:
        handle.remove()
    for module in (model, *encoders):
        module.eval()
    return stats


def batch_seed(seed: int, epoch: int, position: int) -> int:
    """A seed for one batch from the run's seed and the batch's global position (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def diverged(loss: float, step: int, epoch: int, index: int, batch: Batch) -> str:
    """What to say when the loss stops being a number."""
    return (
        f"the loss became {loss} at step {step} (epoch {epoch + 1}, batch {index + 1}: "
        f"{', '.join(batch.captions[:2])}{'…' if len(batch.captions) > 2 else ''}); training stopped and "
        "the last checkpoint is intact. Usual causes: the stock SDXL VAE in fp16 (use an fp16-fix VAE "
        "or `vae fp32`), or a learning rate too high for the optimizer."
    )
