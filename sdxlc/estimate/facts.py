"""Model facts (what ``schema/models/*.json`` hold) computed from a model's own diffusers configs.

Counts follow from the weights' shapes (``sdxlc.resolve.architecture``): parameters, Adafactor state,
LoRA sizes per rank, FLOPs of the matrix products and convolutions (what ``FlopCounterMode`` counts).
The memory coefficients the estimate cannot count (activations kept for backward, sampling and VAE
transients) scale the full-size SDXL figures, which are fitted to ``sdxlc plan --exact``, by the
widths and depths of the model at hand; docs/ESTIMATE.md gives each rule and its check.
"""

from __future__ import annotations

import re
from typing import Any

from sdxlc.estimate import cputime
from sdxlc.resolve.architecture import (
    Configs,
    Tensors,
    all_tensors,
    numel,
    unet_levels,
)

UNET_LORA_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                     "time_emb_proj")
UNET_CONV_MODULES = ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")
TE_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
TEXT_TOKENS = 77
HEAD_WEIGHT = 11.5  # channels' worth per attention head kept without checkpointing (fitted, see above)
_BLOCK = re.compile(r"^(?:encoder\.|decoder\.)?(down_blocks|up_blocks)\.(\d+)\.")


def _matches(name: str, module: str) -> bool:
    """peft's suffix matching of `target_modules`."""
    return name == module or name.endswith("." + module)


def lora_per_rank(tensors: Tensors, modules: tuple[str, ...]) -> dict[str, int]:
    """LoRA parameters per rank of each module name: in·k² + out over every matching linear or conv."""
    table = dict.fromkeys(modules, 0)
    for name, shape in tensors.items():
        if not name.endswith(".weight") or len(shape) not in (2, 4):
            continue
        module = name[: -len(".weight")]
        kernel = shape[2] * shape[3] if len(shape) == 4 else 1
        for key in modules:
            if _matches(module, key):
                table[key] += shape[1] * kernel + shape[0]
    return table


def weight_elements(tensors: Tensors, modules: tuple[str, ...]) -> dict[str, int]:
    """Elements of the linear and conv weights of each module name (out · in · k²), over every match."""
    table = dict.fromkeys(modules, 0)
    for name, shape in tensors.items():
        if not name.endswith(".weight") or len(shape) not in (2, 4):
            continue
        for key in modules:
            if _matches(name[: -len(".weight")], key):
                table[key] += numel(shape)
    return table


def adafactor_elements(tensors: Tensors) -> int:
    """transformers' Adafactor state: per tensor of 2+ dimensions the second moments over shape[:-1] and
    over shape[:-2] + shape[-1:], one value per element otherwise."""
    total = 0
    for shape in tensors.values():
        total += numel(shape[:-1]) + numel(shape[:-2] + shape[-1:]) if len(shape) >= 2 else numel(shape)
    return total


def _level(name: str, levels: int) -> int:
    """The resolution level (0 = full latent size) a UNet or VAE tensor works at."""
    if name.startswith(
        (
            "mid_block",
            "encoder.mid_block",
            "decoder.mid_block",
            "encoder.conv_out",
            "quant_conv",
            "post_quant_conv",
            "decoder.conv_in",
        )
    ):
        return levels - 1
    match = _BLOCK.match(name)
    if match is None:
        return 0
    index = int(match.group(2))
    level = index if match.group(1) == "down_blocks" else levels - 1 - index
    if ".downsamplers." in name:
        return level + 1
    if ".upsamplers." in name:
        return level - 1
    return level


def unet_flops(tensors: Tensors, levels: int, context_tokens: int) -> dict[str, float]:
    """Forward FLOPs of one sample as constant + per_latent_px·px + per_latent_px_squared·px²: 2 per
    multiply-add of every linear and convolution at its resolution, and SDPA's two products
    (4·width·queries·keys) for self-attention (quadratic) and cross-attention over the text tokens."""
    constant = per_px = per_px2 = 0.0
    for name, shape in tensors.items():
        if not name.endswith(".weight") or len(shape) < 2:
            continue
        macs = 2.0 * numel(shape)
        area = 4.0 ** -_level(name, levels)
        if name.startswith(("time_embedding.", "add_embedding.")) or ".time_emb_proj." in name:
            constant += macs
        elif ".attn2.to_k." in name or ".attn2.to_v." in name:
            constant += macs * context_tokens
        else:
            per_px += macs * area
        if name.endswith(".attn1.to_q.weight"):
            per_px2 += 4.0 * shape[0] * area * area
        elif name.endswith(".attn2.to_q.weight"):
            per_px += 4.0 * shape[0] * area * context_tokens
    return {"constant": constant, "per_latent_px": per_px, "per_latent_px_squared": per_px2}


