"""Plans and helpers shared by the tests of the training methods (tests/test_methods_*.py)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from conftest import build_plan

from sdxlc.plan.contract import plan_hash
from sdxlc.resolve.method import TE_MODULES, UNET_MODULES, embedding_tokens

ALL_MODULES = ["attention", "ff", "conv"]

LORA_TE: dict[str, Any] = {
    "kind": "lora", "targets": ["unet", "te1", "te2"], "block_lr": None, "lr_te1": 1e-3, "lr_te2": 5e-4,
    "rank": 4, "alpha": 4, "modules": ALL_MODULES,
    "unet_modules": [m for kind in ALL_MODULES for m in UNET_MODULES[kind]],
    "te_modules": [m for kind in ALL_MODULES for m in TE_MODULES[kind]], "dropout": 0.0, "init_from": None,
    "unsaved_blocks": [], "adapter": "lora", "dora": False, "factor": None,
}
FINETUNE: dict[str, Any] = {
    "kind": "finetune", "targets": ["unet", "te1", "te2"], "block_lr": None, "lr_te1": 1e-4, "lr_te2": 1e-4,
    "full_bf16": False, "fused_backward": False, "save_diffusers": False,
}
EMBEDDING: dict[str, Any] = {
    "kind": "embedding", "targets": ["te1", "te2"], "block_lr": None, "lr_te1": None, "lr_te2": None,
    "token": "<tok>", "tokens": embedding_tokens("<tok>", 2), "init": "cat", "vectors": 2,
    "template": "object", "captions": "template",
}
METHODS = {"lora": LORA_TE, "finetune": FINETUNE, "embedding": EMBEDDING}


def method_plan(out: Path, method: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The tests' base plan (tests/conftest.py) training `method`."""
    plan = build_plan(out, **overrides)
    plan["method"] = copy.deepcopy(method)
    plan["plan_hash"] = plan_hash(plan)
    from sdxlc.plan.contract import check

    check(plan)
    return plan


def fixed_batch_losses(plan: dict[str, Any], steps: int) -> list[float]:
    """Train the plan's method on one fixed batch (same noise and timesteps every step)."""
    from runtime.methods import registry as methods
    from runtime.train import loop
    from runtime.train.conditioning import Conditioning
    from runtime.train.data import setup_data
    from runtime.train.run import setup_model

    set_seed(0)
    models, data = setup_model(plan), setup_data(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    method = methods.for_plan(plan)
    conditioning.text_grad, conditioning.captions = method.trains_text, method.caption_map()
    batch = conditioning.batch(data.epoch(0)[0], random.Random(0))
    optimizer = loop.make_optimizer(plan["optimizer"], method.param_groups(models.pipe))
    unet = models.pipe.unet.train()
    losses = []
    for _ in range(steps):
        torch.manual_seed(1)
        latents, states, pooled = conditioning.encode(batch)
        # timesteps where the prediction is learnable in a few steps (near t=1000 the target is almost
        # all noise and the loss hardly moves)
        training = {**plan["training"], "timestep_min": 100, "timestep_max": 700}
        loss = loop.batch_loss(unet, models, training, latents, states, pooled, batch.time_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses
