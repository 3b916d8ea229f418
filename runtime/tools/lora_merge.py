"""`sdxlc lora merge`: weighted LoRAs merged into a model's weights (a single-file SDXL checkpoint), or
into one LoRA.

Into a model (kohya's sdxl_merge_lora.py): every module's weight gains `weight * up @ down * alpha / rank`
(runtime/tools/lora_svd.py); every module of every file must find its layer, at its shape. Into one LoRA:
the modules' ranks are concatenated (kohya's `--concat`: the weighted sum is exact, the rank is the sum
of the ranks, alpha = rank), or with `rank` the weighted sum of the changes is factored by SVD to that
rank (kohya's svd_merge_lora.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.formats.safetensors_file import addnet_hash
from runtime.formats.single_file import save_single_file, to_original
from runtime.tools.lora_modules import load_model, weight_modules
from runtime.tools.lora_svd import BadRequest, Module, network_metadata, read_lora, write_lora
from runtime.tools.lycoris_merge import is_lycoris, merge_file

LORA_SPEC = {"modelspec.sai_model_spec": "1.0.0",
             "modelspec.implementation": "https://github.com/Stability-AI/generative-models"}


@dataclass
class Merged:
    path: Path
    modules: int
    kept_fro: dict[str, float]  # per module, when the sum was factored to a rank


def sources(loras: list[tuple[Path, float]]) -> str:
    """The merged files by name, weight and A1111 hash (no local paths)."""
    return json.dumps([{"file": path.name, "weight": weight, "hash": addnet_hash(path)[:12]}
                       for path, weight in loras])


def merge_into_model(model: str, config: Path | None, loras: list[tuple[Path, float]], out: Path,
                     dtype: torch.dtype) -> Merged:
    """The model with the LoRAs added to its weights, written as one single-file checkpoint."""
    pipe = load_model(model, config)
    modules = weight_modules(pipe)
    count = 0
    for path, weight in loras:
        if is_lycoris(path):  # LoHa, LoKr, DoRA: each module's new weight (runtime/tools/lycoris_merge.py)
            count += merge_file(path, weight, modules)
            continue
        lora = read_lora(path)
        missing = sorted(set(lora.modules) - set(modules))
        if missing:
            raise BadRequest(f"{path.name}: {len(missing)} of its {len(lora.modules)} modules have no layer "
                             f"in the model ({', '.join(missing[:2])}): a LoRA of another model")
        with torch.no_grad():
            for key, module in lora.modules.items():
                target = modules[key].weight
                delta = module.delta()
                if delta.shape != target.shape:
                    raise BadRequest(f"{path.name}: {key} changes a weight of shape {tuple(delta.shape)}, "
                                     f"the model's is {tuple(target.shape)}: a LoRA of another model")
                target.add_(delta.to(target.dtype), alpha=weight)
        count += len(lora.modules)
    meta = {**LORA_SPEC, "modelspec.architecture": "stable-diffusion-xl-v1-base",
            "modelspec.title": out.stem, "sdxlc_merged_loras": sources(loras)}
    save_single_file(out, to_original(pipe), meta, dtype)
    return Merged(out, count, {})


def _concat(parts: list[tuple[Module, float]], key: str) -> Module:
    """One module whose change is the weighted sum of the parts' changes: ranks stacked, alpha = rank."""
    downs, ups = [], []
    for module, weight in parts:
        scale = weight * module.alpha / module.rank
        root = abs(scale) ** 0.5
        downs.append(module.down.float() * root)
        ups.append(module.up.float() * (root if scale >= 0 else -root))
    shapes = {(tuple(m.down.shape[1:]), tuple(m.up.shape[:1]) + tuple(m.up.shape[2:])) for m, _ in parts}
    if len(shapes) > 1:
        raise BadRequest(f"{key} has different shapes in the merged files: LoRAs of different models")
    down, up = torch.cat(downs, 0), torch.cat(ups, 1)
    return Module(down, up, float(down.shape[0]))


def merge_loras(loras: list[tuple[Path, float]], out: Path, rank: int | None,
                dtype: torch.dtype | None) -> Merged:
    """The LoRAs as one LoRA file: ranks concatenated, or the sum factored to `rank`."""
    files = [(read_lora(path), weight) for path, weight in loras]
    by_key: dict[str, list[tuple[Module, float]]] = {}
    for lora, weight in files:
        for key, module in lora.modules.items():
            by_key.setdefault(key, []).append((module, weight))
    modules: dict[str, Module] = {}
    kept: dict[str, float] = {}
    for key in sorted(by_key):
        modules[key] = _concat(by_key[key], key)
        if rank is not None:  # the concatenation is exactly the weighted sum: factor it
            done = modules[key].resized(rank)
            modules[key], kept[key] = done.module, done.kept_fro
    first = files[0][0].metadata
    meta = {**LORA_SPEC, "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
            "modelspec.title": out.stem, "sdxlc_merged_loras": sources(loras),
            **network_metadata(modules)}
    if "ss_base_model_version" in first:
        meta["ss_base_model_version"] = first["ss_base_model_version"]
    write_lora(out, modules, meta, dtype or files[0][0].dtype)
    return Merged(out, len(modules), kept)