def vae_flops_per_image_px(tensors: Tensors, levels: int, image_px: int) -> int:
    """FLOPs of a VAE pass per image pixel at `image_px` pixels (its mid-block attention is quadratic)."""
    flops = 0.0
    for name, shape in tensors.items():
        if not name.endswith(".weight") or len(shape) < 2:
            continue
        area = 4.0 ** -_level(name, levels)
        flops += 2.0 * numel(shape) * area * image_px
        if name.endswith("attentions.0.to_q.weight"):
            tokens = area * image_px
            flops += 4.0 * shape[0] * tokens * tokens
    return round(flops / image_px)  # the committed facts hold whole FLOPs per pixel


def text_flops(tensors: Tensors, tokens: int) -> float:
    """2 × non-embedding parameters × tokens."""
    return 2.0 * tokens * sum(numel(s) for n, s in tensors.items() if ".embeddings." not in f".{n}")


def structure(configs: Configs) -> dict[str, Any]:
    """The counted facts: parameters, Adafactor state, LoRA sizes, widths, FLOPs."""
    tensors = all_tensors(configs)
    unet, te1, te2 = configs.unet, configs.te1, configs.te2
    levels = len(unet["block_out_channels"])
    vae_levels = len(configs.vae["block_out_channels"])
    vae_px = int(configs.vae.get("sample_size") or 1024) ** 2
    hidden = {"te1": int(te1["hidden_size"]), "te2": int(te2["hidden_size"])}
    inner = {"te1": int(te1["intermediate_size"]), "te2": int(te2["intermediate_size"])}
    return {
        **cputime.counts(tensors, UNET_LORA_MODULES + UNET_CONV_MODULES, TE_LORA_MODULES,  # CPU time
                         lambda name: _level(name, levels)),
        "params": {part: sum(numel(s) for s in t.values()) for part, t in tensors.items()},
        "adafactor_state_elements": {
            part: adafactor_elements(tensors[part]) for part in ("unet", "te1", "te2")
        },
        "largest_tensor_params": max(numel(s) for s in tensors["unet"].values()),
        "lora_params_per_rank": {
            "unet": lora_per_rank(tensors["unet"], UNET_LORA_MODULES),
            "te1": lora_per_rank(tensors["te1"], TE_LORA_MODULES),
            "te2": lora_per_rank(tensors["te2"], TE_LORA_MODULES),
        },
        "lora_conv_params_per_rank": {"unet": lora_per_rank(tensors["unet"], UNET_CONV_MODULES)},
        "lora_weight_elements": {  # the adapted weights' sizes: a LoHa/LoKr layer builds its ΔW this big
            "unet": weight_elements(tensors["unet"], UNET_LORA_MODULES + UNET_CONV_MODULES),
            "te1": weight_elements(tensors["te1"], TE_LORA_MODULES),
            "te2": weight_elements(tensors["te2"], TE_LORA_MODULES),
        },
        "te_lora_input_width": {
            te: {**{m: hidden[te] for m in TE_LORA_MODULES if m != "fc2"}, "fc2": inner[te]} for te in hidden
        },
        "te_lora_modules": ["q_proj", "k_proj", "v_proj", "out_proj"],
        "latent": {"channels": int(unet["in_channels"]), "downscale": 2 ** (vae_levels - 1)},
        "context": {
            "length": TEXT_TOKENS,
            "width": hidden["te1"] + hidden["te2"],
            "te1_width": hidden["te1"],
            "te2_width": hidden["te2"],
            "pooled_width": int(te2.get("projection_dim") or hidden["te2"]),
            "te_layers": {"te1": int(te1["num_hidden_layers"]), "te2": int(te2["num_hidden_layers"])},
        },
        "flops": {
            "unet_forward": unet_flops(tensors["unet"], levels, TEXT_TOKENS),
            "vae_encode_per_image_px": vae_flops_per_image_px(tensors["vae_encoder"], vae_levels, vae_px),
            "vae_decode_per_image_px": vae_flops_per_image_px(tensors["vae_decoder"], vae_levels, vae_px),
            "te1_forward_per_sample": text_flops(tensors["te1"], TEXT_TOKENS),
            "te2_forward_per_sample": text_flops(tensors["te2"], TEXT_TOKENS),
        },
    }


