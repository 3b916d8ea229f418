"""The tensors of an SDXL-topology model, from its diffusers configs alone (no torch, no weights).

`unet/config.json`, `vae/config.json`, `text_encoder/config.json` and `text_encoder_2/config.json` fix
every weight's name and shape: `UNet2DConditionModel` (down, mid and up blocks of resnets and
`Transformer2DModel`s, `text_time` size conditioning), `AutoencoderKL` and the two CLIP text encoders.
The names follow the diffusers/transformers state dicts (tests/test_architecture.py checks them against
models built on the meta device), so the estimate's parameter counts, LoRA sizes and FLOPs come from
the model a folder really holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Shape = tuple[int, ...]
Tensors = dict[str, Shape]
COMPONENTS = {"unet": "unet", "vae": "vae", "te1": "text_encoder", "te2": "text_encoder_2"}


class ArchitectureError(ValueError):
    """A config that does not describe an SDXL-topology model sdxlc can size."""


# what reading a malformed config can raise: a missing key, a value of the wrong type or length
CONFIG_ERRORS = (ArchitectureError, KeyError, TypeError, ValueError, IndexError, AttributeError)


@dataclass(frozen=True)
class Configs:
    """The four component configs of a diffusers folder, as plain JSON objects."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    te1: dict[str, Any]
    te2: dict[str, Any]


def read_configs(folder: Path) -> Configs:
    """The component configs of a diffusers folder (or a config-only folder)."""
    found: dict[str, dict[str, Any]] = {}
    for key, sub in COMPONENTS.items():
        path = folder / sub / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ArchitectureError(f"{folder} has no {sub}/config.json") from exc
        except (OSError, ValueError) as exc:
            raise ArchitectureError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ArchitectureError(f"{path} is not a JSON object")
        found[key] = data
    return Configs(**found)


