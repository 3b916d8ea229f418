"""LoHa, LoKr and DoRA for the `lora` method (docs/METHODS.md, "LoHa, LoKr and DoRA"): the peft config of
the plan's `adapter`, the trained tensors of a layer, and their LyCORIS/kohya names in the saved file.

peft trains them (LoHaConfig, LoKrConfig, LoraConfig(use_dora=True)); the file holds the keys ComfyUI and
A1111 read (comfy/weight_adapter/loha.py, lokr.py, lora.py), under the same module prefixes as a LoRA
(`lora_unet_<SAI path>`, `lora_te1_…`, `lora_te2_…`):

  loha   .hada_w1_a .hada_w1_b .hada_w2_a .hada_w2_b .alpha   ΔW = (w1a·w1b) ⊙ (w2a·w2b) · alpha/rank
  lokr   .lokr_w1 (or _a/_b) .lokr_w2 (or _a/_b) .alpha     ΔW = w1 ⊗ w2 · alpha/rank
  dora   .dora_scale, (out, 1[, 1, 1]): the magnitude of each output row (LyCORIS `wd_on_output`)

A LoKr layer whose w1 and w2 are both full matrices shows no rank: readers scale it by 1 (LyCORIS forces
alpha = rank there, ComfyUI takes no alpha), so its alpha/rank is folded into `lokr_w2` when saved and
taken back out when loaded. Conv layers hold the flattened (out, in·k·k) products, as LyCORIS without
Tucker does; a reader reshapes ΔW to the weight's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, PeftConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.lycoris_utils import LycorisLayer

from runtime import RunError

ADAPTER = "default"
FILE_MARKS = {"lora_down.weight": "lora", "hada_w1_a": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr"}


def config(method: dict[str, Any], modules: list[str]) -> PeftConfig:
    """The peft config of the plan's adapter on `modules`; every adapter starts as a no-op."""
    adapter, rank, alpha = method.get("adapter", "lora"), method["rank"], method["alpha"]
    if adapter == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=modules, init_weights=True)
    if adapter == "lokr":
        # LyCORIS' start: w1 random, w2 (or w2_b) zero
        return LoKrConfig(r=rank, alpha=alpha, target_modules=modules, decompose_factor=method["factor"],
                          init_weights="lycoris")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=method["dropout"], target_modules=modules,
                      init_lora_weights="gaussian", use_dora=method.get("dora", False))


def is_adapter_layer(module: torch.nn.Module) -> bool:
    """Whether a module carries a LoRA, LoHa or LoKr adapter."""
    return isinstance(module, LoraLayer | LycorisLayer)


def tensors(layer: Any) -> dict[str, torch.nn.Parameter]:
    """The layer's trained tensors by the suffix of their key in the saved file."""
    if isinstance(layer, LoraLayer):
        out = {"lora_down.weight": layer.lora_A[ADAPTER].weight,
               "lora_up.weight": layer.lora_B[ADAPTER].weight}
        if ADAPTER in layer.lora_magnitude_vector:
            out["dora_scale"] = layer.lora_magnitude_vector[ADAPTER].weight
        return out
    return {name: getattr(layer, name)[ADAPTER] for name in layer.adapter_layer_names
            if ADAPTER in getattr(layer, name)}


def parameters(layer: Any) -> list[torch.nn.Parameter]:
    """Every trained parameter of a layer's adapter (A and B, LoHa's or LoKr's factors, DoRA's magnitude)."""
    return list(tensors(layer).values())


def alpha(layer: Any) -> float:
    return float(layer.lora_alpha[ADAPTER] if isinstance(layer, LoraLayer) else layer.alpha[ADAPTER])


def _folded(layer: Any) -> bool:
    """A LoKr layer of two full matrices: its scale is folded into `lokr_w2` in the file."""
    held = tensors(layer)
    return "lokr_w1" in held and "lokr_w2" in held


def _out_shape(layer: Any) -> tuple[int, ...]:
    weight = layer.get_base_layer().weight
    return (weight.shape[0], *[1] * (weight.dim() - 1))


def to_file(layer: Any, suffix: str, value: torch.Tensor) -> torch.Tensor:
    """A trained tensor as the file holds it."""
    if suffix == "dora_scale":
        return value.reshape(_out_shape(layer))
    if suffix == "lokr_w2" and _folded(layer):
        return value * layer.scaling[ADAPTER]
    return value


def from_file(layer: Any, suffix: str, value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A tensor of the file as the layer holds it (the inverse of `to_file`)."""
    if suffix == "dora_scale":
        value = value.reshape(param.shape)
    elif suffix == "lokr_w2" and _folded(layer):
        value = value / layer.scaling[ADAPTER]
    return value


def layer_state(key: str, layer: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One layer's keys in the saved file: its tensors and `.alpha`."""
    state = {f"{key}.{suffix}": to_file(layer, suffix, value.detach()).to("cpu", dtype).contiguous()
             for suffix, value in tensors(layer).items()}
    state[f"{key}.alpha"] = torch.tensor(alpha(layer), dtype=dtype)
    return state


def file_modules(state: dict[str, torch.Tensor]) -> set[str]:
    """The module keys of a LoRA, LoHa or LoKr file."""
    return {key.rsplit(".", 1)[0] if not key.endswith(".weight") else key.rsplit(".", 2)[0]
            for key in state if key.split(".", 1)[-1] in FILE_MARKS}


def load_layer(path: Path, key: str, layer: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy one module's tensors of a file into the attached layer; a missing tensor or another shape is
    a RunError (the file holds another adapter, rank or factor than the plan)."""
    for suffix, param in tensors(layer).items():
        value = state.get(f"{key}.{suffix}")
        if value is None:
            raise RunError(f"{path}: {key} has no `{suffix}`: the file holds another adapter than the plan's "
                           f"({type(layer).__module__.split('.')[-2]})")
        expected = to_file(layer, suffix, param.detach()).shape
        if value.shape != expected:
            raise RunError(f"{path}: {key}.{suffix} has shape {tuple(value.shape)}, the plan's layer "
                           f"{tuple(expected)}")
        with torch.no_grad():
            value = from_file(layer, suffix, value.to(param.device, torch.float32), param)
            param.copy_(value.to(param.dtype))


def network_module(method: dict[str, Any]) -> str:
    """kohya's `ss_network_module`: `networks.lora` for a plain LoRA, `lycoris.kohya` for LoHa, LoKr and
    DoRA (kohya's own LoRA network has no DoRA)."""
    return "networks.lora" if method["adapter"] == "lora" and not method["dora"] else "lycoris.kohya"


def network_args(method: dict[str, Any]) -> dict[str, str]:
    """LyCORIS' network args of the file: `algo`, LoKr's `factor`, and `dora_wd` with `wd_on_output`."""
    if network_module(method) == "networks.lora":
        return {}
    args = {"algo": method["adapter"]}
    if method["adapter"] == "lokr":
        args["factor"] = str(method["factor"])
    if method["dora"]:
        args.update({"dora_wd": "True", "wd_on_output": "True"})
    return args