def unet_width_sum(configs: Configs) -> float:
    """Σ over resolution levels of width × (resnets + transformer layers) / downscale²: the channels per
    latent pixel that a UNet keeps for backward, up to a constant (docs/ESTIMATE.md)."""
    return sum(
        lv.width * (lv.resnets + lv.transformer_layers) / lv.scale**2 for lv in unet_levels(configs.unet)
    )


def unet_head_sum(configs: Configs) -> float:
    """Σ over resolution levels of attention heads × transformer layers / downscale²."""
    return sum(lv.heads * lv.transformer_layers / lv.scale**2 for lv in unet_levels(configs.unet))


def unet_widest(configs: Configs) -> float:
    """The most channels per latent pixel of any level (width / downscale²)."""
    return max(lv.width / lv.scale**2 for lv in unet_levels(configs.unet))


def activation_ratios(configs: Configs, sdxl_configs: Configs) -> dict[str, float]:
    """How this UNet's activation coefficients compare with SDXL's: checkpointing keeps block inputs, which
    follow the width sum; without it attention also keeps per-head values (HEAD_WEIGHT channels' worth,
    fitted to `--exact` on mid-size models); sampling's transient follows the widest level."""

    def kept(c: Configs) -> float:
        return unet_width_sum(c) + HEAD_WEIGHT * unet_head_sum(c)

    return {
        "checkpointing": unet_width_sum(configs) / unet_width_sum(sdxl_configs),
        "no_checkpointing": kept(configs) / kept(sdxl_configs),
        "inference": unet_widest(configs) / unet_widest(sdxl_configs),
    }


def _scaled(reference: dict[str, Any], ratio: float) -> dict[str, Any]:
    return {k: (_scaled(v, ratio) if isinstance(v, dict) else v * ratio) for k, v in reference.items()}


def derive(
    configs: Configs, sdxl_configs: Configs, sdxl: dict[str, Any], tiny: dict[str, Any]
) -> dict[str, Any]:
    """Model facts of an SDXL-topology model that is neither SDXL nor the tiny model.

    Counted facts come from its configs. What the UNet keeps for backward scales the SDXL coefficients by
    `unet_width_sum` (the tiny model's fitted coefficients agree within the spread of their own fit);
    a text encoder's by layers × width; the VAE transients by the VAE's first width; sampling's UNet pass
    by the widest level's channels per latent pixel. The dispatch overheads are those of the nearer of
    the two measured models by UNet size.
    """
    facts = structure(configs)
    ratio = activation_ratios(configs, sdxl_configs)
    acts = sdxl["activations"]
    per_layer_width = {
        te: acts["te_training_bytes_per_sample"][te]
        / (sdxl["context"]["te_layers"][te] * sdxl["context"][f"{te}_width"])
        for te in ("te1", "te2")
    }
    context = facts["context"]
    vae_ratio = int(configs.vae["block_out_channels"][0]) / int(sdxl_configs.vae["block_out_channels"][0])
    near = sdxl if facts["params"]["unet"] ** 2 > sdxl["params"]["unet"] * tiny["params"]["unet"] else tiny
    facts["activations"] = {
        "compute_dtype_bytes": acts["compute_dtype_bytes"],
        "checkpointing": _scaled(acts["checkpointing"], ratio["checkpointing"]),
        "no_checkpointing": _scaled(acts["no_checkpointing"], ratio["no_checkpointing"]),
        "inference_bytes_per_latent_px_per_sample": acts["inference_bytes_per_latent_px_per_sample"]
        * ratio["inference"],
        "unet_method_factor": acts["unet_method_factor"],
        "te_training_bytes_per_sample": {
            te: per_layer_width[te] * context["te_layers"][te] * context[f"{te}_width"]
            for te in ("te1", "te2")
        },
        "vae_transient_elements_per_image_px": _scaled(
            acts["vae_transient_elements_per_image_px"], vae_ratio
        ),
    }
    for key in (
        "step_overhead_seconds",
        "encode_overhead_seconds",
        "sample_overhead_seconds",
        "checkpointing_overhead_factor",
        "cpu_time",
    ):
        facts[key] = near[key]
    facts.update(
        name="custom",
        description="an SDXL-topology model sized from its own configs",
        notes=[f"computed from the model's configs (sdxlc/estimate/facts.py); overheads of `{near['name']}`"],
    )
    return facts
