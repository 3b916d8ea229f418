"""Built-in defaults: the lowest layer under every recipe, in one table.

Keys are recipe-document paths (schema/recipe.schema.json). Values that depend on the base model
(resolution, buckets, sample steps) come from the model family in MODEL_DEFAULTS.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "model.prediction": "epsilon",
    "model.tiny_seed": 0,
    "resolution.buckets": True,
    "resolution.no_upscale": False,
    "lora.rank": 8,
    "lora.targets": ["unet"],
    "lora.dropout": 0.0,
    "lllite.cond_dim": 32,  # kohya has no defaults; its docs/train_lllite_README.md example
    "lllite.mlp_dim": 64,
    "lllite.dropout": 0.0,
    "cache.text_encoder": False,
    "cache.latents": False,
    "cache.to_disk": False,
    "optimizer.name": "adamw",
    "optimizer.lr": 1e-4,
    "optimizer.args": {},
    "optimizer.max_grad_norm": 1.0,
    "schedule.name": "constant",
    "schedule.warmup_steps": 0,
    "training.batch_size": 1,
    "training.accumulate": 1,
    "training.steps": 1600,
    "training.gradient_checkpointing": False,
    "training.channels_last": False,
    "training.compile": False,
    "training.seed": 42,
    "noise.offset": 0.0,
    "noise.timestep_min": 0,
    "noise.timestep_max": 1000,
    "noise.multires_iterations": 0,
    "noise.multires_discount": 0.3,
    "noise.perturbation": 0.0,
    "noise.debiased": False,
    "noise.zero_terminal_snr": False,
    "loss.type": "l2",
    "loss.huber_c": 0.1,
    "save.keep": 3,
    "save.dtype": "fp16",
    "sample.cfg": 7.0,
    "log.every": 10,
    "log.tensorboard": True,
    "loader.workers": 0,
    "loader.prefetch": 2,
    "loader.pin_memory": False,
    "fit": "strict",
    "launch.processes": 1,
    "launch.machines": 1,
    "launch.strategy": "ddp",
}

# Per profile device (`cuda`, `cpu`): defaults that pay off on one kind of device only. Channels-last
# memory format speeds up the UNet's convolutions with cuDNN; on the CPU it only costs conversions.
# Data-loading workers keep a GPU fed while images decode; on the CPU they compete with the step for the
# same cores (bench/results/data_wait.md); cached latents leave nothing to decode (resolve/loader.py).
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": {"training.channels_last": True, "loader.workers": 4, "loader.pin_memory": True},
}

# Per base-model family: what an SDXL trainer expects for that model.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sdxl": {
        "resolution.size": 1024,
        "resolution.min": 512,
        "resolution.max": 2048,
        "resolution.step": 64,
        "sample.steps": 25,
    },
    "tiny": {
        "resolution.size": 64,
        "resolution.min": 32,
        "resolution.max": 128,
        "resolution.step": 32,
        "sample.steps": 8,
    },
}

# LoRA target modules in the UNet (attention projections of every transformer block).
UNET_LORA_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]

# Arguments an optimizer gets unless the recipe says otherwise: kohya's SGDNesterov, and Adafactor
# with an explicit learning rate (kohya's documented SDXL settings) rather than its relative step.
OPTIMIZER_ARGS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.9, "nesterov": True},
    "adafactor": {"relative_step": False, "scale_parameter": False, "warmup_init": False},
}

# Recipe defaults that depend on the optimizer: Prodigy estimates its own step size and expects lr 1;
# Adafactor clips its updates itself (clip_threshold), so gradient clipping is off.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "prodigy": {"optimizer.lr": 1.0},
    "adafactor": {"optimizer.max_grad_norm": 0.0},
}

# Adafactor with an explicit lr (kohya's advice for SDXL): a constant rate after about 100 warmup steps.
# The schedule of an Adafactor recipe that names none; the warmup is at most a tenth of the run.
ADAFACTOR_SCHEDULE: dict[str, Any] = {"schedule.name": "constant_with_warmup", "schedule.warmup_steps": 100}


def default_output(stem: str) -> str:
    """The output folder of a recipe that names none, relative to the recipe: `out/<recipe name>`."""
    return f"out/{stem}"
