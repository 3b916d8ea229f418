"""One step's loss equals a reference written here from diffusers primitives, the way diffusers'
train_text_to_image_lora_sdxl.py and kohya's `apply_snr_weight` compute it: same batch, noise and
timesteps, for epsilon and v-prediction, with and without min-SNR-γ weighting."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers import DDPMScheduler

from runtime.train import loss as objective
from runtime.train.conditioning import Conditioning
from runtime.train.data import setup_data
from runtime.train.run import setup_model

TRAINING: dict[str, Any] = {
    "noise_offset": 0.0, "snr_gamma": None, "timestep_min": 0, "timestep_max": 1000, "multires_iterations": 0,
    "multires_discount": 0.3, "input_perturbation": 0.0, "debiased": False, "zero_terminal_snr": False,
    "loss": "l2", "huber_c": 0.1,
}
# Low, middle and high noise: SNR above and below γ = 5 on both sides.
TIMESTEPS = [3, 250, 600, 990]


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def setup(request: pytest.FixtureRequest, make_plan, tmp_path_factory: pytest.TempPathFactory  # type: ignore[no-untyped-def]
          ) -> Iterator[tuple[Any, ...]]:
    plan = make_plan(tmp_path_factory.mktemp("reference"), model__prediction=request.param,
                     training__batch_size=4)
    set_seed(0)
    models, data = setup_model(plan), setup_data(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    batch = conditioning.batch(data.epoch(0)[0], random.Random(0))
    latents, states, pooled = conditioning.encode(batch)
    assert latents.shape[0] == len(TIMESTEPS)
    yield models, latents, states, pooled, batch.time_ids


def fixed_draws(monkeypatch: pytest.MonkeyPatch, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make `batch_loss` draw exactly this noise and these timesteps."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7)).to(latents)
    timesteps = torch.tensor(TIMESTEPS, device=latents.device)

    def randint(low: int, high: int, size: tuple[int, ...], **_: Any) -> torch.Tensor:
        assert (low, high, size) == (0, 1000, (len(TIMESTEPS),))
        return timesteps.clone()

    monkeypatch.setattr(objective, "make_noise", lambda lat, training: noise.clone())
    monkeypatch.setattr(objective.torch, "randint", randint)
    return noise, timesteps


def reference_loss(models: Any, latents: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor,
                   time_ids: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   prediction: str, gamma: float | None) -> torch.Tensor:
    """diffusers' SDXL training step, written from its primitives and the SDXL noise schedule."""
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, prediction_type=prediction)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    goal = scheduler.get_velocity(latents, noise, timesteps) if prediction == "v_prediction" else noise
    conditions = {"text_embeds": pooled, "time_ids": time_ids.to(latents.device, latents.dtype)}
    output = models.pipe.unet(noisy, timesteps, encoder_hidden_states=states, added_cond_kwargs=conditions)
    if gamma is None:
        return F.mse_loss(output.sample.float(), goal.float(), reduction="mean")
    # min-SNR-γ by hand: SNR = ᾱ/(1 − ᾱ); min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v
    alphas = scheduler.alphas_cumprod[timesteps].double()
    snr = alphas / (1 - alphas)
    weights = [min(s, gamma) / (s + 1 if prediction == "v_prediction" else s) for s in snr.tolist()]
    per_sample = F.mse_loss(output.sample.float(), goal.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * torch.tensor(weights, dtype=per_sample.dtype)).mean()


@pytest.mark.parametrize("gamma", [None, 5.0], ids=["plain", "min_snr"])
def test_step_loss_matches_the_diffusers_reference(setup: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch,
                                                   gamma: float | None) -> None:
    models, latents, states, pooled, time_ids = setup
    prediction = models.noise_scheduler.config.prediction_type
    noise, timesteps = fixed_draws(monkeypatch, latents)
    with torch.no_grad():
        runtime = objective.batch_loss(models.pipe.unet, models, {**TRAINING, "snr_gamma": gamma},
                                       latents, states, pooled, time_ids)
    monkeypatch.undo()
    with torch.no_grad():
        reference = reference_loss(models, latents, states, pooled, time_ids, noise, timesteps, prediction,
                                   gamma)
    assert runtime.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-6), (runtime, reference)


def test_the_draws_are_those_of_the_reference(setup: tuple[Any, ...],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixed draws reach the step: another noise gives another loss (the comparison is not vacuous)."""
    models, latents, states, pooled, time_ids = setup
    fixed_draws(monkeypatch, latents)
    with torch.no_grad():
        first = objective.batch_loss(models.pipe.unet, models, TRAINING, latents, states, pooled, time_ids)
        again = objective.batch_loss(models.pipe.unet, models, TRAINING, latents, states, pooled, time_ids)
    monkeypatch.undo()
    monkeypatch.setattr(objective, "make_noise", lambda lat, training: torch.zeros_like(lat))
    with torch.no_grad():
        other = objective.batch_loss(models.pipe.unet, models, TRAINING, latents, states, pooled, time_ids)
    assert first.item() == again.item() != other.item()