def _get(config: dict[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None:
        raise ArchitectureError(f"the config has no `{key}`")
    return value


def _per_block(value: Any, blocks: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else [int(value)] * blocks


# ---- building blocks ---------------------------------------------------------------------------


def _linear(name: str, out: int, inp: int, bias: bool = True) -> Tensors:
    return {f"{name}.weight": (out, inp), **({f"{name}.bias": (out,)} if bias else {})}


def _conv(name: str, out: int, inp: int, kernel: int = 3) -> Tensors:
    return {f"{name}.weight": (out, inp, kernel, kernel), f"{name}.bias": (out,)}


def _norm(name: str, width: int) -> Tensors:
    return {f"{name}.weight": (width,), f"{name}.bias": (width,)}


def _resnet(name: str, inp: int, out: int, temb: int | None) -> Tensors:
    tensors = {**_norm(f"{name}.norm1", inp), **_conv(f"{name}.conv1", out, inp)}
    if temb:
        tensors.update(_linear(f"{name}.time_emb_proj", out, temb))
    tensors.update({**_norm(f"{name}.norm2", out), **_conv(f"{name}.conv2", out, out)})
    if inp != out:
        tensors.update(_conv(f"{name}.conv_shortcut", out, inp, 1))
    return tensors


def _attention(name: str, width: int, context: int, bias: bool = False) -> Tensors:
    return {
        **_linear(f"{name}.to_q", width, width, bias),
        **_linear(f"{name}.to_k", width, context, bias),
        **_linear(f"{name}.to_v", width, context, bias),
        **_linear(f"{name}.to_out.0", width, width),
    }


def _transformer(name: str, width: int, layers: int, context: int, linear: bool) -> Tensors:
    tensors = _norm(f"{name}.norm", width)
    tensors.update(
        _linear(f"{name}.proj_in", width, width) if linear else _conv(f"{name}.proj_in", width, width, 1)
    )
    for i in range(layers):
        block = f"{name}.transformer_blocks.{i}"
        tensors.update(
            {
                **_norm(f"{block}.norm1", width),
                **_attention(f"{block}.attn1", width, width),
                **_norm(f"{block}.norm2", width),
                **_attention(f"{block}.attn2", width, context),
                **_norm(f"{block}.norm3", width),
                **_linear(f"{block}.ff.net.0.proj", 8 * width, width),
                **_linear(f"{block}.ff.net.2", width, 4 * width),
            }
        )
    tensors.update(
        _linear(f"{name}.proj_out", width, width) if linear else _conv(f"{name}.proj_out", width, width, 1)
    )
    return tensors


# ---- the UNet ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One resolution level of the UNet: its width, the downscale from the latent, and what it holds."""

    width: int
    scale: int  # the latent is `scale` times larger on each side
    resnets: int  # every resnet of the level, down and up path and mid block
    transformer_layers: int  # every BasicTransformerBlock of the level
    heads: int  # attention heads of those blocks


def check_unet(config: dict[str, Any]) -> None:
    """Refuse a UNet config this module cannot size: one that is not SDXL's topology."""
    down = list(_get(config, "down_block_types"))
    up = list(_get(config, "up_block_types"))
    known_down, known_up = {"DownBlock2D", "CrossAttnDownBlock2D"}, {"UpBlock2D", "CrossAttnUpBlock2D"}
    if set(down) - known_down or set(up) - known_up or len(down) != len(up):
        raise ArchitectureError(f"UNet blocks {down} / {up} are not SDXL's")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ArchitectureError(f"UNet mid block {config.get('mid_block_type')} is not SDXL's")
    if config.get("addition_embed_type") != "text_time":
        raise ArchitectureError("the UNet has no `text_time` size conditioning (addition_embed_type)")
    if (
        config.get("class_embed_type")
        or config.get("encoder_hid_dim_type")
        or config.get("time_cond_proj_dim")
    ):
        raise ArchitectureError("the UNet has class, encoder or LCM conditioning SDXL does not have")


def unet_tensors(config: dict[str, Any]) -> Tensors:
    """Every weight of a `UNet2DConditionModel` of SDXL topology, by state-dict name."""
    check_unet(config)
    widths = [int(c) for c in _get(config, "block_out_channels")]
    n = len(widths)
    per_layer = int(_get(config, "layers_per_block"))
    depth = _per_block(config.get("transformer_layers_per_block", 1), n)
    up_depth = _per_block(config.get("reverse_transformer_layers_per_block") or depth[::-1], n)
    context = int(_get(config, "cross_attention_dim"))
    linear = bool(config.get("use_linear_projection", False))
    temb = int(config.get("time_embedding_dim") or 4 * widths[0])
    kernel = int(config.get("conv_in_kernel", 3))
    tensors = _conv("conv_in", widths[0], int(_get(config, "in_channels")), kernel)
    tensors.update(
        {
            **_linear("time_embedding.linear_1", temb, widths[0]),
            **_linear("time_embedding.linear_2", temb, temb),
        }
    )
    add_in = int(_get(config, "projection_class_embeddings_input_dim"))
    tensors.update(
        {**_linear("add_embedding.linear_1", temb, add_in), **_linear("add_embedding.linear_2", temb, temb)}
    )
    previous = widths[0]
    for i, kind in enumerate(config["down_block_types"]):
        out = widths[i]
        for j in range(per_layer):
            tensors.update(_resnet(f"down_blocks.{i}.resnets.{j}", previous if j == 0 else out, out, temb))
            if kind.startswith("CrossAttn"):
                tensors.update(
                    _transformer(f"down_blocks.{i}.attentions.{j}", out, depth[i], context, linear)
                )
        if i < n - 1:
            tensors.update(_conv(f"down_blocks.{i}.downsamplers.0.conv", out, out))
        previous = out
    last = widths[-1]
    for j in range(2):
        tensors.update(_resnet(f"mid_block.resnets.{j}", last, last, temb))
    tensors.update(_transformer("mid_block.attentions.0", last, depth[-1], context, linear))
    rev = widths[::-1]
    previous = rev[0]
    for i, kind in enumerate(config["up_block_types"]):
        out, skip_in = rev[i], rev[min(i + 1, n - 1)]
        for j in range(per_layer + 1):
            skip = skip_in if j == per_layer else out
            tensors.update(
                _resnet(f"up_blocks.{i}.resnets.{j}", (previous if j == 0 else out) + skip, out, temb)
            )
            if kind.startswith("CrossAttn"):
                tensors.update(
                    _transformer(f"up_blocks.{i}.attentions.{j}", out, up_depth[i], context, linear)
                )
        if i < n - 1:
            tensors.update(_conv(f"up_blocks.{i}.upsamplers.0.conv", out, out))
        previous = out
    tensors.update(
        {
            **_norm("conv_norm_out", widths[0]),
            **_conv(
                "conv_out",
                int(_get(config, "out_channels")),
                widths[0],
                int(config.get("conv_out_kernel", 3)),
            ),
        }
    )
    return tensors


def _heads(config: dict[str, Any], widths: list[int]) -> list[int]:
    """Attention heads per level: `num_attention_heads`, or diffusers' legacy `attention_head_dim`, which
    UNet2DConditionModel reads as the number of heads."""
    given = config.get("num_attention_heads") or config.get("attention_head_dim") or 8
    return _per_block(given, len(widths))


def unet_levels(config: dict[str, Any]) -> list[Level]:
    """Width, downscale and contents of each resolution level (for activations and FLOPs)."""
    widths = [int(c) for c in _get(config, "block_out_channels")]
    n = len(widths)
    per_layer = int(_get(config, "layers_per_block"))
    depth = _per_block(config.get("transformer_layers_per_block", 1), n)
    up_depth = _per_block(config.get("reverse_transformer_layers_per_block") or depth[::-1], n)
    heads = _heads(config, widths)
    levels = []
    for i, width in enumerate(widths):
        j = n - 1 - i  # the up block at this level
        attn_down = config["down_block_types"][i].startswith("CrossAttn")
        attn_up = config["up_block_types"][j].startswith("CrossAttn")
        resnets = per_layer + per_layer + 1 + (2 if i == n - 1 else 0)
        layers = per_layer * depth[i] * attn_down + (per_layer + 1) * up_depth[j] * attn_up
        layers += depth[-1] if i == n - 1 else 0
        levels.append(Level(width, 2**i, resnets, layers, heads[i]))
    return levels


# ---- the VAE and the text encoders -------------------------------------------------------------


def _vae_mid(name: str, width: int) -> Tensors:
    tensors = {**_resnet(f"{name}.resnets.0", width, width, None)}
    tensors.update(
        {
            **_norm(f"{name}.attentions.0.group_norm", width),
            **_attention(f"{name}.attentions.0", width, width, bias=True),
        }
    )
    tensors.update(_resnet(f"{name}.resnets.1", width, width, None))
    return tensors


def vae_tensors(config: dict[str, Any]) -> tuple[Tensors, Tensors]:
    """(encoder + quant_conv, decoder + post_quant_conv) weights of an `AutoencoderKL`."""
    widths = [int(c) for c in _get(config, "block_out_channels")]
    per_layer = int(_get(config, "layers_per_block"))
    latent = int(_get(config, "latent_channels"))
    if not config.get("mid_block_add_attention", True):
        raise ArchitectureError("a VAE without its mid-block attention is not SDXL's")
    enc = _conv("encoder.conv_in", widths[0], int(_get(config, "in_channels")))
    previous = widths[0]
    for i, out in enumerate(widths):
        for j in range(per_layer):
            enc.update(
                _resnet(f"encoder.down_blocks.{i}.resnets.{j}", previous if j == 0 else out, out, None)
            )
        if i < len(widths) - 1:
            enc.update(_conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out))
        previous = out
    enc.update(
        {
            **_vae_mid("encoder.mid_block", widths[-1]),
            **_norm("encoder.conv_norm_out", widths[-1]),
            **_conv("encoder.conv_out", 2 * latent, widths[-1]),
        }
    )
    if config.get("use_quant_conv", True):
        enc.update(_conv("quant_conv", 2 * latent, 2 * latent, 1))
    rev = widths[::-1]
    dec = {**_conv("decoder.conv_in", rev[0], latent), **_vae_mid("decoder.mid_block", rev[0])}
    previous = rev[0]
    for i, out in enumerate(rev):
        for j in range(per_layer + 1):
            dec.update(_resnet(f"decoder.up_blocks.{i}.resnets.{j}", previous if j == 0 else out, out, None))
        if i < len(rev) - 1:
            dec.update(_conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out, out))
        previous = out
    dec.update(
        {
            **_norm("decoder.conv_norm_out", widths[0]),
            **_conv("decoder.conv_out", int(_get(config, "out_channels")), widths[0]),
        }
    )
    if config.get("use_post_quant_conv", True):
        dec.update(_conv("post_quant_conv", latent, latent, 1))
    return enc, dec


def clip_tensors(config: dict[str, Any], projection: bool) -> Tensors:
    """Every weight of a `CLIPTextModel` (or `CLIPTextModelWithProjection`, whose encoder keeps the
    `text_model.` prefix), with transformers 5 names."""
    hidden, inner = int(_get(config, "hidden_size")), int(_get(config, "intermediate_size"))
    top = "text_model." if projection else ""
    tensors: Tensors = {
        f"{top}embeddings.token_embedding.weight": (int(_get(config, "vocab_size")), hidden),
        f"{top}embeddings.position_embedding.weight": (int(_get(config, "max_position_embeddings")), hidden),
    }
    for i in range(int(_get(config, "num_hidden_layers"))):
        layer = f"{top}encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors.update(_linear(f"{layer}.self_attn.{proj}", hidden, hidden))
        tensors.update(
            {
                **_norm(f"{layer}.layer_norm1", hidden),
                **_linear(f"{layer}.mlp.fc1", inner, hidden),
                **_linear(f"{layer}.mlp.fc2", hidden, inner),
                **_norm(f"{layer}.layer_norm2", hidden),
            }
        )
    tensors.update(_norm(f"{top}final_layer_norm", hidden))
    if projection:
        tensors["text_projection.weight"] = (int(config.get("projection_dim") or hidden), hidden)
    return tensors


def all_tensors(configs: Configs) -> dict[str, Tensors]:
    """Every component's weights, keyed as the model facts are (unet, vae_encoder, vae_decoder, te1, te2)."""
    encoder, decoder = vae_tensors(configs.vae)
    return {
        "unet": unet_tensors(configs.unet),
        "vae_encoder": encoder,
        "vae_decoder": decoder,
        "te1": clip_tensors(configs.te1, projection=False),
        "te2": clip_tensors(configs.te2, projection=True),
    }


def numel(shape: Shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def linears(tensors: Tensors) -> Iterator[tuple[str, int, int]]:
    """(module name, in, out) of every 2-D weight: the `nn.Linear` layers a LoRA can wrap."""
    for name, shape in tensors.items():
        if name.endswith(".weight") and len(shape) == 2 and "embedding" not in name:
            yield name[: -len(".weight")], shape[1], shape[0]


def classify(configs: Configs, known: dict[str, dict[str, int]]) -> str:
    """The name of the known model facts (`schema/models/<name>.json` parameter counts by component)
    whose every component has this model's parameter count, else `custom`."""
    counts = {part: sum(numel(s) for s in t.values()) for part, t in all_tensors(configs).items()}
    return next((name for name, params in known.items() if params == counts), "custom")


UNET_PREFIX = "model.diffusion_model."
_HEADER_WIDTHS = {  # original-layout tensor → (component, what its first dimension is)
    "model.diffusion_model.input_blocks.0.0.weight": ("unet", "UNet width"),
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": ("te1", "CLIP-L width"),
    "conditioner.embedders.1.model.ln_final.weight": ("te2", "OpenCLIP bigG width"),
}


def header_mismatch(header: dict[str, Any], configs: Configs) -> str | None:
    """Why a single file's tensors do not fit its config folder (widths, UNet tensor count), or None."""
    expected = {
        "unet": int(configs.unet["block_out_channels"][0]),
        "te1": int(configs.te1["hidden_size"]),
        "te2": int(configs.te2["hidden_size"]),
    }
    for key, (part, what) in _HEADER_WIDTHS.items():
        shape = (header.get(key) or {}).get("shape")
        if shape and int(shape[0]) != expected[part]:
            return f"the file's {what} is {shape[0]} but its config says {expected[part]}"
    found = sum(1 for k in header if k.startswith(UNET_PREFIX))
    want = len(unet_tensors(configs.unet))
    if found != want:
        return f"the file holds {found} UNet tensors but its config describes {want}"
    return None
