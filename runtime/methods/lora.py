"""LoRA on the UNet and the text encoders: attach it, group its parameters (kohya blocks, one group per
text encoder), save it in kohya format, and load a kohya file to continue from.

UNet module names are mapped from diffusers to the original SDXL (SAI) layout generically from the UNet
config, so the same code serves the tiny model and full SDXL. The same mapping decides the block of a
parameter for `block_lr` and the key it is saved under. Text-encoder keys are `lora_te1_text_model_…`
(CLIP-L) and `lora_te2_text_model_…` (bigG) whatever prefix the transformers version gives the modules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import safetensors
import torch
from peft import PeftConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from runtime import RunError
from runtime.formats import sai_names
from runtime.formats.safetensors_file import to_bytes as safetensors_bytes
from runtime.methods import lycoris
from runtime.methods.base import TEXT_ENCODERS, Method, keep_fp32, training_metadata
from sdxlc.plan.files import write_atomic

ADAPTER = "default"
BLOCKS = 23  # 0 time/label embed, 1-9 input 0-8, 10-12 middle 0-2, 13-21 output 0-8, 22 out


def _config(method: dict[str, Any], modules: list[str]) -> PeftConfig:
    """LoRA (with DoRA), LoHa or LoKr by the plan's `adapter` (runtime/methods/lycoris.py)."""
    return lycoris.config(method, modules)


def add_lora(unet: torch.nn.Module, method: dict[str, Any]) -> None:
    """Attach a LoRA adapter to the UNet's target modules (gaussian init: it starts as a no-op)."""
    try:
        unet.add_adapter(_config(method, method["unet_modules"]))
    except ValueError as exc:
        raise RunError(f"LoRA targets {method['unet_modules']} match no UNet module: {exc}") from exc


def add_text_lora(encoder: torch.nn.Module, method: dict[str, Any]) -> None:
    """Attach a LoRA adapter to a text encoder's `te_modules` (kohya: attention and MLP projections)."""
    try:
        encoder.add_adapter(_config(method, method["te_modules"]))
    except ValueError as exc:
        raise RunError(f"LoRA targets {method['te_modules']} match no text-encoder module: {exc}") from exc


def attach(pipe: Any, method: dict[str, Any]) -> None:
    """The LoRA of the plan on every targeted model; weights from `init_from` when the plan names one."""
    if "unet" in method["targets"]:
        add_lora(pipe.unet, method)
    for target, attribute in TEXT_ENCODERS.items():
        if target in method["targets"]:
            add_text_lora(getattr(pipe, attribute), method)
    if method.get("init_from"):
        load_kohya(Path(method["init_from"]), named_layers(pipe))


def sai_name(name: str, config: Any) -> str:
    """The original SDXL (SAI) module path of a diffusers UNet module path."""
    try:
        return sai_names.unet_original(name, config.layers_per_block, config.up_block_types)
    except ValueError as exc:
        raise RunError(str(exc)) from exc


def block_index(sai: str) -> int:
    """The kohya block (0-22) of an SAI module path."""
    head, _, rest = sai.partition(".")
    if head in ("time_embed", "label_emb"):
        return 0
    if head == "out":
        return 22
    number = int(rest.partition(".")[0])
    base, size = {"input_blocks": (1, 9), "middle_block": (10, 3), "output_blocks": (13, 9)}[head]
    if number >= size:
        raise RunError(f"{sai} lies outside SDXL's 23 blocks; block_lr needs the SDXL layout")
    return base + number


def lora_layers(unet: torch.nn.Module) -> dict[str, LoraLayer]:
    """The UNet's LoRA-carrying modules by diffusers module path."""
    return {name: module for name, module in unet.named_modules() if lycoris.is_adapter_layer(module)}


def lora_parameters(layer: LoraLayer) -> list[torch.nn.Parameter]:
    """A, B (and DoRA's magnitude), or the LoHa / LoKr factors (runtime/methods/lycoris.py)."""
    return lycoris.parameters(layer)


def text_key(target: str, name: str) -> str:
    """kohya's key of a text-encoder module: `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`."""
    return f"lora_{target}_text_model_" + name.removeprefix("text_model.").replace(".", "_")


