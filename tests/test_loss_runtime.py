"""The training objective: each noise and loss option of the plan changes the step's loss, and each
follows its formula on a case small enough to check by hand."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.utils import set_seed

from runtime.model.load import training_noise_scheduler
from runtime.train import loss as objective
from runtime.train.conditioning import Conditioning
from runtime.train.data import setup_data
from runtime.train.run import run_plan, setup_model

BASE: dict[str, Any] = {
    "noise_offset": 0.0, "snr_gamma": None, "timestep_min": 0, "timestep_max": 300, "multires_iterations": 0,
    "multires_discount": 0.3, "input_perturbation": 0.0, "debiased": False, "zero_terminal_snr": False,
    "loss": "l2", "huber_c": 0.1,
}


@pytest.fixture(scope="module")
def setup(make_plan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path_factory.mktemp("loss"), model__prediction="v_prediction")
    set_seed(0)
    models, data = setup_model(plan), setup_data(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    batch = conditioning.batch(data.epoch(0)[0], random.Random(0))
    latents, states, pooled = conditioning.encode(batch)
    yield models, (latents, states, pooled, batch.time_ids)


def step_loss(setup: tuple[Any, ...], **options: Any) -> float:
    models, (latents, states, pooled, time_ids) = setup
    scheduler = models.noise_scheduler
    torch.manual_seed(1)
    with torch.no_grad():
        value = objective.batch_loss(models.pipe.unet, models, {**BASE, **options}, latents, states, pooled,
                                     time_ids).item()
    models.noise_scheduler = scheduler  # zero terminal SNR swaps the schedule for a run; not across tests
    return value


@pytest.mark.parametrize("options", [
    {"noise_offset": 0.1},
    {"multires_iterations": 6, "multires_discount": 0.3},
    {"input_perturbation": 0.1},
    {"snr_gamma": 1.0},
    {"debiased": True},
    {"zero_terminal_snr": True},
    {"loss": "huber", "huber_c": 0.1},
], ids=lambda options: next(iter(options)))
def test_each_option_changes_the_loss_on_the_same_seed(setup: tuple[Any, ...],
                                                       options: dict[str, Any]) -> None:
    plain, changed = step_loss(setup), step_loss(setup, **options)
    assert plain == step_loss(setup)  # the same seed gives the same loss
    assert math.isfinite(changed) and not math.isclose(plain, changed, rel_tol=1e-6), (plain, changed)


def test_huber_is_l2_for_small_residuals_and_linear_times_2c_for_large() -> None:
    c = 0.1
    small, large = torch.tensor([1e-3, -2e-3]), torch.tensor([10.0, -20.0])
    zero = torch.zeros(2)
    assert torch.allclose(objective.elementwise_loss(small, zero, "huber", c), small**2, rtol=1e-3)
    huber = objective.elementwise_loss(large, zero, "huber", c)
    assert torch.allclose(huber, 2 * c * large.abs(), rtol=0.011)
    exact = 2 * c * (math.sqrt(0.3**2 + c**2) - c)
    one = objective.elementwise_loss(torch.tensor([0.3]), torch.zeros(1), "huber", c)
    assert one.item() == pytest.approx(exact)
    assert torch.equal(objective.elementwise_loss(large, zero, "l2", c), large**2)


class _Stub:
    def __init__(self, prediction: str, zero_snr: bool = False) -> None:
        scheduler = training_noise_scheduler(prediction)
        self.noise_scheduler = objective.zero_terminal_snr(scheduler) if zero_snr else scheduler


def test_debiased_weight_is_one_over_sqrt_snr_capped_at_1000() -> None:
    timesteps = torch.tensor([0, 10, 500, 999])
    models = _Stub("epsilon")
    alphas = models.noise_scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    assert snr[0] > 1000  # the first timestep is capped
    weights = objective.debiased_weights(models, timesteps)  # type: ignore[arg-type]
    assert weights[0].item() == pytest.approx(1 / math.sqrt(1000))
    assert torch.allclose(weights[1:], 1 / torch.sqrt(snr[1:]))
    v = objective.debiased_weights(_Stub("v_prediction"), timesteps)  # type: ignore[arg-type]
    assert torch.allclose(v[1:], 1 / (snr[1:] + 1))


def test_zero_terminal_snr_rescales_the_last_timestep_to_pure_noise() -> None:
    plain, zero = _Stub("v_prediction").noise_scheduler, _Stub("v_prediction", True).noise_scheduler
    assert zero.alphas_cumprod[-1].item() == 0.0 and plain.alphas_cumprod[-1].item() > 0
    assert zero.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item())
    assert torch.all(zero.alphas_cumprod[1:] <= zero.alphas_cumprod[:-1])
    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    last = torch.tensor([999])
    assert torch.allclose(zero.add_noise(latents, noise, last), noise)  # no signal left at the last step
    weights = objective.debiased_weights(_Stub("v_prediction", True), last)  # type: ignore[arg-type]
    assert weights.item() == 1.0  # 1/(SNR + 1) with SNR 0: finite


def test_the_plan_swaps_in_the_zero_terminal_snr_schedule_once() -> None:
    models = _Stub("v_prediction")
    first = objective.noise_schedule(models, {"zero_terminal_snr": True})  # type: ignore[arg-type]
    assert first.alphas_cumprod[-1] == 0 and models.noise_scheduler is first
    assert objective.noise_schedule(models, {"zero_terminal_snr": True}) is first  # type: ignore[arg-type]


def test_pyramid_noise_has_unit_std_and_low_frequencies() -> None:
    torch.manual_seed(0)
    white = torch.randn(8, 4, 64, 64)
    pyramid = objective.pyramid_noise(white, 6, 0.8)
    assert pyramid.shape == white.shape and pyramid.std().item() == pytest.approx(1.0)
    spatial_mean = pyramid.mean(dim=(2, 3)).abs().mean().item()
    assert spatial_mean > 5 * white.mean(dim=(2, 3)).abs().mean().item()  # coarse levels: large blobs
    torch.manual_seed(0)
    only_full_resolution = objective.pyramid_noise(white, 1, 0.8)  # level 0 adds same-size noise, × 1
    torch.manual_seed(0)
    torch.rand(())
    extra = torch.randn(8, 4, 64, 64)
    assert torch.allclose(only_full_resolution, (white + extra) / (white + extra).std(), atol=1e-5)


def test_input_perturbation_noises_the_input_not_the_target() -> None:
    scheduler = training_noise_scheduler("epsilon")
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    torch.manual_seed(3)
    noisy = objective.noisy_input(scheduler, latents, noise, t, 0.1)
    torch.manual_seed(3)
    extra = torch.randn_like(latents)
    assert torch.allclose(noisy, scheduler.add_noise(latents, noise + 0.1 * extra, t))
    assert torch.equal(objective.target(scheduler, latents, noise, t), noise)


def test_a_run_with_every_objective_option(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    training = {**BASE, "timestep_max": 1000, "total_steps": 2, "noise_offset": 0.05,
                "multires_iterations": 4,
                "input_perturbation": 0.1, "snr_gamma": 5.0, "debiased": True, "zero_terminal_snr": True,
                "loss": "huber", "huber_c": 0.2}
    adafactor = {"relative_step": False, "scale_parameter": False, "warmup_init": False}
    plan = make_plan(tmp_path, model__prediction="v_prediction", sample__prompts=[], training=training,
                     optimizer={"name": "adafactor", "lr": 1e-3, "max_grad_norm": 0.0, "args": adafactor})
    result, _ = run_plan(plan, progress=False)
    assert result.steps == 2 and math.isfinite(result.final_loss)
