"""LoRA module groups: the layer kinds a recipe's `lora … modules` names (docs/METHODS.md).

Kinds: `attention` (to_q/k/v/out.0; text encoders q/k/v/out_proj), `ff` (ff.net.0.proj, ff.net.2; text
encoders fc1, fc2), `proj` (the transformer models' proj_in, proj_out), `conv` (the resnets' convolutions
and 1×1 shortcut, the down- and upsamplers) and `emb` (the resnets' time-embedding projection
time_emb_proj, kohya's `emb_layers_1`).

`kohya` is kohya-ss/sd-scripts' default network (networks/lora.py): every Linear and 1×1 Conv2d inside a
Transformer2DModel (attention + ff + proj: 722 UNet layers of SDXL) and every Linear of CLIPAttention and
CLIPMLP (attention + ff). Its `conv_dim` network argument adds ResnetBlock2D, Downsample2D and Upsample2D:
`kohya+conv+emb`. Groups combine with `+`; the plan keeps the names the recipe (or the file continued
from) gives and lists the module names they expand to.

Pure Python: no torch.
"""

from __future__ import annotations

from collections.abc import Iterable

KINDS = ("attention", "ff", "proj", "conv", "emb")
ALIASES: dict[str, tuple[str, ...]] = {"kohya": ("attention", "ff", "proj")}
GROUPS = (*KINDS, *ALIASES)  # every value `method.modules` may hold


def expand(modules: Iterable[str]) -> list[str]:
    """The layer kinds of `modules`, aliases replaced by their kinds, each once, in KINDS order."""
    kinds: set[str] = set()
    for name in modules:
        kinds.update(ALIASES.get(name, (name,)))
    return [kind for kind in KINDS if kind in kinds]


def collapse(kinds: Iterable[str]) -> list[str]:
    """The shortest group list for a set of layer kinds: `kohya` for attention+ff+proj, plus the rest."""
    found = set(kinds)
    out: list[str] = []
    for alias, members in ALIASES.items():
        if set(members) <= found:
            out.append(alias)
            found -= set(members)
    return out + [kind for kind in KINDS if kind in found]


def same_kinds(first: Iterable[str], second: Iterable[str]) -> bool:
    """Whether two group lists name the same layer kinds (`kohya` = `attention+ff+proj`)."""
    return expand(first) == expand(second)