def named_layers(pipe: Any) -> dict[str, LoraLayer]:
    """Every LoRA layer of the pipeline by its kohya key (without `.lora_down.weight`)."""
    out = {"lora_unet_" + sai_name(name, pipe.unet.config).replace(".", "_"): layer
           for name, layer in lora_layers(pipe.unet).items()}
    for target, attribute in TEXT_ENCODERS.items():
        layers = lora_layers(getattr(pipe, attribute))
        out.update({text_key(target, name): layer for name, layer in layers.items()})
    return out


def text_param_groups(pipe: Any, method: dict[str, Any]) -> list[dict[str, Any]]:
    """One optimizer group per trained text encoder, at its own learning rate."""
    groups = []
    for target, attribute in TEXT_ENCODERS.items():
        if target in method["targets"]:
            layers = lora_layers(getattr(pipe, attribute)).values()
            params = [p for layer in layers for p in lora_parameters(layer)]
            groups.append({"params": params, "lr": method[f"lr_{target}"], "block": None, "part": target})
    return groups


def param_groups(unet: torch.nn.Module, method: dict[str, Any], lr: float) -> list[dict[str, Any]]:
    """Optimizer groups: one group at `lr`, or one per kohya block when block_lr is given.

    Blocks whose block_lr is 0 are frozen and left out of the optimizer.
    """
    layers = lora_layers(unet)
    params = [p for layer in layers.values() for p in lora_parameters(layer)]
    if method["block_lr"] is None:
        return [{"params": params, "lr": lr, "block": None}]
    by_block: dict[int, list[torch.nn.Parameter]] = {}
    for name, layer in layers.items():
        block = block_index(sai_name(name, unet.config))
        by_block.setdefault(block, []).extend(lora_parameters(layer))
    groups = []
    for block in sorted(by_block):
        block_lr = method["block_lr"][block]
        if block_lr == 0:
            for p in by_block[block]:
                p.requires_grad_(False)
            continue
        groups.append({"params": by_block[block], "lr": block_lr, "block": block})
    if not groups:
        raise RunError("block_lr is 0 for every block that holds LoRA layers: nothing to train")
    return groups


