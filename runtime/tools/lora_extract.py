"""`sdxlc lora extract`: a LoRA from the weight differences of two models (kohya's
extract_lora_from_models.py): every targeted module whose weight changed is factored by SVD to the rank
(alpha = rank, as kohya's extraction writes), its keys those sdxlc's LoRA writer uses.

The targeted modules are the caller's (the CLI passes sdxlc's LoRA layer kinds: attention, ff and conv);
changes elsewhere (norms, biases, embeddings, other layers) cannot be carried by the LoRA and are left
out. Unlike kohya, singular vectors are not clamped at a quantile: the extraction is the exact best
low-rank approximation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.gen.generate import pick_device
from runtime.tools.lora_merge import LORA_SPEC
from runtime.tools.lora_modules import load_model, weight_modules
from runtime.tools.lora_svd import BadRequest, Factored, Module, factor, network_metadata, write_lora

UNCHANGED = 1e-6  # a module whose change is below this share of its weight's norm is left out
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Extracted:
    path: Path
    kept_fro: dict[str, float]  # per module written
    full_rank: dict[str, int]  # the rank of each module's change
    unchanged: int  # targeted modules left out: their weights did not change


def _name(source: str) -> str:
    return source if source == "tiny" or not Path(source).exists() else Path(source).name


def differences(base: str, tuned: str, config: Path | None, unet_targets: Sequence[str],
                te_targets: Sequence[str]) -> tuple[dict[str, torch.Tensor], int]:
    """The weight change of every targeted module that changed, by kohya key; and how many did not."""
    first = weight_modules(load_model(base, config), unet_targets, te_targets)
    second = weight_modules(load_model(tuned, config), unet_targets, te_targets)
    if set(first) != set(second):
        odd = sorted(set(first) ^ set(second))
        raise BadRequest(f"the two models have different layers ({len(odd)}, e.g. {odd[0]}): "
                         "they are not the same architecture")
    changes, unchanged = {}, 0
    for key, module in first.items():
        old, new = module.weight.detach().float(), second[key].weight.detach().float()
        if old.shape != new.shape:
            raise BadRequest(f"{key} has shape {tuple(old.shape)} in the base model and {tuple(new.shape)} "
                             "in the tuned one: they are not the same architecture")
        delta = new - old
        if float(delta.norm()) <= UNCHANGED * max(float(old.norm()), 1e-12):
            unchanged += 1
            continue
        changes[key] = delta
    return changes, unchanged


def extract(base: str, tuned: str, out: Path, rank: int, unet_targets: Sequence[str],
            te_targets: Sequence[str], config: Path | None = None, dtype: str = "fp32",
            device: str = "cpu") -> Extracted:
    """Write the LoRA of the change from `base` to `tuned` at `rank` (at most: a module whose weight is
    smaller keeps its full rank); the SVDs run on `device` (`auto`: CUDA when there is one)."""
    where = pick_device(device)
    changes, unchanged = differences(base, tuned, config, unet_targets, te_targets)
    if not changes:
        raise BadRequest(f"no targeted layer differs between {_name(base)} and {_name(tuned)}: nothing to "
                         "extract")
    done: dict[str, Factored] = {key: factor(delta.to(where), rank) for key, delta in changes.items()}
    modules: dict[str, Module] = {key: item.module for key, item in done.items()}
    meta = {**LORA_SPEC, "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
            "modelspec.title": out.stem, "ss_base_model_version": "sdxl_base_v1-0",
            "ss_network_train_unet_only": str(not te_targets), **network_metadata(modules),
            "sdxlc_extract": json.dumps({"base": _name(base), "tuned": _name(tuned), "rank": rank},
                                        sort_keys=True)}
    write_lora(out, modules, meta, DTYPES[dtype])
    return Extracted(out, {k: v.kept_fro for k, v in done.items()},
                     {k: v.full_rank for k, v in done.items()}, unchanged)
