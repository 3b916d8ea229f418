"""The training step and loop: SDXL conditioning, noise, loss weighting, accumulation, optimizer."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler

from runtime import RunError
from runtime.data import Batch, TrainData, all_captions, load_pixels, make_batch
from runtime.lora import param_groups
from runtime.models import Models

StepHook = Callable[[int, int], None]  # (optimizer step done, epoch) -> None


@dataclass
class TrainStats:
    steps: int = 0
    epoch: int = 0
    losses: list[float] = field(default_factory=list)  # mean batch loss of each optimizer step

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    @property
    def average_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


# ---- optimizer and schedule -------------------------------------------------------------------

def make_optimizer(optimizer: dict[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer the plan names, with the plan's extra arguments passed through."""
    name, lr, args = optimizer["name"], optimizer["lr"], dict(optimizer["args"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **args)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, **args)
    import bitsandbytes as bnb

    classes = {"adamw8bit": bnb.optim.AdamW8bit, "lion8bit": bnb.optim.Lion8bit, "lion": bnb.optim.Lion}
    return classes[name](groups, lr=lr, **args)


def make_schedule(plan: dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
    return get_scheduler(
        plan["schedule"]["name"], optimizer, num_warmup_steps=plan["schedule"]["warmup_steps"],
        num_training_steps=plan["training"]["total_steps"],
    )


# ---- conditioning -----------------------------------------------------------------------------

@torch.no_grad()
def encode_text(models: Models, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders' penultimate hidden states side by side, and TE2's pooled projection."""
    pipe = models.pipe
    states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
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


def sample_latents(models: Models, parameters: torch.Tensor) -> torch.Tensor:
    latents = DiagonalGaussianDistribution(parameters).sample()
    return (latents * models.pipe.vae.config.scaling_factor).to(models.weight_dtype)


class Conditioning:
    """Latents and text embeddings for a batch, from the in-memory caches the plan asks for."""

    def __init__(self, models: Models, data: TrainData, cache: dict[str, Any]) -> None:
        self.models, self.data = models, data
        self.text: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.latents: dict[tuple[int, bool], torch.Tensor] | None = None
        if cache["text_encoder"]:
            self._cache_text()
        if cache["latents"]:
            self._cache_latents()

    def _cache_text(self) -> None:
        if any(d["shuffle"] for d in self.data.datasets):
            raise RunError("shuffled captions change every step: they cannot use the text-encoder cache")
        self.text = {}
        for caption in all_captions(self.data):
            states, pooled = encode_text(self.models, [caption])
            self.text[caption] = (states[0], pooled[0])
        if self.models.device.type != "cpu":
            self.models.pipe.text_encoder.to("cpu")
            self.models.pipe.text_encoder_2.to("cpu")

    def _cache_latents(self) -> None:
        self.latents = {}
        first = {}
        for sample in self.data.samples:
            first.setdefault(sample.image, sample)
        for image, sample in first.items():
            item = self.data.images[image]
            for flip in (False, True) if self.data.datasets[item.dataset]["flip"] else (False,):
                pixels = load_pixels(item, sample.crop, sample.bucket, flip)
                self.latents[(image, flip)] = encode_pixels(self.models, pixels[None])[0]

    def batch(self, indices: list[int], rng: random.Random) -> Batch:
        return make_batch(self.data, indices, rng, pixels=self.latents is None)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents, prompt embeddings, pooled embeddings) for a batch."""
        if self.latents is None:
            parameters = encode_pixels(self.models, batch.pixels)
        else:
            parameters = torch.stack([self.latents[key] for key in batch.keys])
        if self.text is None:
            states, pooled = encode_text(self.models, batch.captions)
        else:
            states = torch.stack([self.text[c][0] for c in batch.captions])
            pooled = torch.stack([self.text[c][1] for c in batch.captions])
        dtype = self.models.weight_dtype
        return sample_latents(self.models, parameters), states.to(dtype), pooled.to(dtype)


# ---- the step ---------------------------------------------------------------------------------

def snr_weights(models: Models, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for epsilon or v-prediction targets."""
    alphas = models.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1.0 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    if models.noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def batch_loss(unet: torch.nn.Module, models: Models, training: dict[str, Any], latents: torch.Tensor,
               states: torch.Tensor, pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """Noise the latents at uniform timesteps, predict, and take the (weighted) MSE to the target."""
    scheduler, n = models.noise_scheduler, latents.shape[0]
    noise = torch.randn_like(latents)
    if training["noise_offset"] > 0:
        noise = noise + training["noise_offset"] * torch.randn(
            (n, latents.shape[1], 1, 1), device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(training["timestep_min"], training["timestep_max"], (n,), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    conditions = {"text_embeds": pooled, "time_ids": time_ids.to(latents.device, latents.dtype)}
    prediction = unet(noisy, timesteps, encoder_hidden_states=states, added_cond_kwargs=conditions).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if training["snr_gamma"]:
        per_sample = per_sample * snr_weights(models, timesteps, training["snr_gamma"])
    return per_sample.mean()


# ---- the loop ---------------------------------------------------------------------------------

def batch_stream(data: TrainData) -> Iterator[tuple[int, list[int]]]:
    """Batches in training order, epoch after epoch, with the epoch (0-based) each belongs to."""
    epoch = 0
    while True:
        for indices in data.epoch(epoch):
            yield epoch, indices
        epoch += 1


def train(plan: dict[str, Any], models: Models, data: TrainData, on_step: StepHook | None = None,
          on_loss: Callable[[int, float, float], None] | None = None) -> TrainStats:
    """Run exactly training.total_steps optimizer steps of training.accumulate batches each."""
    training, acc = plan["training"], models.accelerator
    unet = models.pipe.unet
    optimizer = make_optimizer(plan["optimizer"], param_groups(unet, plan["method"], plan["optimizer"]["lr"]))
    schedule = make_schedule(plan, optimizer)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    model, optimizer = acc.prepare(unet, optimizer)
    model.train()
    rng, stats, pending = random.Random(training["seed"]), TrainStats(), []
    for epoch, indices in batch_stream(data):
        latents, states, pooled = conditioning.encode(batch := conditioning.batch(indices, rng))
        with acc.accumulate(model):
            loss = batch_loss(model, models, training, latents, states, pooled, batch.time_ids)
            acc.backward(loss)
            if acc.sync_gradients and plan["optimizer"]["max_grad_norm"] > 0:
                acc.clip_grad_norm_(trainable, plan["optimizer"]["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        pending.append(loss.detach().item())
        if not math.isfinite(pending[-1]):
            raise RunError(f"the loss became {pending[-1]} at step {stats.steps + 1}: training diverged")
        if not acc.sync_gradients:
            continue
        stats.steps, stats.epoch = stats.steps + 1, epoch + 1
        stats.losses.append(sum(pending) / len(pending))
        pending = []
        if on_loss:
            on_loss(stats.steps, stats.losses[-1], schedule.get_last_lr()[0])
        schedule.step()
        if on_step:
            on_step(stats.steps, stats.epoch)
        if stats.steps >= training["total_steps"]:
            break
    model.eval()
    return stats
