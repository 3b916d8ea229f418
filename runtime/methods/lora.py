"""LoRA on the UNet and the text encoders: attach it, group its parameters (kohya blocks, one group per
text encoder), save it in kohya format, and load a kohya file to continue from.

UNet module names are mapped from diffusers to the original SDXL (SAI) layout generically from the UNet
config, so the same code serves the tiny model and full SDXL. The same mapping decides the block of a
parameter for `block_lr` and the key it is saved under. Text-encoder keys are `lora_te1_text_model_…`
(CLIP-L) and `lora_te2_text_model_…` (bigG) whatever prefix the transformers version gives the modules.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import safetensors
import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from runtime import RunError
from runtime.formats import sai_names
from sdxlc.plan.contract import canonical

ADAPTER = "default"
BLOCKS = 23  # 0 time/label embed, 1-9 input 0-8, 10-12 middle 0-2, 13-21 output 0-8, 22 out

TEXT_ENCODERS = {"te1": "text_encoder", "te2": "text_encoder_2"}  # plan target → pipeline attribute


def _config(method: dict[str, Any], modules: list[str]) -> LoraConfig:
    return LoraConfig(
        r=method["rank"], lora_alpha=method["alpha"], lora_dropout=method["dropout"],
        target_modules=modules, init_lora_weights="gaussian",
    )


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
    return {name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}


def lora_parameters(layer: LoraLayer) -> list[torch.nn.Parameter]:
    return [*layer.lora_A[ADAPTER].parameters(), *layer.lora_B[ADAPTER].parameters()]


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


def kohya_state_dict(model: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The LoRA as kohya keys: lora_unet_<SAI path with _> (and lora_te1_/lora_te2_ keys for a pipeline)
    .lora_down.weight / .lora_up.weight / .alpha. `model`: a UNet, or a pipeline for every part."""
    if isinstance(model, torch.nn.Module):
        layers = {"lora_unet_" + sai_name(name, model.config).replace(".", "_"): layer
                  for name, layer in lora_layers(model).items()}
    else:
        layers = named_layers(model)
    state: dict[str, torch.Tensor] = {}
    for key, layer in layers.items():
        state[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER].weight.detach().to("cpu", dtype).contiguous()
        state[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER].weight.detach().to("cpu", dtype).contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER]), dtype=dtype)
    return state


def load_kohya(path: Path, layers: dict[str, LoraLayer]) -> None:
    """Copy a kohya LoRA file's weights into the attached layers; every key must find its layer."""
    try:
        state = load_file(str(path))
    except (OSError, safetensors.SafetensorError) as exc:
        raise RunError(f"cannot read the LoRA to continue from, {path}: {exc}") from exc
    modules = {key.removesuffix(".lora_down.weight") for key in state if key.endswith(".lora_down.weight")}
    if modules != set(layers):
        missing, extra = sorted(set(layers) - modules), sorted(modules - set(layers))
        raise RunError(f"{path} does not fit the plan's LoRA: {len(missing)} layers have no weights there "
                       f"({', '.join(missing[:2])}), {len(extra)} of its layers have no place "
                       f"({', '.join(extra[:2])})")
    with torch.no_grad():
        for key, layer in layers.items():
            for part, weight in (("lora_down", layer.lora_A[ADAPTER].weight),
                                 ("lora_up", layer.lora_B[ADAPTER].weight)):
                value = state[f"{key}.{part}.weight"]
                if value.shape != weight.shape:
                    raise RunError(f"{path}: {key}.{part} has shape {tuple(value.shape)}, "
                                   f"the plan's layer {tuple(weight.shape)}")
                weight.copy_(value.to(weight.device, weight.dtype))


