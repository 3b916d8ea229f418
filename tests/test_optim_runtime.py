"""Every optimizer of schema/optimizers.json steps the tiny SDXL LoRA and lowers the loss of a fixed batch."""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.utils import set_seed

from runtime.methods.lora import param_groups
from runtime.train import loop
from runtime.train.conditioning import Conditioning
from runtime.train.data import setup_data
from runtime.train.optim import make_optimizer, make_schedule, optimizer_class
from runtime.train.run import setup_model
from sdxlc.lang.defaults import OPTIMIZER_ARGS
from sdxlc.resolve.optimizers import optimizer_table

# Learning rates that move the tiny LoRA visibly in a few steps (not advice for SDXL).
CASES: dict[str, tuple[float, dict[str, Any]]] = {
    "adamw": (1e-2, {}),
    "adamw8bit": (1e-2, {"min_8bit_size": 16}),
    "paged_adamw8bit": (1e-2, {"min_8bit_size": 16}),
    "lion": (2e-3, {}),
    "lion8bit": (2e-3, {"min_8bit_size": 16}),
    "paged_lion8bit": (2e-3, {"min_8bit_size": 16}),
    "sgd": (5.0, {}),
    "adafactor": (1e-2, {}),
    "prodigy": (1.0, {"d0": 1e-3}),
}
STEPS = 6


def fixed_batch_training(training: dict[str, Any]) -> dict[str, Any]:
    """The plan's training settings with timesteps where the prediction is learnable in a few steps (near
    t=1000 the target is almost all noise and the loss hardly moves, whatever the optimizer)."""
    return {**training, "timestep_min": 100, "timestep_max": 700}


@pytest.fixture(scope="module")
def setup(make_plan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path_factory.mktemp("optim"))
    set_seed(0)
    models, data = setup_model(plan), setup_data(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    batch = conditioning.batch(data.epoch(0)[0], random.Random(0))
    latents, states, pooled = conditioning.encode(batch)
    unet = models.pipe.unet.train()
    initial = {k: v.clone() for k, v in unet.state_dict().items() if "lora" in k}
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    yield plan, models, unet, initial, (latents, states, pooled, batch.time_ids)


def losses_with(setup: tuple[Any, ...], name: str, lr: float, args: dict[str, Any]) -> list[float]:
    plan, models, unet, initial, (latents, states, pooled, time_ids) = setup
    unet.load_state_dict(initial, strict=False)
    spec = {"name": name, "class": optimizer_table()[name]["class"], "lr": lr,
            "args": {**OPTIMIZER_ARGS.get(name, {}), **args}, "max_grad_norm": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # paged optimizers on the CPU fall back to unpaged, with a warning
        optimizer = make_optimizer(spec, param_groups(unet, plan["method"], lr))
        losses = []
        for _ in range(STEPS):
            torch.manual_seed(1)  # the same noise and timesteps every step: a fixed batch
            loss = loop.batch_loss(unet, models, fixed_batch_training(plan["training"]), latents, states,
                                   pooled, time_ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert isinstance(optimizer, optimizer_class(name, optimizer_table()[name]["class"]))
    if name.endswith("8bit"):  # the 8-bit path, not fp32 state for small tensors
        states8 = [s["state1"] for s in optimizer.state.values()]
        assert states8 and all(state.dtype == torch.uint8 for state in states8)
    return losses


@pytest.mark.parametrize("name", list(CASES))
def test_optimizer_lowers_the_loss_of_a_fixed_batch(setup: tuple[Any, ...], name: str) -> None:
    lr, args = CASES[name]
    losses = losses_with(setup, name, lr, args)
    assert min(losses[-2:]) < 0.97 * losses[0], losses


def test_adafactor_relative_step_computes_its_own_lr(setup: tuple[Any, ...], tmp_path: Path) -> None:
    plan = {"optimizer": {"name": "adafactor", "class": "transformers.optimization.Adafactor", "lr": 1e-3,
                          "max_grad_norm": 0.0,
                          "args": {"relative_step": True, "scale_parameter": False, "warmup_init": True}},
            "schedule": {"name": "constant", "warmup_steps": 0}, "training": {"total_steps": 3}}
    weight = torch.nn.Parameter(torch.randn(8, 8))
    optimizer = make_optimizer(plan["optimizer"], [{"params": [weight], "lr": 1e-3}])
    schedule = make_schedule(plan, optimizer)
    before = weight.detach().clone()
    (weight**2).sum().backward()
    optimizer.step()
    schedule.step()
    assert not torch.equal(before, weight)
    assert 0 < schedule.get_last_lr()[0] < 1e-3  # warmup_init: 1e-6 × step, not the plan's 1e-3
