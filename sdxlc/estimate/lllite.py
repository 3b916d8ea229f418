"""The estimate's ControlNet-LLLite terms (docs/METHODS.md "ControlNet-LLLite"): the network's weights
and the activations it adds to a training step. Pure Python: no torch.

The layers are the runtime's (runtime/methods/lllite_net.py, kohya's rule): attn1 to_q/to_k/to_v and
attn2 to_q of every transformer layer in the cross-attention down blocks and the middle block, each with

  conditioning1  conv 3→c/2 (4×4) then c/2→c (2×2) at depth 1, c/2→c (4×4) at depth 2,
                 c/2→c/2 (4×4) and c/2→c (2×2) at depth 3, with biases
  down           in→m, mid (m+c)→m, up m→in, with biases

(c = cond_dim, m = mlp_dim). Activations kept for the backward pass, per module and sample, in the
compute dtype: the stem's ReLU outputs (c/2 channels at a quarter of the image side, the largest; at
depth 3 also at a sixteenth), and at the layer's token count the down output (m), the concatenation
(m + c) and the mid output (m). The stem's last output, `up`'s output and the layer's new input are not
kept: the frozen layer needs no input for its input's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdxlc.resolve.architecture import CONFIG_ERRORS, read_configs
from sdxlc.resolve.model_source import config_folder

# the UNet shapes of the known architectures (schema/models/*.json name them; the configs agree)
_KNOWN: dict[str, dict[str, Any]] = {
    "sdxl": {"block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10],
             "layers_per_block": 2,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]},
    "tiny": {"block_out_channels": [16, 32, 64], "transformer_layers_per_block": [1, 1, 2],
             "layers_per_block": 2,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]},
}
MODULES_PER_LAYER = 4  # attn1 to_q, to_k, to_v; attn2 to_q


@dataclass(frozen=True)
class Layer:
    """One LLLite module: its layer's input width, its depth and its level (image side ÷ 8·2^level)."""

    width: int
    depth: int
    level: int


def _depth(sai_index: int | None) -> int:
    """kohya's depth of an input block (None: the middle block)."""
    if sai_index is None:
        return 3
    return 1 if sai_index <= 2 else (2 if sai_index <= 5 else 3)


def layers_of(unet: dict[str, Any]) -> list[Layer]:
    """Every LLLite module of a UNet config."""
    widths = [int(w) for w in unet["block_out_channels"]]
    depth_per = unet.get("transformer_layers_per_block", 1)
    per = [int(d) for d in depth_per] if isinstance(depth_per, list) else [int(depth_per)] * len(widths)
    lpb = int(unet["layers_per_block"])
    out = []
    for level, kind in enumerate(unet["down_block_types"]):
        if "CrossAttn" not in kind:
            continue
        for slot in range(lpb):
            depth = _depth(level * (lpb + 1) + slot + 1)
            out += [Layer(widths[level], depth, level)] * (per[level] * MODULES_PER_LAYER)
    out += [Layer(widths[-1], 3, len(widths) - 1)] * (per[-1] * MODULES_PER_LAYER)
    return out


def plan_layers(plan: dict[str, Any], model: dict[str, Any]) -> list[Layer]:
    """The LLLite modules of the plan's model."""
    name = str(model.get("name", ""))
    if name in _KNOWN:
        return layers_of(_KNOWN[name])
    source = plan["model"]
    folder = config_folder(str(source["kind"]), str(source["source"]), source.get("config"))
    if folder is None:
        return layers_of(_KNOWN["sdxl"])
    try:
        return layers_of(read_configs(folder).unet)
    except CONFIG_ERRORS:
        return layers_of(_KNOWN["sdxl"])


def _stem_params(depth: int, c: int) -> int:
    half = c // 2
    first = 3 * half * 16 + half
    if depth == 1:
        return first + half * c * 4 + c
    if depth == 2:
        return first + half * c * 16 + c
    return first + half * half * 16 + half + half * c * 4 + c


def module_params(layer: Layer, c: int, m: int) -> int:
    w = layer.width
    return _stem_params(layer.depth, c) + (w * m + m) + ((m + c) * m + m) + (m * w + w)


def param_count(plan: dict[str, Any], model: dict[str, Any]) -> int:
    """Parameters of the plan's LLLite network."""
    c, m = int(plan["method"]["cond_dim"]), int(plan["method"]["mlp_dim"])
    return sum(module_params(layer, c, m) for layer in plan_layers(plan, model))


def activation_bytes(plan: dict[str, Any], model: dict[str, Any], batch: int, image_px: int,
                     dtype_bytes: int) -> int:
    """Bytes the LLLite modules keep for the backward pass in one training step (0 for other methods)."""
    if plan["method"].get("kind") != "lllite":
        return 0
    c, m = int(plan["method"]["cond_dim"]), int(plan["method"]["mlp_dim"])
    down = int(model["latent"]["downscale"])
    total = 0
    for layer in plan_layers(plan, model):
        tokens = image_px // (down * 2**layer.level) ** 2
        stem = (c // 2) * image_px // 16
        if layer.depth == 3:
            stem += (c // 2) * image_px // 256
        total += stem + tokens * (m + (m + c) + m)
    return total * batch * dtype_bytes
