"""A model's linear and convolution modules by their kohya LoRA key, for merging LoRAs into a model and
extracting one from two models.

Keys are those sdxlc's LoRA writer gives (runtime/methods/lora.py): `lora_unet_<SAI module path>` for the
UNet, `lora_te1_text_model_…` / `lora_te2_text_model_…` for the text encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging

from runtime import RunError
from runtime.methods.base import TEXT_ENCODERS
from runtime.methods.lora import sai_name, text_key
from runtime.model.load import load_pipeline
from runtime.model.spec import model_spec
from runtime.tools.lora_svd import BadRequest

WEIGHTED = (torch.nn.Linear, torch.nn.Conv2d)


def load_model(source: str, config: Path | None = None) -> Any:
    """The pipeline of `tiny`, a diffusers folder, a hub id or a single file (with `config`, the
    diffusers config folder describing it; default the shipped SDXL configs), in fp32 on the CPU.
    `config` describes single files only: other models have their own."""
    spec = model_spec(source)
    if config is not None and spec["kind"] == "single_file":
        if not (config / "model_index.json").is_file():
            raise BadRequest(f"--config {config} is not a diffusers config folder (no model_index.json)")
        spec["config"] = str(config)
    progress = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # the single-file loader's bar; the tools print their own lines
    try:
        pipe = load_pipeline(spec)
    finally:
        if progress:
            diffusers_logging.enable_progress_bar()
    for part in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False)
    return pipe


def _wanted(name: str, targets: Sequence[str] | None) -> bool:
    """PEFT's matching of `target_modules`: the module path is a target or ends in `.<target>`."""
    return targets is None or any(name == t or name.endswith("." + t) for t in targets)


def weight_modules(pipe: Any, unet_targets: Sequence[str] | None = None,
                   te_targets: Sequence[str] | None = None) -> dict[str, torch.nn.Module]:
    """Linear and Conv2d modules by kohya key: those matching the targets (None: every one; an empty
    list: none of that model's)."""
    found: dict[str, torch.nn.Module] = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, WEIGHTED) and _wanted(name, unet_targets):
            try:
                found["lora_unet_" + sai_name(name, pipe.unet.config).replace(".", "_")] = module
            except RunError:
                continue  # a module outside the SDXL block layout has no kohya key
    for target, attribute in TEXT_ENCODERS.items():
        for name, module in getattr(pipe, attribute).named_modules():
            if isinstance(module, WEIGHTED) and _wanted(name, te_targets):
                found[text_key(target, name)] = module
    return found
