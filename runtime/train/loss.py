"""The diffusion training objective: noise, timesteps, target, loss and its per-sample weights.

Every option is a field of the plan's `training` section; the formulas follow kohya-ss/sd-scripts
(`library/custom_train_functions.py`), which SDXL users compare against. docs/TRAINING.md explains them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from runtime.model.load import Models

SNR_CAP = 1000.0  # debiased estimation: the SNR of the first timesteps is capped before 1/sqrt(SNR)


# ---- the noise schedule -------------------------------------------------------------------------

def zero_terminal_snr(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The same schedule with its betas rescaled so that alphas_cumprod[-1] == 0 (Lin et al. 2023)."""
    return DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True)


def noise_schedule(models: Models, training: dict[str, Any]) -> DDPMScheduler:
    """The training noise schedule of the plan; zero terminal SNR replaces the models' one for the run."""
    scheduler = models.noise_scheduler
    if training["zero_terminal_snr"] and not scheduler.config.get("rescale_betas_zero_snr", False):
        scheduler = models.noise_scheduler = zero_terminal_snr(scheduler)
    return scheduler


def signal_to_noise(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    return alphas / (1.0 - alphas)


# ---- noise --------------------------------------------------------------------------------------

def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise: coarser noise at random ratios of 2-4× per level, weighted discount**i,
    upsampled and added, then scaled back to unit standard deviation."""
    n, c, h, w = noise.shape
    upsample = torch.nn.Upsample(size=(h, w), mode="bilinear")
    out = noise.clone()
    for level in range(iterations):
        ratio = float(torch.rand(())) * 2 + 2
        hn, wn = max(1, int(h / ratio**level)), max(1, int(w / ratio**level))
        coarse = torch.randn((n, c, hn, wn), device=noise.device, dtype=torch.float32)
        out = out + upsample(coarse).to(noise.dtype) * discount**level
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def make_noise(latents: torch.Tensor, training: dict[str, Any]) -> torch.Tensor:
    """Gaussian noise with the plan's offset (per channel) and multi-resolution levels. Drawn in the
    latents' logical order whatever their memory layout (`randn_like` follows the strides), so cached
    and freshly encoded latents of one batch get the same noise."""
    noise = fresh_noise(latents)
    if training["noise_offset"] > 0:
        noise = noise + training["noise_offset"] * torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), device=latents.device, dtype=latents.dtype)
    if training["multires_iterations"] > 0:
        noise = pyramid_noise(noise, training["multires_iterations"], training["multires_discount"])
    return noise


def fresh_noise(latents: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of the latents' shape, device and dtype, contiguous."""
    return torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)


def noisy_input(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor, perturbation: float) -> torch.Tensor:
    """The model input; input perturbation adds gamma × fresh noise to the input only, not the target."""
    if perturbation > 0:
        noise = noise + perturbation * fresh_noise(latents)
    return scheduler.add_noise(latents, noise, timesteps)


def target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
           timesteps: torch.Tensor) -> torch.Tensor:
    """What the model learns to predict: the noise, or v for a v-prediction model."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


# ---- loss and weights ---------------------------------------------------------------------------

def elementwise_loss(prediction: torch.Tensor, goal: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    """l2: r²; huber (pseudo-Huber, kohya's form): 2c(sqrt(r² + c²) − c), ≈ r² for |r| ≪ c, ≈ 2c|r| beyond."""
    if kind == "huber":
        residual = prediction.float() - goal.float()
        return 2 * huber_c * (torch.sqrt(residual**2 + huber_c**2) - huber_c)
    return F.mse_loss(prediction.float(), goal.float(), reduction="none")


def snr_weights(models: Models, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for epsilon or v-prediction targets."""
    snr = signal_to_noise(models.noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if models.noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def debiased_weights(models: Models, timesteps: torch.Tensor) -> torch.Tensor:
    """Debiased-estimation weights: 1/sqrt(SNR) for epsilon, 1/(SNR + 1) for v, with SNR ≤ 1000."""
    snr = torch.clamp(signal_to_noise(models.noise_scheduler, timesteps), max=SNR_CAP)
    if models.noise_scheduler.config.prediction_type == "v_prediction":
        return 1.0 / (snr + 1.0)
    return 1.0 / torch.sqrt(snr)


def masked(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The element-wise loss times the mask, area-averaged down to the latent size (kohya's
    `apply_masked_loss`): a latent element whose pixels are all black weighs 0; the mean is then taken
    over every element, masked ones included, as kohya does."""
    small = F.interpolate(mask.to(loss.device, torch.float32), size=loss.shape[2:], mode="area")
    return loss * small


def batch_loss(unet: torch.nn.Module, models: Models, training: dict[str, Any], latents: torch.Tensor,
               states: torch.Tensor, pooled: torch.Tensor, time_ids: torch.Tensor,
               weights: list[float] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Noise the latents at uniform timesteps, predict, and take the (weighted) loss to the target.

    `weights` are the samples' dataset loss weights (a regularization set's prior-loss weight); the
    batch mean is taken over the weighted samples, as kohya does. `mask` (B, 1, H, W) in [0, 1] at pixel
    size weighs each latent element (`masked`)."""
    scheduler, n = noise_schedule(models, training), latents.shape[0]
    noise = make_noise(latents, training)
    timesteps = torch.randint(training["timestep_min"], training["timestep_max"], (n,), device=latents.device)
    noisy = noisy_input(scheduler, latents, noise, timesteps, training["input_perturbation"])
    conditions = {"text_embeds": pooled, "time_ids": time_ids.to(latents.device, latents.dtype)}
    prediction = unet(noisy, timesteps, encoder_hidden_states=states, added_cond_kwargs=conditions).sample
    loss = elementwise_loss(prediction, target(scheduler, latents, noise, timesteps), training["loss"],
                            training["huber_c"])
    if mask is not None:
        loss = masked(loss, mask)
    per_sample = loss.mean(dim=(1, 2, 3))
    if training["snr_gamma"]:
        per_sample = per_sample * snr_weights(models, timesteps, training["snr_gamma"])
    if training["debiased"]:
        per_sample = per_sample * debiased_weights(models, timesteps)
    if weights is not None and any(w != 1.0 for w in weights):
        per_sample = per_sample * torch.tensor(weights, device=per_sample.device, dtype=per_sample.dtype)
    return per_sample.mean()
