"""Per training method (docs/METHODS.md): what becomes trainable, its optimizer groups, what a
checkpoint stores, and how the result is saved.

  lora       LoRA layers on the UNet and/or text encoders (runtime/lora.py) → one kohya file
  finetune   every weight of the targeted models (runtime/finetune.py) → one single-file SDXL checkpoint
  embedding  new token rows of both encoders (runtime/embedding.py) → {"clip_l", "clip_g"}

Trainable parameters are named as the UNet names them (so LoRA checkpoints keep their names) and with a
`text_encoder.` / `text_encoder_2.` prefix for the encoders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from runtime.methods import embedding, finetune, lora
from runtime.model.load import DTYPES, Models

ENCODERS = ("text_encoder", "text_encoder_2")


def attach(plan: dict[str, Any], loaded: Models) -> None:
    """Make the method's parameters trainable; they are kept in fp32 (bf16 for a `full_bf16` fine-tune)."""
    method, pipe = plan["method"], loaded.pipe
    if method["kind"] == "finetune":
        finetune.attach(pipe, method)
        return
    if method["kind"] == "embedding":
        embedding.attach(pipe, method)
    else:
        lora.attach(pipe, method)
    for module in (pipe.unet, *(getattr(pipe, name) for name in ENCODERS)):
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()


def trains_text(plan: dict[str, Any]) -> bool:
    """Whether the text encoders' outputs depend on trained parameters (they must run with gradients)."""
    return bool({"te1", "te2"} & set(plan["method"]["targets"]))


def text_encoders(plan: dict[str, Any], pipe: Any) -> list[torch.nn.Module]:
    """The text encoders holding trained parameters (train mode while training)."""
    targets = plan["method"]["targets"]
    return [getattr(pipe, name) for name, t in zip(ENCODERS, ("te1", "te2"), strict=True) if t in targets]


def param_groups(plan: dict[str, Any], pipe: Any) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: block_lr groups for the UNet, one per trained text encoder."""
    method, lr = plan["method"], plan["optimizer"]["lr"]
    if method["kind"] == "finetune":
        return finetune.param_groups(pipe, method, lr)
    if method["kind"] == "embedding":
        return embedding.param_groups(pipe, lr)
    groups = lora.param_groups(pipe.unet, method, lr) if "unet" in method["targets"] else []
    return groups + lora.text_param_groups(pipe, method)


def trainable_state(pipe_or_unet: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters by name: what a checkpoint stores."""
    if isinstance(pipe_or_unet, torch.nn.Module):
        return {name: p for name, p in pipe_or_unet.named_parameters() if p.requires_grad}
    state = trainable_state(pipe_or_unet.unet)
    for name in ENCODERS:
        module = getattr(pipe_or_unet, name)
        state.update({f"{name}.{key}": p for key, p in module.named_parameters() if p.requires_grad})
    return state


def caption_map(plan: dict[str, Any]) -> Callable[[list[str]], list[str]] | None:
    """How the method rewrites a batch's captions (an embedding's token and templates), or None."""
    method = plan["method"]
    return embedding.caption_map(method) if method["kind"] == "embedding" else None


def save(path: Path, plan: dict[str, Any], pipe: Any, step: int, epoch: int, started: float) -> Path:
    """The method's artifact at this step, in the plan's save dtype."""
    kind, dtype = plan["method"]["kind"], DTYPES[plan["save"]["dtype"]]
    if kind == "finetune":
        meta = lora.training_metadata(plan, step, epoch, started)
        return finetune.save(path, pipe, dtype, meta)
    if kind == "embedding":
        meta = {**lora.training_metadata(plan, step, epoch, started),
                "modelspec.architecture": "stable-diffusion-xl-v1-base/textual-inversion",
                "ss_token_string": plan["method"]["token"], "ss_num_vectors": str(plan["method"]["vectors"])}
        return embedding.save(path, pipe, dtype, meta)
    meta = lora.metadata(plan, step, epoch, started)
    return lora.save_lora(path, pipe, dtype, meta)
