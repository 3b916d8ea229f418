"""Load the base model named by the plan and place it: devices, dtypes, what is frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline

from runtime import RunError
from runtime.formats.single_file import SDXL_CONFIG_DIR, load_single_file
from runtime.model.tiny import build_tiny_pipeline

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIXED = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}


@dataclass
class Models:
    """The pipeline being trained plus what the step needs around it."""

    pipe: StableDiffusionXLPipeline
    accelerator: Accelerator
    noise_scheduler: DDPMScheduler
    weight_dtype: torch.dtype
    vae_dtype: torch.dtype

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def offline() -> bool:
    """True when the environment forbids reaching the Hugging Face Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def accelerator_options(plan: dict[str, Any]) -> dict[str, Any]:
    """Accelerator's arguments from the plan: precision, accumulation, the CPU (gloo when several
    processes run there), and the DeepSpeed or FSDP plugin of `launch.strategy` (docs/SCALE.md)."""
    launch = plan.get("launch") or {}
    options: dict[str, Any] = {
        "mixed_precision": MIXED[plan["precision"]["mixed"]],
        "gradient_accumulation_steps": plan["training"]["accumulate"],
        "cpu": plan["hardware"]["device"] == "cpu",
    }
    if launch.get("deepspeed") is not None:
        from accelerate.utils import DeepSpeedPlugin

        options["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=dict(launch["deepspeed"]))
    if launch.get("fsdp") is not None:
        from accelerate.utils import FullyShardedDataParallelPlugin

        options["fsdp_plugin"] = FullyShardedDataParallelPlugin(**launch["fsdp"])
    return options


def make_accelerator(plan: dict[str, Any]) -> Accelerator:
    return Accelerator(**accelerator_options(plan))


def training_noise_scheduler(prediction: str) -> DDPMScheduler:
    """SDXL's training noise schedule: scaled-linear betas 0.00085..0.012 over 1000 steps."""
    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type=prediction,
    )


def load_pipeline(model: dict[str, Any]) -> StableDiffusionXLPipeline:
    """The base pipeline in fp32 on the CPU, with the VAE override, the prediction type and
    `init normal` applied (docs/MODELS.md)."""
    kind, source = model["kind"], model["source"]
    if kind == "tiny":
        pipe = build_tiny_pipeline(model.get("tiny_seed", 0))
    elif kind == "diffusers_folder" and not Path(source).is_dir():
        raise RunError(f"model folder {source} does not exist")
    elif kind in ("single_file", "pickle"):
        pipe = _from_single_file(model)
    else:
        pipe = _from_pretrained(source)
    if model.get("vae"):
        pipe.vae = load_vae(model["vae"])
    prediction = model.get("prediction")
    if prediction and pipe.scheduler.config.get("prediction_type") != prediction:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
    if model.get("init_std") is not None:
        init_normal(pipe.unet, float(model["init_std"]), model.get("tiny_seed", 0))
    return pipe


def _from_single_file(model: dict[str, Any]) -> StableDiffusionXLPipeline:
    """A single .safetensors file, or a pickle the plan allows, with the configs of `model.config`;
    never reaches the Hub."""
    path, config = Path(model["source"]), model.get("config") or str(SDXL_CONFIG_DIR)
    if not path.is_file():
        raise RunError(f"model file {path} does not exist")
    if model["kind"] == "pickle":
        if not model.get("allow_pickle"):
            raise RunError(f"{path.name} is a pickle checkpoint and the plan does not allow pickle files")
        check_pickle(path)
    try:
        return load_single_file(path, config)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RunError(f"cannot load the single-file model {path}: {exc}") from exc


def check_pickle(path: Path) -> None:
    """Open a pickle checkpoint with `torch.load(weights_only=True)` (only tensors and plain containers
    can be unpickled: no code runs) and check it holds an SDXL model. diffusers then reads the same file
    with `weights_only=True` too."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; all of them mean "refused"
        raise RunError(f"cannot read {path.name} with torch.load(weights_only=True): {exc}") from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    keys = list(state) if isinstance(state, dict) else []
    for marker in ("model.diffusion_model.", "conditioner.embedders.1.model."):
        if not any(isinstance(k, str) and k.startswith(marker) for k in keys):
            raise RunError(f"{path.name} is not an SDXL checkpoint: it has no `{marker}*` tensors")


def init_normal(unet: torch.nn.Module, std: float, seed: int) -> None:
    """Re-initialise the UNet for training from scratch: linear and convolution weights from N(0, std),
    their biases 0, normalisation layers to identity (weight 1, bias 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if module.weight is not None:
                    module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()


def _from_pretrained(source: str) -> StableDiffusionXLPipeline:
    try:
        return StableDiffusionXLPipeline.from_pretrained(
            source, local_files_only=offline(), add_watermarker=False
        )
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot load the model {source}: {exc}") from exc


def load_vae(source: str) -> AutoencoderKL:
    """A VAE from a diffusers folder (the VAE's own or a pipeline's vae/), a single file or a hub id."""
    path = Path(source)
    try:
        if path.is_file():
            return AutoencoderKL.from_single_file(  # SDXL's VAE config, shipped: no Hub access
                source, config=str(SDXL_CONFIG_DIR), subfolder="vae", local_files_only=True
            )
        if path.is_dir() and not (path / "config.json").is_file() and (path / "vae").is_dir():
            return AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=offline())
        return AutoencoderKL.from_pretrained(source, local_files_only=offline())
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot load the VAE {source}: {exc}") from exc


def place(
    pipe: StableDiffusionXLPipeline, plan: dict[str, Any], device: torch.device
) -> tuple[torch.dtype, torch.dtype]:
    """Freeze the base weights and move them to the device in their run dtypes, the convolutional models
    (UNet, VAE) in channels-last memory format when the plan asks for it; returns (weights, vae)."""
    weight_dtype = DTYPES[plan["precision"]["mixed"]]
    vae_dtype = torch.float32 if plan["precision"]["vae_fp32"] else weight_dtype
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
    for module, dtype in ((pipe.unet, weight_dtype), (pipe.text_encoder, weight_dtype),
                          (pipe.text_encoder_2, weight_dtype), (pipe.vae, vae_dtype)):
        _move(module, device, dtype)
    if plan["training"]["channels_last"]:
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    pipe.vae.eval()
    pipe.text_encoder.eval()
    pipe.text_encoder_2.eval()
    return weight_dtype, vae_dtype


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Cast a module where it is, then move it: moved first, an fp32 checkpoint would sit on the device
    at full size before the cast (10 GB for the SDXL UNet, more than the bf16 run needs). Casts only when
    the dtype changes (diffusers warns about every cast)."""
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    module.to(device)


def setup_model(plan: dict[str, Any]) -> Models:
    """Load the base model, build the accelerator and place every component."""
    model = plan["model"]
    accelerator = make_accelerator(plan)
    pipe = load_pipeline(model)
    weight_dtype, vae_dtype = place(pipe, plan, accelerator.device)
    if plan["training"]["gradient_checkpointing"]:
        pipe.unet.enable_gradient_checkpointing()
    if plan["precision"]["vae_slicing"]:
        pipe.vae.enable_slicing()
    return Models(
        pipe=pipe, accelerator=accelerator, noise_scheduler=training_noise_scheduler(model["prediction"]),
        weight_dtype=weight_dtype, vae_dtype=vae_dtype,
    )
