"""The validation loss (the plan's `validate`): fixed images, noise and timesteps, no gradients.

The images are the plan's `validate.images` (held out of the training data or from a folder of their
own), each at its planned bucket and centre crop, never flipped or jittered, with the caption the plan
records (the method's caption rewrite applied, as in training). Each image has the fixed timestep the
plan gives it (`validate.timesteps`, evenly spaced over the training range) and noise drawn from a
seed of its own (the plan's `validate.seed` and its index), so every validation pass sees the same
inputs: the loss moves only with the weights.

The loss is plain MSE between the prediction and its target (noise, or v for a v-prediction model),
averaged over the images: no SNR or debiased weighting, no noise offset, pyramid noise or input
perturbation, no dataset loss weights, so the number compares across recipes. It runs without
gradients, with every model in eval mode (LoRA dropout off), under the run's autocast, on the raw
weights (`val_loss`) and, with `ema`, again on the EMA weights (`val_loss_ema`).

Validation never changes training: its random numbers come from forked RNG states (restored after),
the modules' train/eval modes are put back, and its batches are encoded through a conditioning of
their own (the same caches: the disk cache with `to_disk`, keyed by content). docs/TRAINING.md.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from runtime.methods.base import Method
from runtime.model.load import Models
from runtime.train import ema as emamod
from runtime.train.conditioning import Conditioning, Say
from runtime.train.data import Sample, TrainData, check_inputs, make_batch
from runtime.train.loss import noise_schedule, target
from sdxlc.plan.manifest import Manifest, ManifestImage

# a validation batch is never changed: no caption or pixel randomness
_PLAIN = {"shuffle": False, "tag_dropout": 0.0, "caption_dropout": 0.0, "flip": False, "random_crop": False,
          "color_jitter": 0.0, "prefix": "", "suffix": "", "default_caption": "", "loss_weight": 1.0}


def image_seed(seed: int, index: int) -> int:
    """The noise seed of validation image `index`."""
    digest = hashlib.sha256(f"validate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Random numbers drawn inside the block leave the process's RNG states as they were."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class Validator:
    """The validation images, their conditioning, and the loss over them."""

    def __init__(self, plan: dict[str, Any], models: Models, method: Method, say: Say | None = None) -> None:
        settings = plan["validate"]
        self.plan, self.models, self.method = plan, models, method
        self.seed, self.timesteps = int(settings["seed"]), list(settings["timesteps"])
        images = [ManifestImage.from_json(entry) for entry in settings["images"]]
        check_inputs(Manifest(tuple(images)))
        images = [replace(image, dataset=0) for image in images]
        samples = [Sample(i, image.bucket, image.crop) for i, image in enumerate(images)]
        dataset = {**plan["data"]["datasets"][0], **_PLAIN}
        self.data = TrainData(images, samples, [dataset], plan["training"]["batch_size"], self.seed,
                              controls=any(image.control for image in images))
        labelled: Say | None = (lambda text: say(f"validation images: {text}")) if say is not None else None
        with forked_rng(models.device), _kept_on_device(models):
            self.conditioning = Conditioning(models, self.data, plan["data"]["cache"], labelled)
        self.conditioning.captions = method.caption_map()
        self.batches = _batches(samples, plan["training"]["batch_size"])

    def loss(self) -> float:
        """The mean validation loss of the current weights."""
        pipe = self.models.pipe
        modules = [pipe.unet, pipe.text_encoder, pipe.text_encoder_2]
        modes = [module.training for module in modules]
        total = 0.0
        try:
            for module in modules:
                module.eval()
            with forked_rng(self.models.device), torch.no_grad():
                for indices in self.batches:
                    total += self._batch_sum(indices)
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
        return total / len(self.data.samples)

    def losses(self, ema: emamod.Ema | None) -> dict[str, float]:
        """`val_loss` on the raw weights and, with an EMA, `val_loss_ema` on the EMA weights."""
        values = {"val_loss": self.loss()}
        if ema is not None and self.plan["validate"]["ema"]:
            with ema.swapped():
                values["val_loss_ema"] = self.loss()
        return values

    def _batch_sum(self, indices: list[int]) -> float:
        """The summed per-image losses of one batch of validation images."""
        models, training = self.models, self.plan["training"]
        torch.manual_seed(image_seed(self.seed, indices[0]))
        batch = make_batch(self.data, indices, random.Random(0), pixels=self.conditioning.latents is None)
        latents, states, pooled = self.conditioning.encode(batch)
        before_forward = getattr(self.method, "before_forward", None)
        if before_forward is not None:  # a method that feeds the batch to its network (LLLite)
            before_forward(models.pipe, batch)
        scheduler = noise_schedule(models, training)
        noise = torch.cat([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(
            image_seed(self.seed, i)))[None] for i in indices]).to(latents.device, latents.dtype)
        steps = torch.tensor([self.timesteps[i] for i in indices], device=latents.device, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise, steps)
        conditions = {"text_embeds": pooled, "time_ids": batch.time_ids.to(latents.device, latents.dtype)}
        with models.accelerator.autocast():
            prediction = models.pipe.unet(noisy, steps, encoder_hidden_states=states,
                                          added_cond_kwargs=conditions).sample
        goal = target(scheduler, latents, noise, steps)
        loss = F.mse_loss(prediction.float(), goal.float(), reduction="none")
        return float(loss.mean(dim=(1, 2, 3)).sum())


def _batches(samples: list[Sample], size: int) -> list[list[int]]:
    """The validation images in batches of the training batch size, one bucket per batch, in plan order."""
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, sample in enumerate(samples):
        by_bucket.setdefault(sample.bucket, []).append(index)
    return [members[i:i + size] for members in by_bucket.values() for i in range(0, len(members), size)]


@contextmanager
def _kept_on_device(models: Models) -> Iterator[None]:
    """Caching moves the VAE and text encoders off a CUDA device once they are done; the training
    conditioning made after this one still needs them where they were."""
    pipe = models.pipe
    parts = [pipe.vae, pipe.text_encoder, pipe.text_encoder_2]
    places = [next(part.parameters()).device for part in parts]
    try:
        yield
    finally:
        for part, place in zip(parts, places, strict=True):
            if next(part.parameters()).device != place:
                part.to(place)


def for_plan(plan: dict[str, Any], models: Models, method: Method,
             say: Say | None = None) -> Validator | None:
    """The run's validator (None without `validate`)."""
    return Validator(plan, models, method, say) if plan.get("validate") else None


def due(plan: dict[str, Any], step: int) -> bool:
    """Whether the run validates after optimizer step `step`: at every multiple of `every_steps` and
    after the last step."""
    settings = plan.get("validate")
    if not settings:
        return False
    every = settings["every_steps"]
    return bool(every and step % every == 0) or step == plan["training"]["total_steps"]
