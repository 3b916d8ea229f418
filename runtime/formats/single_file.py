"""Single-file SDXL checkpoints: diffusers → original (SAI/LDM) key conversion, saving, offline loading.

Stable API (other runtime modules build on it):

    to_original(pipe_or_components) -> dict[str, Tensor]
        A `StableDiffusionXLPipeline`, or a mapping with any of the keys `unet`, `vae`, `text_encoder`,
        `text_encoder_2` (modules), converted to one original-layout state dict:
          unet           -> model.diffusion_model.*
          vae            -> first_stage_model.*           (mid-attention linears stored as 1×1 convs)
          text_encoder   -> conditioner.embedders.0.transformer.text_model.*   (CLIP-L, HF naming)
          text_encoder_2 -> conditioner.embedders.1.model.*  (OpenCLIP bigG naming, fused q/k/v
                            `in_proj_weight`/`in_proj_bias`, `text_projection` stored transposed)
        Components absent from the mapping are left out. The conversion is driven by each model's config,
        so it works for full-size SDXL and for the tiny model alike. Tensors keep their dtype and device;
        every returned tensor is contiguous.
    unet_to_original(state, config), vae_to_original(state, config), clip_l_to_original(state),
    bigg_to_original(state)
        The per-component converters behind `to_original` (state dicts in diffusers/transformers naming).
    save_single_file(path, state, metadata=None, dtype=None) -> Path
        Writes a `.safetensors` file atomically (temporary file in the same folder, then rename). Tensors
        are moved to the CPU (and cast to `dtype` when given); metadata values must be strings.
    load_single_file(path, config_dir, dtype=torch.float32) -> StableDiffusionXLPipeline
        `StableDiffusionXLPipeline.from_single_file(path, config=config_dir, local_files_only=True)`:
        never reaches the Hub. `config_dir` is a diffusers folder, weights optional (see `write_config`).
    load_tokenizers(config_dir) -> (CLIPTokenizer, CLIPTokenizer)
        The two tokenizers of a config folder (the shipped one keeps a single copy of the BPE files).
    write_config(pipe, folder) -> Path
        A config-only diffusers folder for `pipe` (model_index.json, component configs, tokenizers, no
        weights), usable as `config_dir` for a single file made from a non-standard model (the tiny one).
    SDXL_CONFIG_DIR
        The SDXL base config folder shipped with the package (sdxlc/data/sdxl_config).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPTokenizer

from runtime.formats.safetensors_file import write as write_safetensors
from runtime.formats.sai_names import unet_original
from sdxlc.plan.files import atomic_path

SDXL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "sdxlc" / "data" / "sdxl_config"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIGG_PREFIX = "conditioner.embedders.1.model."

_VAE_ATTN = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
             ("to_out.0.", "proj_out."))
_BIGG_LAYER = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))

State = dict[str, torch.Tensor]


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> State:
    """A diffusers `UNet2DConditionModel` state dict in original naming (`model.diffusion_model.*`)."""
    per_level, up_types = int(config["layers_per_block"]), list(config["up_block_types"])
    return {UNET_PREFIX + unet_original(k, per_level, up_types): v for k, v in state.items()}


def _vae_key(key: str, levels: int) -> str:
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        key = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        key = f"encoder.down.{m[1]}.downsample.{m[2]}"
    elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        key = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        key = f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        key = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        rest = m[2]
        for old, new in _VAE_ATTN:
            if rest.startswith(old):
                rest = new + rest[len(old):]
        key = f"{m[1]}.mid.attn_1.{rest}"
    return key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> State:
    """A diffusers `AutoencoderKL` state dict in original naming (`first_stage_model.*`)."""
    levels = len(config["block_out_channels"])
    out: State = {}
    for key, value in state.items():
        new = _vae_key(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original stores these linears as 1x1 convolutions
        out[VAE_PREFIX + new] = value
    return out


def clip_l_to_original(state: Mapping[str, torch.Tensor]) -> State:
    """A transformers `CLIPTextModel` state dict (flattened or `text_model.`-prefixed) in original naming."""
    return {CLIP_L_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in state.items()}


def bigg_to_original(state: Mapping[str, torch.Tensor]) -> State:
    """A transformers `CLIPTextModelWithProjection` state dict in OpenCLIP naming
    (`conditioner.embedders.1.model.*`)."""
    out: State = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for full, value in state.items():
        key = full.removeprefix("text_model.")
        if key == "text_projection.weight":
            out[BIGG_PREFIX + "text_projection"] = value.T  # OpenCLIP multiplies x @ P: stored transposed
        elif key == "embeddings.position_embedding.weight":
            out[BIGG_PREFIX + "positional_embedding"] = value
        elif key == "embeddings.token_embedding.weight":
            out[BIGG_PREFIX + "token_embedding.weight"] = value
        elif key.startswith("final_layer_norm."):
            out[BIGG_PREFIX + "ln_final." + key.rpartition(".")[2]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)", key):
            layer, rest = m[1], m[2]
            if q := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                fused.setdefault((layer, q[2]), {})[q[1]] = value
                continue
            for old, new in _BIGG_LAYER:
                rest = rest.replace(old, new)
            out[BIGG_PREFIX + f"transformer.resblocks.{layer}.{rest}"] = value
        elif key == "embeddings.position_ids":
            continue
        else:
            raise ValueError(f"no OpenCLIP name for the text_encoder_2 key {full}")
    for (layer, kind), parts in fused.items():
        out[BIGG_PREFIX + f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    return out


def _components(pipe_or_components: Any) -> dict[str, torch.nn.Module]:
    if isinstance(pipe_or_components, Mapping):
        return {k: v for k, v in pipe_or_components.items() if v is not None}
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    found = {n: getattr(pipe_or_components, n, None) for n in names}
    return {n: m for n, m in found.items() if m is not None}


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP/compile wrappers (their state-dict keys carry extra prefixes)."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def to_original(pipe_or_components: Any) -> State:
    """The whole model (or the given components) as one original-layout SDXL state dict."""
    out: State = {}
    for name, wrapped in _components(pipe_or_components).items():
        module = _unwrap(wrapped)
        state = module.state_dict()
        if name == "unet":
            out.update(unet_to_original(state, module.config))
        elif name == "vae":
            out.update(vae_to_original(state, module.config))
        elif name == "text_encoder":
            out.update(clip_l_to_original(state))
        elif name == "text_encoder_2":
            out.update(bigg_to_original(state))
        else:
            raise ValueError(f"unknown SDXL component {name!r}")
    return {k: v.contiguous() for k, v in out.items()}


def save_single_file(
    path: str | os.PathLike[str], state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None,
) -> Path:
    """Write `state` as a safetensors file atomically; returns the path written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state.items():
        tensor = value.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    with atomic_path(target) as temp:
        write_safetensors(temp, tensors, dict(metadata) if metadata else None)
    return target


