"""Full fine-tuning: every weight of the UNet and/or the text encoders, per-block learning rates, the
fused backward pass, and the single-file (and diffusers folder) save.

block_lr groups follow kohya's 23 blocks (runtime/methods/lora.py `block_index`); a 0 leaves the
block's weights frozen and out of the optimizer. The fused backward pass (kohya's
`--fused_backward_pass`) steps Adafactor on each weight from a hook that runs as soon as the weight's
gradient is complete, then drops the gradient, so the gradients of the whole model never exist at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from runtime import RunError
from runtime.formats.single_file import save_single_file, to_original
from runtime.methods.base import TEXT_ENCODERS, Method, training_metadata
from runtime.methods.lora import block_index, sai_name


def attach(pipe: Any, method: dict[str, Any]) -> None:
    """Make every weight of the targeted models trainable, in fp32 (bf16 with `full_bf16`)."""
    dtype = torch.bfloat16 if method["full_bf16"] else torch.float32
    for module in _targets(pipe, method).values():
        module.requires_grad_(True)
        if next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)


def _targets(pipe: Any, method: dict[str, Any]) -> dict[str, torch.nn.Module]:
    names = {"unet": "unet", **TEXT_ENCODERS}
    return {target: getattr(pipe, names[target]) for target in method["targets"]}


def unet_blocks(unet: torch.nn.Module) -> dict[int, list[tuple[str, torch.nn.Parameter]]]:
    """The UNet's parameters by kohya block (0-22)."""
    out: dict[int, list[tuple[str, torch.nn.Parameter]]] = {}
    for name, parameter in unet.named_parameters():
        module = name.rpartition(".")[0]
        out.setdefault(block_index(sai_name(module, unet.config)), []).append((name, parameter))
    return out


def unet_groups(unet: torch.nn.Module, block_lr: list[float] | None, lr: float) -> list[dict[str, Any]]:
    """One group at `lr`, or one per kohya block at its block_lr; blocks at 0 are frozen and left out."""
    if block_lr is None:
        return [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": lr, "block": None}]
    groups = []
    for block, named in sorted(unet_blocks(unet).items()):
        if block_lr[block] == 0:
            for _, parameter in named:
                parameter.requires_grad_(False)
            continue
        groups.append({"params": [p for _, p in named], "lr": block_lr[block], "block": block})
    return groups


def param_groups(pipe: Any, method: dict[str, Any], lr: float) -> list[dict[str, Any]]:
    """The UNet's group(s) and one group per trained text encoder at its own rate."""
    groups: list[dict[str, Any]] = []
    for target, module in _targets(pipe, method).items():
        if target == "unet":
            groups += unet_groups(module, method["block_lr"], lr)
        else:
            params = [p for p in module.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": method[f"lr_{target}"], "block": None, "part": target})
    if not any(group["params"] for group in groups):
        raise RunError("block_lr is 0 for every UNet block and no text encoder is trained: nothing to train")
    return groups


def fuse_backward(optimizer: torch.optim.Optimizer, max_norm: float) -> list[RemovableHandle]:
    """Step each parameter inside the backward pass, as soon as its gradient is accumulated.

    The step runs the optimizer on a one-parameter view of the parameter's group (same settings and
    current learning rate, shared state), clips that gradient alone when `max_norm` > 0 (as kohya
    does), and frees it.
    """
    handles = []
    for index, group in enumerate(optimizer.param_groups):
        for parameter in group["params"]:
            # the group is looked up at each step: loading a checkpoint replaces the group dicts
            def hook(tensor: torch.Tensor, index: int = index) -> None:
                if max_norm > 0:
                    torch.nn.utils.clip_grad_norm_([tensor], max_norm)
                step_one(optimizer, tensor, optimizer.param_groups[index])
                tensor.grad = None

            handles.append(parameter.register_post_accumulate_grad_hook(hook))
    return handles


def step_one(optimizer: torch.optim.Optimizer, parameter: torch.Tensor, group: dict[str, Any]) -> None:
    """One optimizer step on one parameter of `group`."""
    groups = optimizer.param_groups
    optimizer.param_groups = [{**group, "params": [parameter]}]
    try:
        optimizer.step()
    finally:
        optimizer.param_groups = groups


def single_file_state(pipe: Any) -> dict[str, torch.Tensor]:
    """The whole pipeline in the original SDXL single-file layout."""
    return to_original({"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder,
                        "text_encoder_2": pipe.text_encoder_2})


def save(path: Path, pipe: Any, dtype: torch.dtype, meta: dict[str, str]) -> Path:
    return save_single_file(path, single_file_state(pipe), metadata=meta, dtype=dtype)


class FinetuneMethod(Method):
    """`finetune`: every weight of the targeted models, saved as one single-file SDXL checkpoint."""

    def attach(self, pipe: Any) -> None:
        attach(pipe, self.spec)  # fp32, or bf16 with `full_bf16`: no fp32 copy of the trained weights

    def param_groups(self, pipe: Any) -> list[dict[str, Any]]:
        return param_groups(pipe, self.spec, self.plan["optimizer"]["lr"])

    def save(self, path: Path, pipe: Any, step: int, epoch: int, started: float) -> Path:
        meta = training_metadata(self.plan, step, epoch, started, self.lineage)
        return save(path, pipe, self.save_dtype, meta)

    def save_final(self, path: Path, pipe: Any) -> Path | None:
        """With `save diffusers`, the model also as a diffusers folder beside the single file."""
        if not self.spec.get("save_diffusers"):
            return None
        return save_diffusers(path.with_suffix(""), pipe, self.save_dtype)


def save_diffusers(folder: Path, pipe: Any, dtype: torch.dtype) -> Path:
    """The model as a diffusers folder, weights in `dtype`; the live weights are put back untouched."""
    live: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            for parameter in module.parameters():
                live.append((parameter, parameter.data))
                parameter.data = parameter.data.to(dtype)
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        for parameter, data in live:
            parameter.data = data
    return folder
