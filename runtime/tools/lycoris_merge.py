"""`sdxlc lora merge` of a LoHa, LoKr or DoRA file into a model: each module's new weight, by the formulas
ComfyUI applies (comfy/weight_adapter/loha.py, lokr.py, lora.py and `weight_decompose`):

  loha   ΔW = (w1a·w1b) ⊙ (w2a·w2b) · alpha / rank
  lokr   ΔW = w1 ⊗ w2 · alpha / rank (w1 = w1a·w1b, w2 = w2a·w2b when decomposed; no rank shown: scale 1)
  lora   ΔW = up·down · alpha / rank
  DoRA   W' = dora_scale · (W + ΔW) / ‖W + ΔW‖, the norm over each output row (`dora_scale` of shape
         (out, 1, …), LyCORIS `wd_on_output`) or each input column ((1, in, …)); merged at weight w:
         W + w · (W' − W)

Plain kohya LoRA files are merged by runtime/tools/lora_merge.py itself. Resizing, extracting and
merging into one LoRA need a low-rank product, which LoHa, LoKr and DoRA are not: runtime/tools/lora_svd.py
refuses them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from runtime.tools.lora_svd import BadRequest

Change = Callable[[torch.Tensor], torch.Tensor]  # the module's weight (fp32) → its new weight
MARKS = ("hada_w1_a", "lokr_w1", "lokr_w1_a", "lora_down.weight")
UNSUPPORTED = ("hada_t1", "lokr_t2")  # Tucker (CP) decompositions of conv layers: sdxlc never writes them


def _groups(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), "pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as exc:
        raise BadRequest(f"cannot read {path} as a safetensors file: {exc}") from exc
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        module, _, suffix = key.partition(".")
        groups.setdefault(module, {})[suffix] = value.float()
    return groups


def is_lycoris(path: Path) -> bool:
    """Whether a file holds LoHa, LoKr or DoRA modules (anything but a plain kohya LoRA): its key names
    tell, no tensor is read."""
    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
    except (OSError, SafetensorError) as exc:
        raise BadRequest(f"cannot read {path} as a safetensors file: {exc}") from exc
    suffixes = (key.partition(".")[2] for key in keys)
    return any(suffix.startswith(("hada_", "lokr_")) or suffix == "dora_scale" for suffix in suffixes)


def _delta(key: str, t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    alpha = t["alpha"].item() if "alpha" in t else None
    if any(name in t for name in UNSUPPORTED):
        raise BadRequest(f"{key}: Tucker-decomposed (`hada_t1` / `lokr_t2`) layers are not supported")
    if "hada_w1_a" in t:
        rank = t["hada_w1_b"].shape[0]
        product = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return product.reshape(shape) * ((alpha or rank) / rank)
    if "lora_down.weight" in t:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        rank = down.shape[0]
        return (up.flatten(1) @ down.flatten(1)).reshape(shape) * ((alpha or rank) / rank)
    rank = None
    w1 = t.get("lokr_w1")
    if w1 is None:
        rank, w1 = t["lokr_w1_b"].shape[0], t["lokr_w1_a"] @ t["lokr_w1_b"]
    w2 = t.get("lokr_w2")
    if w2 is None:
        rank, w2 = t["lokr_w2_b"].shape[0], t["lokr_w2_a"] @ t["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = (alpha or rank) / rank if rank is not None else 1.0
    return torch.kron(w1, w2).reshape(shape) * scale


def _decomposed(scale: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """DoRA: `merged` with each output row (or input column) rescaled to the file's magnitude."""
    if scale.shape[0] == merged.shape[0] and scale.numel() == merged.shape[0]:
        norm = merged.flatten(1).norm(dim=1).reshape(merged.shape[0], *[1] * (merged.dim() - 1))
        return merged * scale.reshape(norm.shape) / norm
    columns = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
    norm = columns.reshape(1, merged.shape[1], *[1] * (merged.dim() - 2))
    if scale.numel() != norm.numel():
        raise BadRequest(f"dora_scale of shape {tuple(scale.shape)} fits neither axis of a weight "
                         f"{tuple(merged.shape)}")
    return merged * scale.reshape(norm.shape) / norm


def changes(path: Path) -> dict[str, Change]:
    """Each module's change of a LoHa, LoKr or DoRA file, by kohya key."""
    found: dict[str, Change] = {}
    for key, parts in _groups(path).items():
        if not any(mark in parts for mark in MARKS):
            raise BadRequest(f"{path.name}: {key} holds {sorted(parts)}, no LoRA, LoHa or LoKr module")
        if not all(bool(torch.isfinite(value).all()) for value in parts.values()):
            raise BadRequest(f"{path.name}: {key} holds NaN or infinite values")
        found[key] = _change(key, parts)
    return found


def _change(key: str, parts: dict[str, torch.Tensor]) -> Change:
    def apply(weight: torch.Tensor) -> torch.Tensor:
        try:
            merged = weight + _delta(key, parts, weight.shape)
        except (RuntimeError, KeyError) as exc:  # a missing part, or shapes that do not multiply or fit
            raise BadRequest(f"{key}: its tensors {sorted(parts)} do not make a change of a weight "
                             f"{tuple(weight.shape)} ({exc}): a file of another model") from exc
        return _decomposed(parts["dora_scale"], merged) if "dora_scale" in parts else merged

    return apply


def merge_file(path: Path, weight: float, modules: dict[str, torch.nn.Module]) -> int:
    """Add a LoHa, LoKr or DoRA file at `weight` to the model's modules (by kohya key); the module count."""
    found = changes(path)
    missing = sorted(set(found) - set(modules))
    if missing:
        raise BadRequest(f"{path.name}: {len(missing)} of its {len(found)} modules have no layer in the "
                         f"model ({', '.join(missing[:2])}): a LoRA of another model")
    with torch.no_grad():
        for key, change in found.items():
            target = modules[key].weight
            base = target.float()
            target.copy_((base + weight * (change(base) - base)).to(target.dtype))
    return len(found)