def load_single_file(
    path: str | os.PathLike[str], config_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> StableDiffusionXLPipeline:
    """An SDXL pipeline from a single-file checkpoint, offline: configs and tokenizers come from
    `config_dir` (default: the shipped SDXL base folder)."""
    folder = Path(config_dir) if config_dir is not None else SDXL_CONFIG_DIR
    tokenizer, tokenizer_2 = load_tokenizers(folder)
    options: dict[str, Any] = {} if dtype == torch.float32 else {"dtype": dtype}
    return StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, add_watermarker=False,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, **options,
    )


def load_tokenizers(config_dir: str | os.PathLike[str]) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """The two CLIP tokenizers of a config folder. A `tokenizer_2/` holding only a tokenizer_config.json
    (the shipped folder: both encoders share one BPE vocabulary) reuses `tokenizer/`'s vocabulary with
    its own settings (SDXL's second tokenizer pads with "!")."""
    folder = Path(config_dir)
    first = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    second_dir = folder / "tokenizer_2"
    if any((second_dir / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        return first, CLIPTokenizer.from_pretrained(second_dir, local_files_only=True)
    settings = json.loads((second_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    overrides = {k: settings[k] for k in ("pad_token", "model_max_length") if k in settings}
    return first, CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True, **overrides)


def write_config(pipe: StableDiffusionXLPipeline, folder: str | os.PathLike[str]) -> Path:
    """A config-only diffusers folder describing `pipe` (no weights), for `load_single_file`."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    pipe.save_config(root)  # model_index.json
    pipe.unet.save_config(root / "unet")
    pipe.vae.save_config(root / "vae")
    pipe.scheduler.save_config(root / "scheduler")
    pipe.text_encoder.config.save_pretrained(root / "text_encoder")
    pipe.text_encoder_2.config.save_pretrained(root / "text_encoder_2")
    pipe.tokenizer.save_pretrained(root / "tokenizer")
    pipe.tokenizer_2.save_pretrained(root / "tokenizer_2")
    return root
