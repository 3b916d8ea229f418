"""Sample images with the LoRA active, saved as PNG with their prompt and settings embedded (A1111's
`parameters` text and sdxlc's `sdxlc` JSON: runtime/gen/infotext.py).

Each sampling step writes one PNG per prompt and a grid PNG with all prompts side by side, under
<output.dir>/samples/, and hands the images to the TensorBoard log when the run has one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from runtime.gen import control
from runtime.gen.infotext import a1111_fields, model_name, png_text, sampler_name
from runtime.methods.metadata import single_file_sha256
from runtime.model.load import Models
from runtime.train.tblog import TensorBoardLog
from sdxlc.plan.files import atomic_path
from sdxlc.plan.share import share_value


@dataclass
class SampleFiles:
    """What one sampling step wrote: a PNG per prompt, and the grid of them all."""

    images: list[Path] = field(default_factory=list)
    grid: Path | None = None


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


def sample_parameters(plan: dict[str, Any], sampler: str, step: int) -> dict[str, Any]:
    """Everything that made a training sample (the PNG's `sdxlc` chunk): settings, sampler, base model
    (a local path relative to the recipe folder, or its name), LoRA, step and plan hash."""
    settings = plan["sample"]
    return {
        **{k: settings[k] for k in ("width", "height", "steps", "cfg", "seed")},
        "sampler": sampler, "model": share_value(plan["model"]["source"], plan["save"]["relative_to"]),
        "lora": plan["output"]["name"], "step": step, "plan_hash": plan["plan_hash"],
    }


def sample_fields(plan: dict[str, Any], scheduler: Any) -> dict[str, Any]:
    """A1111's fields of a training sample; `Model hash` when the plan hashed a single-file model."""
    settings, model = plan["sample"], plan["model"]
    return a1111_fields(settings["steps"], sampler_name(scheduler), settings["cfg"], settings["seed"],
                        settings["width"], settings["height"], model_name(model["source"]),
                        single_file_sha256(model))


def grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """The images side by side (in rows of `columns`, all in one row by default), on black."""
    if not images:
        raise ValueError("a grid needs at least one image")
    columns = max(1, min(columns or len(images), len(images)))
    rows = -(-len(images) // columns)
    width, height = max(i.width for i in images), max(i.height for i in images)
    sheet = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        sheet.paste(image.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return sheet


def save_png(image: Image.Image, path: Path, info: Any) -> None:
    """A PNG written atomically (a full disk never leaves half an image)."""
    with atomic_path(path) as temp:
        image.save(temp, format="PNG", pnginfo=info)


def write_samples(models: Models, plan: dict[str, Any], step: int, quiet: bool,
                  log: TensorBoardLog | None = None) -> SampleFiles:
    """Render every sample prompt, save them and their grid under <output.dir>/samples/."""
    settings = plan["sample"]
    files = SampleFiles()
    if not settings["prompts"]:
        return files
    pipe = models.pipe
    folder = Path(plan["output"]["dir"]) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{plan['output']['name']}-step{step:06d}"
    parameters = sample_parameters(plan, type(pipe.scheduler).__name__, step)
    fields = sample_fields(plan, pipe.scheduler)
    pipe.set_progress_bar_config(disable=quiet)
    training = pipe.unet.training
    pipe.unet.eval()
    images: list[Image.Image] = []
    try:
        with unparked(pipe, models.device), models.accelerator.autocast():
            for index, prompt in enumerate(settings["prompts"]):
                with control.sample_control(pipe.unet, plan, index):  # an LLLite run's control image
                    image = render(pipe, settings, prompt)
                path = folder / f"{stem}-{index:02d}.png"
                save_png(image, path, png_text(prompt, fields, {**parameters, "prompt_index": index}))
                images.append(image)
                files.images.append(path)
    finally:
        pipe.unet.train(training)
    sheet = grid(images)
    files.grid = folder / f"{stem}-grid.png"
    grid_fields = {**fields, "Size": f"{sheet.width}x{sheet.height}"}
    save_png(sheet, files.grid, png_text(" | ".join(settings["prompts"]), grid_fields,
                                         {**parameters, "prompts": settings["prompts"]}))
    if log is not None:
        log.images(step, [*((f"{i:02d}", image) for i, image in enumerate(images)), ("grid", sheet)])
    return files


PARKED = ("text_encoder", "text_encoder_2", "vae")  # parked on the CPU while their outputs are cached


@contextmanager
def unparked(pipe: Any, device: torch.device) -> Iterator[None]:
    """The components parked on the CPU while training (cached text encoders; the VAE when latents are
    cached) on the run's device for the duration, and parked again after."""
    moved = [getattr(pipe, name) for name in PARKED if getattr(pipe, name).device != device]
    for module in moved:
        module.to(device)
    try:
        yield
    finally:
        for module in moved:
            module.to("cpu")
