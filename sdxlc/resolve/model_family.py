"""Which model family a `model` line names, told without torch: sdxlc trains SDXL base-topology models only.

A diffusers folder says what it is in `model_index.json` (`_class_name`) and `unet/config.json`
(`cross_attention_dim` 2048 and `addition_embed_type` `text_time` for SDXL); a single file by its
tensor names (see `model_source.sdxl_problem`); a hub id by a table of well-known repositories. Hub ids
are never downloaded at plan time: an unknown one is taken for SDXL, as the runtime will load it with
`StableDiffusionXLPipeline`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SDXL = "sdxl"
SDXL_PIPELINES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"}
OTHER_PIPELINES = {
    "StableDiffusionPipeline": "SD 1.x/2.x",
    "StableDiffusionImg2ImgPipeline": "SD 1.x/2.x",
    "StableDiffusionInpaintPipeline": "SD 1.x/2.x inpainting",
    "StableDiffusionXLInpaintPipeline": "SDXL inpainting, a 9-channel UNet",
    "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "FluxPipeline": "FLUX",
    "KandinskyV22Pipeline": "Kandinsky 2.2",
    "LatentConsistencyModelPipeline": "a latent consistency model",
}
OTHER_PREFIXES = {
    "PixArt": "PixArt",
    "Flux": "FLUX",
    "StableDiffusion3": "Stable Diffusion 3",
    "Sana": "Sana",
    "HunyuanDiT": "Hunyuan-DiT",
    "Kandinsky": "Kandinsky",
    "Wuerstchen": "Würstchen",
    "StableCascade": "Stable Cascade",
    "AuraFlow": "AuraFlow",
    "Lumina": "Lumina",
}
# well-known hub repositories: None for SDXL, else why it is not one
KNOWN_HUB_IDS: dict[str, str | None] = {
    "stabilityai/stable-diffusion-xl-base-1.0": None,
    "stabilityai/sdxl-turbo": None,
    "stabilityai/stable-diffusion-xl-base-0.9": None,
    "stabilityai/stable-diffusion-xl-refiner-1.0": "the SDXL refiner",
    "stabilityai/stable-diffusion-xl-refiner-0.9": "the SDXL refiner",
    "runwayml/stable-diffusion-v1-5": "SD 1.5",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "SD 1.5",
    "CompVis/stable-diffusion-v1-4": "SD 1.4",
    "stabilityai/stable-diffusion-2-1": "SD 2.1",
    "stabilityai/stable-diffusion-2-1-base": "SD 2.1",
    "stabilityai/stable-diffusion-2": "SD 2.0",
    "stabilityai/stable-diffusion-3-medium-diffusers": "Stable Diffusion 3",
    "stabilityai/stable-diffusion-3.5-large": "Stable Diffusion 3.5",
    "stabilityai/stable-diffusion-3.5-medium": "Stable Diffusion 3.5",
    "black-forest-labs/FLUX.1-dev": "FLUX",
    "black-forest-labs/FLUX.1-schnell": "FLUX",
    "PixArt-alpha/PixArt-XL-2-1024-MS": "PixArt-α",
}
ONLY = "sdxlc trains SDXL only"
REFINER = (
    "the SDXL refiner: its UNet reads OpenCLIP bigG alone (cross_attention_dim 1280); "
    "sdxlc trains SDXL base-topology models, with both text encoders"
)


def hub_problem(repo: str) -> str | None:
    """Why a well-known hub id is not an SDXL base model, or None (unknown ids included)."""
    for known, what in KNOWN_HUB_IDS.items():
        if known.lower() == repo.lower() and what is not None:
            if what == "the SDXL refiner":
                return f"`{repo}` is {REFINER}"
            return f"`{repo}` is {what}: {ONLY}"
    return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pipeline_problem(name: str) -> str | None:
    if name in SDXL_PIPELINES:
        return None
    what = OTHER_PIPELINES.get(name) or next(
        (family for prefix, family in OTHER_PREFIXES.items() if name.startswith(prefix)), None
    )
    return f"model_index.json says {name}" + (f" ({what})" if what else "") + f": {ONLY}"


def folder_problem(folder: Path) -> str | None:
    """Why a diffusers folder is not an SDXL base-topology model, or None when it is one."""
    index = _read(folder / "model_index.json")
    if index is None:
        return f"{folder} has no readable model_index.json: it is not a diffusers pipeline folder"
    name = str(index.get("_class_name", "?"))
    if problem := _pipeline_problem(name):
        return problem
    if not isinstance(index.get("text_encoder"), list) or None in index["text_encoder"]:
        return f"model_index.json says {name} with no text_encoder: {REFINER}"
    unet = _read(folder / "unet" / "config.json")
    if unet is None:
        return f"{folder} has no readable unet/config.json"
    if unet.get("addition_embed_type") != "text_time":
        return (
            f"unet/config.json has addition_embed_type {unet.get('addition_embed_type')!r}, not SDXL's "
            f"'text_time' size conditioning: {ONLY}"
        )
    if int(unet.get("in_channels", 4)) != 4:
        return f"unet/config.json has {unet.get('in_channels')} input channels (an inpainting UNet?): {ONLY}"
    return _width_problem(folder, unet)


def _width_problem(folder: Path, unet: dict[str, Any]) -> str | None:
    """The UNet's cross-attention width must be the two text encoders' widths together."""
    widths = [
        (_read(folder / sub / "config.json") or {}).get("hidden_size")
        for sub in ("text_encoder", "text_encoder_2")
    ]
    cross = unet.get("cross_attention_dim")
    if None in widths:
        return f"{folder} lacks text_encoder/config.json or text_encoder_2/config.json"
    if cross != sum(int(w) for w in widths if w is not None):
        return (
            f"unet/config.json has cross_attention_dim {cross}, not the text encoders' {widths[0]} + "
            f"{widths[1]}: {ONLY}"
        )
    return None


def single_file_kind(keys: list[str]) -> str | None:
    """What a single file's tensor names say it is, when it is a diffusion model that is not SDXL."""

    def starts(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if starts("conditioner.embedders.0.model.") and not starts("conditioner.embedders.1."):
        return REFINER
    if starts("cond_stage_model.transformer."):
        return f"a Stable Diffusion 1.x checkpoint (CLIP ViT-L under `cond_stage_model.transformer`): {ONLY}"
    if starts("cond_stage_model.model."):
        return f"a Stable Diffusion 2.x checkpoint (OpenCLIP under `cond_stage_model.model`): {ONLY}"
    if any(".double_blocks." in f".{k}" for k in keys):
        return f"a FLUX checkpoint (`double_blocks.*`): {ONLY}"
    if any(".joint_blocks." in f".{k}" for k in keys):
        return f"a Stable Diffusion 3 checkpoint (`joint_blocks.*`): {ONLY}"
    return None