_KEY_BLOCK = re.compile(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")


def key_block(key: str) -> int | None:
    """The kohya block (0-22) of a kohya UNet key; None for a text-encoder key."""
    found = _KEY_BLOCK.match(key)
    if found is None:
        return None
    return {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}[found[1]] + int(found[2])


def kohya_state_dict(
    model: Any, dtype: torch.dtype, leave_out: Collection[int] = ()
) -> dict[str, torch.Tensor]:
    """The LoRA as kohya keys: lora_unet_<SAI path with _> (and lora_te1_/lora_te2_ keys for a pipeline)
    .lora_down.weight / .lora_up.weight / .alpha. `model`: a UNet, or a pipeline for every part.
    The layers of the kohya blocks in `leave_out` (the plan's `method.unsaved_blocks`) are not saved."""
    if isinstance(model, torch.nn.Module):
        layers = {"lora_unet_" + sai_name(name, model.config).replace(".", "_"): layer
                  for name, layer in lora_layers(model).items()}
    else:
        layers = named_layers(model)
    state: dict[str, torch.Tensor] = {}
    for key, layer in layers.items():
        if leave_out and key_block(key) in leave_out:
            continue
        state.update(lycoris.layer_state(key, layer, dtype))  # LoRA, DoRA, LoHa or LoKr keys
    return state


def load_kohya(path: Path, layers: dict[str, LoraLayer]) -> None:
    """Copy a kohya LoRA file's weights into the attached layers; every key must find its layer."""
    try:
        state = load_file(str(path))
    except (OSError, safetensors.SafetensorError) as exc:
        raise RunError(f"cannot read the LoRA to continue from, {path}: {exc}") from exc
    modules = lycoris.file_modules(state)
    held = {key_block(key) for key in modules}
    # a UNet block the file leaves out entirely (frozen at block_lr 0 when it was trained) adds nothing:
    # its layers keep their no-op start
    left_out = {key for key in set(layers) - modules if key_block(key) not in held | {None}}
    if modules != set(layers) - left_out:
        missing, extra = sorted(set(layers) - left_out - modules), sorted(modules - set(layers))
        raise RunError(f"{path} does not fit the plan's LoRA: {len(missing)} layers have no weights there "
                       f"({', '.join(missing[:2])}), {len(extra)} of its layers have no place "
                       f"({', '.join(extra[:2])})")
    with torch.no_grad():
        for key, layer in layers.items():
            if key in left_out:
                continue
            lycoris.load_layer(path, key, layer, state)


def metadata(
    plan: dict[str, Any], step: int, epoch: int, started: float, lineage: list[str] | None = None
) -> dict[str, str]:
    """kohya `ss_*` and `modelspec.*` metadata of a LoRA file, plus the plan that produced it."""
    method = plan["method"]
    network_args = {"conv_dim": str(method["rank"]), "conv_alpha": str(method["alpha"])} \
        if "conv" in method["modules"] else {}
    network_args.update(block_lr_weights(method["block_lr"], plan["optimizer"]["lr"]))
    network_args.update(lycoris.network_args(method))
    return {
        "ss_network_module": lycoris.network_module(method),
        "ss_network_dim": str(method["rank"]),
        "ss_network_alpha": str(method["alpha"]),
        "ss_network_dropout": str(method["dropout"]),
        **({"ss_network_args": json.dumps(network_args)} if network_args else {}),
        "ss_unet_lr": str(plan["optimizer"]["lr"]) if "unet" in method["targets"] else "None",
        "ss_text_encoder_lr": text_encoder_lr(method),
        "ss_network_train_unet_only": str(method["targets"] == ["unet"]),
        "ss_network_weights": Path(method["init_from"]).name if method["init_from"] else "None",
        **training_metadata(plan, step, epoch, started, lineage),
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    }


def text_encoder_lr(method: dict[str, Any]) -> str:
    """kohya's `ss_text_encoder_lr`: one rate when both encoders train at it (`--text_encoder_lr 1e-5`),
    else its per-encoder list `[te1, te2]` (SDXL's `--text_encoder_lr 1e-5 2e-5`; 0.0 for an encoder
    that does not train); `None` when no encoder trains."""
    rates = [method["lr_te1"], method["lr_te2"]]
    if rates == [None, None]:
        return "None"
    if rates[0] == rates[1]:
        return str(rates[0])
    return str([0.0 if rate is None else float(rate) for rate in rates])


def block_lr_weights(block_lr: list[float] | None, lr: float) -> dict[str, str]:
    """`block_lr` as kohya's LoRA network args: `down_lr_weight` (input blocks 0-8, kohya blocks 1-9),
    `mid_lr_weight` (10-12) and `up_lr_weight` (output blocks 0-8, 13-21), each a multiplier of the UNet
    learning rate; blocks 0 and 22 hold no LoRA layers."""
    if block_lr is None:
        return {}

    def weights(first: int, count: int) -> str:
        return ",".join(f"{round(rate / lr, 8):g}" for rate in block_lr[first:first + count])

    return {"down_lr_weight": weights(1, 9), "mid_lr_weight": weights(10, 3), "up_lr_weight": weights(13, 9)}


def save_lora(path: Path, model: Any, dtype: torch.dtype, meta: dict[str, str],
              leave_out: Collection[int] = ()) -> Path:
    """The LoRA of a UNet, or of every part of a pipeline, as one kohya file, without the layers of the
    kohya blocks in `leave_out`."""
    write_atomic(path, safetensors_bytes(kohya_state_dict(model, dtype, leave_out), metadata=meta))
    return path


class LoraMethod(Method):
    """`lora`: LoRA layers on the targeted models, kept in fp32, saved as one kohya file."""

    def attach(self, pipe: Any) -> None:
        attach(pipe, self.spec)
        keep_fp32(pipe)

    def param_groups(self, pipe: Any) -> list[dict[str, Any]]:
        """block_lr groups (or one group) for the UNet, one group per trained text encoder."""
        unet = param_groups(pipe.unet, self.spec, self.plan["optimizer"]["lr"]) \
            if "unet" in self.spec["targets"] else []
        return unet + text_param_groups(pipe, self.spec)

    def save(self, path: Path, pipe: Any, step: int, epoch: int, started: float) -> Path:
        meta = metadata(self.plan, step, epoch, started, self.lineage)
        return save_lora(path, pipe, self.save_dtype, meta, self.spec["unsaved_blocks"])


def prune_checkpoints(folder: Path, name: str, keep: int) -> None:
    """Keep only the newest `keep` step files `<name>-stepNNNNNN.safetensors`."""
    pattern = re.compile(re.escape(name) + r"-step(\d{6,})\.safetensors")
    found = sorted((int(m[1]), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))
    for _, old in found[:-keep]:
        old.unlink()
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
