"""Diffusers UNet names → the original SDXL (SAI/LDM) names: `input_blocks`, `middle_block`, `output_blocks`.

One mapping, driven by the UNet config, used for the keys of single-file checkpoints, the module
names of kohya-format LoRA files and the 23 kohya `block_lr` groups. Works on parameter keys
(`…conv1.weight`) and module paths (`…conv1`) alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    for old, new in _RESNET:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_original(name: str, layers_per_block: int, up_block_types: Sequence[str]) -> str:
    """The original name of a diffusers UNet key or module path; ValueError when it has none."""
    step = layers_per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"input_blocks.{int(m[1]) * step + int(m[2]) + 1}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        return f"input_blocks.{int(m[1]) * step + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", name):
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"output_blocks.{int(m[1]) * step + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        return f"output_blocks.{int(m[1]) * step + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", name):
        level = int(m[1])
        slot = 2 if "CrossAttn" in up_block_types[level] else 1
        return f"output_blocks.{level * step + layers_per_block}.{slot}.{m[2]}"
    for prefix, new in _TOP.items():
        if name == prefix or name.startswith(prefix + "."):
            return new + name[len(prefix) :]
    raise ValueError(f"UNet name {name} has no place in the SDXL block layout")
