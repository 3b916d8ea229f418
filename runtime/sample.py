"""Sample images with the LoRA active, saved as PNG with their prompt and settings embedded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from PIL.PngImagePlugin import PngInfo

from runtime.models import Models


def render(pipe: StableDiffusionXLPipeline, settings: dict[str, Any], prompt: str,
           output_type: str = "pil") -> Any:
    """One image for a prompt at the plan's sample settings; the generator is seeded from sample.seed."""
    generator = torch.Generator("cpu").manual_seed(settings["seed"])
    result = pipe(
        prompt=prompt, width=settings["width"], height=settings["height"],
        num_inference_steps=settings["steps"], guidance_scale=settings["cfg"], generator=generator,
        output_type=output_type,
    )
    return result.images[0]


def png_info(prompt: str, settings: dict[str, Any], step: int) -> PngInfo:
    info = PngInfo()
    info.add_text("prompt", prompt)
    parameters = {k: settings[k] for k in ("width", "height", "steps", "cfg", "seed")}
    info.add_text("parameters", json.dumps({**parameters, "step": step}, sort_keys=True))
    return info


def write_samples(models: Models, plan: dict[str, Any], step: int, quiet: bool) -> list[Path]:
    """Render every sample prompt and save it under <output.dir>/samples/; returns the files."""
    settings = plan["sample"]
    if not settings["prompts"]:
        return []
    pipe = models.pipe
    folder = Path(plan["output"]["dir"]) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    pipe.set_progress_bar_config(disable=quiet)
    moved = _text_encoders_to(pipe, models.device)
    training = pipe.unet.training
    pipe.unet.eval()
    files = []
    try:
        with models.accelerator.autocast():
            for index, prompt in enumerate(settings["prompts"]):
                image = render(pipe, settings, prompt)
                path = folder / f"{plan['output']['name']}-step{step:06d}-{index:02d}.png"
                image.save(path, pnginfo=png_info(prompt, settings, step))
                files.append(path)
    finally:
        pipe.unet.train(training)
        if moved:
            _text_encoders_to(pipe, torch.device("cpu"))
    return files


def _text_encoders_to(pipe: StableDiffusionXLPipeline, device: torch.device) -> bool:
    """Move the text encoders (parked on the CPU while their outputs are cached); True if they moved."""
    if pipe.text_encoder.device == device:
        return False
    pipe.text_encoder.to(device)
    pipe.text_encoder_2.to(device)
    return True
