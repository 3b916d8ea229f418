"""Every optimizer of schema/optimizers.json that runs on the CPU steps every training method on the tiny
model: a LoRA and a fine-tune lower the loss of a fixed batch within 4 steps; an embedding, whose 2
token rows move the loss very little in so few steps, has both rows changed and its loss lower at the
last step than at the first.
8-bit optimizers run with a lowered `min_8bit_size`, and their state is checked to be 8-bit."""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from accelerate.utils import set_seed
from methods_common import METHODS, method_plan

from runtime.methods import registry as methods
from runtime.train import loop
from runtime.train.conditioning import Conditioning
from runtime.train.data import setup_data
from runtime.train.optim import make_optimizer, optimizer_class
from runtime.train.run import setup_model
from sdxlc.lang.defaults import OPTIMIZER_ARGS
from sdxlc.resolve.optimizers import optimizer_table

CPU_OPTIMIZERS = [name for name, spec in optimizer_table().items() if "cpu" in spec["devices"]]
STEPS = 4
MIN_8BIT = 16  # the tiny model's tensors are small; the default 4096 would leave them all in fp32 state

# Learning rates (per method) that move the tiny model visibly in 4 steps; not advice for SDXL.
LR: dict[str, dict[str, float]] = {
    "adamw": {"lora": 1e-2, "finetune": 1e-3, "embedding": 0.3},
    "adamw8bit": {"lora": 1e-2, "finetune": 1e-3, "embedding": 0.3},
    "lion": {"lora": 2e-3, "finetune": 2e-4, "embedding": 0.05},
    "lion8bit": {"lora": 2e-3, "finetune": 2e-4, "embedding": 0.05},
    "sgd": {"lora": 2.0, "finetune": 0.05, "embedding": 100.0},
    "adafactor": {"lora": 1e-2, "finetune": 1e-3, "embedding": 0.3},
    "prodigy": {"lora": 1.0, "finetune": 1.0, "embedding": 1.0},
}
EXTRA_ARGS: dict[str, dict[str, Any]] = {
    "adamw8bit": {"min_8bit_size": MIN_8BIT},
    "lion8bit": {"min_8bit_size": MIN_8BIT},
    "prodigy": {"d0": 1e-3},
}


def test_the_matrix_covers_every_cpu_optimizer() -> None:
    assert set(LR) == set(CPU_OPTIMIZERS)


@pytest.fixture(scope="module", params=list(METHODS))
def setup(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    """One model per method with its trainable parameters' initial values, and one fixed batch."""
    kind = request.param
    plan = method_plan(tmp_path_factory.mktemp(f"matrix-{kind}"), METHODS[kind], sample__prompts=[],
                       training__batch_size=1)
    set_seed(0)
    models, data = setup_model(plan), setup_data(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    method = methods.for_plan(plan)
    conditioning.text_grad, conditioning.captions = method.trains_text, method.caption_map()
    batch = conditioning.batch(data.epoch(0)[0], random.Random(0))
    trained = method.trainable_state(models.pipe)
    initial = {name: p.detach().clone() for name, p in trained.items()}
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    yield kind, plan, models, conditioning, batch, trained, initial


def run_steps(setup: tuple[Any, ...], name: str) -> tuple[list[float], torch.optim.Optimizer]:
    kind, plan, models, conditioning, batch, trained, initial = setup
    with torch.no_grad():
        for key, parameter in trained.items():
            parameter.copy_(initial[key])
    lr = LR[name][kind]
    spec = {"name": name, "class": optimizer_table()[name]["class"], "lr": lr,
            "args": {**OPTIMIZER_ARGS.get(name, {}), **EXTRA_ARGS.get(name, {})}, "max_grad_norm": 0.0}
    method_lrs = {"lr_te1": plan["method"]["lr_te1"] and lr, "lr_te2": plan["method"]["lr_te2"] and lr}
    plan = {**plan, "optimizer": spec, "method": {**plan["method"], **method_lrs}}
    unet = models.pipe.unet.train()
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = make_optimizer(spec, methods.for_plan(plan).param_groups(models.pipe))
        for _ in range(STEPS):
            torch.manual_seed(1)  # the same noise and timestep every step: a fixed batch
            latents, states, pooled = conditioning.encode(batch)
            loss = loop.batch_loss(unet, models, plan["training"], latents, states, pooled, batch.time_ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    return losses, optimizer


@pytest.mark.parametrize("name", CPU_OPTIMIZERS)
def test_optimizer_trains_the_method(setup: tuple[Any, ...], name: str) -> None:
    kind, _, _, _, _, trained, initial = setup
    losses, optimizer = run_steps(setup, name)
    assert isinstance(optimizer, optimizer_class(name, optimizer_table()[name]["class"]))
    assert all(math.isfinite(loss) for loss in losses), losses
    moved = [key for key, parameter in trained.items() if not torch.equal(parameter.detach(), initial[key])]
    assert moved, "no trained parameter changed"
    if kind == "embedding":  # both encoders' rows move; the loss falls, by about 1% in 4 steps
        assert set(moved) == set(trained) and losses[-1] < losses[0], losses
    else:
        assert min(losses[1:]) < 0.97 * losses[0], losses
    if name.endswith("8bit"):  # every tensor with state at or above min_8bit_size has 8-bit state
        states = [state["state1"] for p, state in optimizer.state.items() if p.numel() >= MIN_8BIT]
        assert states and all(state.dtype == torch.uint8 for state in states)