def metadata(plan: dict[str, Any], step: int, epoch: int, started: float) -> dict[str, str]:
    """kohya `ss_*` and `modelspec.*` metadata of a LoRA file, plus the plan that produced it."""
    method = plan["method"]
    lrs = [method[f"lr_{t}"] for t in ("te1", "te2") if method[f"lr_{t}"] is not None]
    network_args = {"conv_dim": str(method["rank"]), "conv_alpha": str(method["alpha"])} \
        if "conv" in method["modules"] else {}
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(method["rank"]),
        "ss_network_alpha": str(method["alpha"]),
        "ss_network_dropout": str(method["dropout"]),
        **({"ss_network_args": json.dumps(network_args)} if network_args else {}),
        "ss_unet_lr": str(plan["optimizer"]["lr"]) if "unet" in method["targets"] else "None",
        "ss_text_encoder_lr": str(lrs[0]) if lrs else "None",
        "ss_network_train_unet_only": str(method["targets"] == ["unet"]),
        "ss_network_weights": str(method["init_from"]) if method["init_from"] else "None",
        **training_metadata(plan, step, epoch, started),
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    }


def training_metadata(plan: dict[str, Any], step: int, epoch: int, started: float) -> dict[str, str]:
    """kohya's `ss_*` keys of the training run (optimizer, schedule, noise and loss settings), the
    `modelspec.*` keys every saved file carries, and the plan."""
    data, training, optimizer = plan["data"], plan["training"], plan["optimizer"]
    args = " ".join(f"{key}={value}" for key, value in sorted(optimizer["args"].items()))
    snr = training["snr_gamma"]
    return {
        "ss_base_model_version": plan["model"]["base_model_version"],
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_learning_rate": str(plan["optimizer"]["lr"]),
        "ss_lr_scheduler": plan["schedule"]["name"],
        "ss_resolution": f"({data['resolution']}, {data['resolution']})",
        "ss_batch_size_per_device": str(plan["training"]["batch_size"]),
        "ss_gradient_accumulation_steps": str(plan["training"]["accumulate"]),
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(time.time()),
        "ss_seed": str(plan["training"]["seed"]),
        "ss_max_train_steps": str(training["total_steps"]),
        "ss_mixed_precision": plan["precision"]["mixed"],
        "ss_gradient_checkpointing": str(training["gradient_checkpointing"]),
        "ss_max_grad_norm": str(optimizer["max_grad_norm"]),
        "ss_lr_warmup_steps": str(plan["schedule"]["warmup_steps"]),
        "ss_optimizer": f"{optimizer['name']}({args})" if args else optimizer["name"],
        "ss_noise_offset": str(training["noise_offset"]),
        "ss_multires_noise_iterations": str(training["multires_iterations"]),
        "ss_multires_noise_discount": str(training["multires_discount"]),
        "ss_ip_noise_gamma": str(training["input_perturbation"]),
        "ss_min_snr_gamma": "None" if snr is None else str(snr),
        "ss_debiased_estimation": str(training["debiased"]),
        "ss_zero_terminal_snr": str(training["zero_terminal_snr"]),
        "ss_loss_type": training["loss"],
        "ss_huber_c": str(training["huber_c"]),
        "ss_cache_latents": str(data["cache"]["latents"]),
        **_dataset_metadata(data["datasets"]),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": plan["output"]["name"],
        "sdxlc_plan_hash": plan["plan_hash"],
        "sdxlc_plan": canonical(plan),
    }


def _dataset_metadata(datasets: list[dict[str, Any]]) -> dict[str, str]:
    """kohya's dataset counts: training samples per epoch, regularization images, their loss weight."""
    reg = [d for d in datasets if d["regularization"]]
    return {
        "ss_num_train_images": str(sum(d["samples"] for d in datasets if not d["regularization"])),
        "ss_num_reg_images": str(sum(d["images"] for d in reg)),
        "ss_prior_loss_weight": str(reg[0]["loss_weight"] if reg else 1.0),
    }


def write_atomic(path: Path, payload: bytes) -> None:
    """Write a file so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_lora(path: Path, model: Any, dtype: torch.dtype, meta: dict[str, str]) -> Path:
    """The LoRA of a UNet, or of every part of a pipeline, as one kohya file."""
    write_atomic(path, safetensors_bytes(kohya_state_dict(model, dtype), metadata=meta))
    return path


def prune_checkpoints(folder: Path, name: str, keep: int) -> None:
    """Keep only the newest `keep` step files `<name>-stepNNNNNN.safetensors`."""
    pattern = re.compile(re.escape(name) + r"-step(\d{6,})\.safetensors")
    found = sorted((int(m[1]), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))
    for _, old in found[:-keep]:
        old.unlink()
