"""The protocol every training method implements, and what the methods share.

A method is one class (its module: `lora.py`, `finetune.py`, `embedding.py`) built from the plan and
registered under its `method.kind` in `runtime.methods.registry`. The runtime asks it, and only it:

  attach(pipe)         make the method's parameters trainable (new layers, tokens or whole models)
  param_groups(pipe)   the optimizer's parameter groups, each with its learning rate
  trainable_state(pipe) what a training-state checkpoint stores (by default: every trained parameter)
  trains_text          whether the text encoders' outputs depend on trained parameters
  text_encoders(pipe)  the encoders that hold trained parameters (train mode while training)
  caption_map()        how the method rewrites a batch's captions, or None
  before_forward(pipe, batch) what the method does with a batch right before the UNet runs (LLLite)
  save(path, pipe, step, epoch, started)  the method's artifact at this step, in the plan's save dtype
  save_final(path, pipe) what else the method writes once at the end (a fine-tune's diffusers folder)

Trainable parameters are named as the UNet names them (so LoRA checkpoints keep their names) and with a
`text_encoder.` / `text_encoder_2.` prefix for the encoders.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from runtime import timestamp
from runtime.methods.metadata import data_metadata, model_metadata, plan_metadata
from runtime.model.load import DTYPES

TEXT_ENCODERS = {"te1": "text_encoder", "te2": "text_encoder_2"}  # plan target → pipeline attribute

CaptionMap = Callable[[list[str]], list[str]]


class Method(ABC):
    """One training method, set up from a plan; the plan's `method` object is `self.spec`."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.spec: dict[str, Any] = plan["method"]
        # the plans that trained these weights, oldest first: a resumed run adds its own (`sdxlc_lineage`)
        self.lineage: list[str] = [plan["plan_hash"]]

    @abstractmethod
    def attach(self, pipe: Any) -> None:
        """Make the method's parameters trainable on the pipeline."""

    @abstractmethod
    def param_groups(self, pipe: Any) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (`params`, `lr`, `block`, and `part` for a text encoder)."""

    @abstractmethod
    def save(self, path: Path, pipe: Any, step: int, epoch: int, started: float) -> Path:
        """Write the method's artifact at this step; returns the path written."""

    def save_final(self, path: Path, pipe: Any) -> Path | None:
        """Anything the method writes once at the end besides its artifact at `path` (a fine-tune's
        diffusers folder); the folder or file written, or None."""
        return None

    def trainable_state(self, pipe: Any) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the trained parameters by name."""
        return trainable_state(pipe)

    @property
    def trains_text(self) -> bool:
        """Whether the text encoders' outputs depend on trained parameters (they run with gradients)."""
        return bool(set(TEXT_ENCODERS) & set(self.spec["targets"]))

    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        """The text encoders holding trained parameters."""
        targets = self.spec["targets"]
        return [getattr(pipe, name) for target, name in TEXT_ENCODERS.items() if target in targets]

    def caption_map(self) -> CaptionMap | None:
        """How the method rewrites a batch's captions; None leaves them as they are."""
        return None

    def before_forward(self, pipe: Any, batch: Any) -> None:  # noqa: B027 (a hook: by default nothing)
        """Called with each training batch right before the UNet runs on it (LLLite hands the network
        the batch's control image); by default nothing."""

    @property
    def save_dtype(self) -> torch.dtype:
        return DTYPES[self.plan["save"]["dtype"]]


def trainable_state(pipe_or_unet: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, of a pipeline (encoders prefixed) or of a UNet alone."""
    if isinstance(pipe_or_unet, torch.nn.Module):
        return {name: p for name, p in pipe_or_unet.named_parameters() if p.requires_grad}
    state = trainable_state(pipe_or_unet.unet)
    for name in TEXT_ENCODERS.values():
        module = getattr(pipe_or_unet, name)
        state.update({f"{name}.{key}": p for key, p in module.named_parameters() if p.requires_grad})
    return state


def keep_fp32(pipe: Any) -> None:
    """Every trainable parameter of the UNet and the encoders in fp32; frozen weights keep their dtype."""
    for module in (pipe.unet, *(getattr(pipe, name) for name in TEXT_ENCODERS.values())):
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()


# keys every file saved meanwhile carries besides its own (runtime/train/ema.py marks an EMA file with them)
EXTRA_METADATA: dict[str, str] = {}


def training_metadata(
    plan: dict[str, Any], step: int, epoch: int, started: float, lineage: list[str] | None = None
) -> dict[str, str]:
    """kohya's `ss_*` keys of the training run (optimizer, schedule, noise and loss settings), the
    `modelspec.*` keys every saved file carries, the plan hash, and (unless `save private`) the plan
    without local paths and the hashes of the plans that trained it (runtime/methods/metadata.py)."""
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
        "ss_training_finished_at": str(timestamp()),
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
        "ss_output_name": plan["output"]["name"],
        **data_metadata(plan),
        **model_metadata(plan),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": plan["output"]["name"],
        **plan_metadata(plan, lineage),
        **EXTRA_METADATA,
    }
