"""Image generation with a base model, weighted LoRAs, textual-inversion embeddings and a ControlNet-LLLite
network with its control image (`sdxlc gen`).

What kohya's `sdxl_gen_img.py` is used for, on diffusers: the base model loads as for training
(runtime/model/load.py), kohya-format LoRA files load with `load_lora_weights` and are mixed with
`set_adapters`, embeddings in the `{"clip_l", "clip_g"}` format load into both text encoders. Every
image is a PNG whose text chunks say how to make it again (runtime/gen/infotext.py: A1111's
`parameters`, with `<lora:name:weight>` tags and `Lora hashes`, and sdxlc's `sdxlc` JSON).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from runtime import RunError
from runtime.formats.safetensors_file import addnet_hash
from runtime.gen import control
from runtime.gen.infotext import a1111_fields, lora_hashes, model_name, png_text, sampler_name
from runtime.gen.sample import save_png
from runtime.methods import lllite as lllite_method
from runtime.model.load import DTYPES, load_pipeline
from runtime.model.spec import model_spec
from runtime.tools.lora_modules import weight_modules
from runtime.tools.lycoris_merge import is_lycoris, merge_file
from sdxlc.plan.share import share_value

# sampler name -> (scheduler class, extra config)
SAMPLERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": (DDIMScheduler, {}),
}
_NUMBERED = re.compile(r"(\d{5})-")


@dataclass
class GenRequest:
    """Everything `sdxlc gen` was asked for."""

    model: str
    prompts: list[str]
    out: Path
    negative: str = ""
    width: int | None = None  # None: the model's native size
    height: int | None = None
    steps: int = 30
    cfg: float = 7.0
    sampler: str = "euler"
    seed: int = 0
    count: int = 1
    batch: int = 1
    loras: list[tuple[Path, float]] = field(default_factory=list)
    embeddings: list[tuple[Path, str]] = field(default_factory=list)
    lllite: tuple[Path, float] | None = None  # a ControlNet-LLLite file and its multiplier
    control: Path | None = None  # the LLLite network's control image, for every prompt
    vae: str | None = None
    device: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class Job:
    prompt_index: int
    prompt: str
    seed: int


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """fp32 on the CPU; bf16 (or fp16 where bf16 is missing) on CUDA, unless asked otherwise."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def set_sampler(pipe: StableDiffusionXLPipeline, name: str) -> None:
    if name not in SAMPLERS:
        raise RunError(f"unknown sampler {name}: one of {', '.join(SAMPLERS)}")
    cls, extra = SAMPLERS[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)


def load_loras(pipe: StableDiffusionXLPipeline, loras: list[tuple[Path, float]]) -> None:
    """Load each kohya LoRA file as its own adapter and mix them with their weights. LoHa, LoKr and
    DoRA files (which diffusers does not load) are added to the model's weights at their weight."""
    names, weights = [], []
    for index, (path, weight) in enumerate(loras):
        if not path.is_file():
            raise RunError(f"LoRA file {path} does not exist")
        if is_lycoris(path):  # a RunError names an unreadable file
            _merge_lycoris(pipe, path, weight)
            continue
        name = f"lora{index}"
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise RunError(f"cannot load the LoRA {path} into this model: {_short(exc)}") from exc
        names.append(name)
        weights.append(weight)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)


def _merge_lycoris(pipe: StableDiffusionXLPipeline, path: Path, weight: float) -> None:
    try:
        merge_file(path, weight, weight_modules(pipe))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise RunError(f"cannot load the LoRA {path} into this model: {_short(exc)}") from exc


def _short(exc: BaseException, limit: int = 400) -> str:
    """An exception's text cut to `limit` characters (diffusers lists every key it could not place)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + f" … ({len(text) - limit} more characters)"


def load_embedding(pipe: StableDiffusionXLPipeline, path: Path, token: str) -> int:
    """Load a `{"clip_l": [n, d1], "clip_g": [n, d2]}` embedding under `token`; returns n."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise RunError(f"cannot read the embedding {path}: {exc}") from exc
    if set(tensors) != {"clip_l", "clip_g"}:
        keys = sorted(tensors)  # a LoRA or an LLLite file holds hundreds: name a few
        shown = ", ".join(keys[:3]) + (f", … ({len(keys)} keys)" if len(keys) > 3 else "")
        raise RunError(f"embedding {path} holds {shown or 'no tensor'}; expected the keys clip_l and clip_g")
    for key, encoder, tokenizer in (("clip_l", pipe.text_encoder, pipe.tokenizer),
                                    ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)):
        vectors = tensors[key]
        width = encoder.get_input_embeddings().weight.shape[1]
        if vectors.ndim != 2 or vectors.shape[1] != width or vectors.shape[0] == 0:
            raise RunError(f"embedding {path}: {key} has shape {tuple(vectors.shape)}, "
                           f"this model's encoder needs [n, {width}] with n at least 1")
        if not bool(torch.isfinite(vectors.float()).all()):
            raise RunError(f"embedding {path}: {key} holds NaN or infinite values")
        try:
            pipe.load_textual_inversion(vectors, token=token, text_encoder=encoder, tokenizer=tokenizer)
        except ValueError as exc:
            raise RunError(f"cannot load the embedding {path} as {token}: {exc}") from exc
    return int(tensors["clip_l"].shape[0])


def jobs(request: GenRequest) -> list[Job]:
    """One image per prompt and seed: seeds seed..seed+count-1 for every prompt."""
    return [Job(index, prompt, request.seed + k) for index, prompt in enumerate(request.prompts)
            for k in range(request.count)]


def chunks(items: list[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def next_number(folder: Path) -> int:
    """The first file number after those already in the folder (`00012-...png`), so reruns add files."""
    numbers = [int(m[1]) for p in folder.glob("*.png") if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def parameters(request: GenRequest, job: Job, width: int, height: int,
               model: dict[str, Any]) -> dict[str, Any]:
    """What the PNG text chunk `sdxlc` records: enough to make the image again, with local files by
    name (a shared image tells no local path) and each LoRA's A1111 hash."""
    return {
        "seed": job.seed, "steps": request.steps, "cfg": request.cfg, "sampler": request.sampler,
        "width": width, "height": height, "model": share_value(model["source"], ""),
        "vae": share_value(request.vae, "") if request.vae else None,
        "loras": [{"file": path.name, "weight": weight, "hash": lora_hash(path)}
                  for path, weight in request.loras],
        "embeddings": [{"file": path.name, "token": token} for path, token in request.embeddings],
    }


def control_record(request: GenRequest) -> dict[str, Any]:
    """The LLLite file, its multiplier and the control image of the `sdxlc` chunk (by name), when used."""
    if request.lllite is None:
        return {}
    path, weight = request.lllite
    return {"lllite": {"file": path.name, "weight": weight},
            "control": request.control.name if request.control is not None else None}


def lora_hash(path: Path) -> str:
    """The hash A1111 shows for a LoRA: the file's `sshs_model_hash` when it has one, else the sha256 of
    its tensor data; the first 12 hex digits (read once per file version)."""
    stat = path.stat()
    return _lora_hash(str(path), stat.st_size, stat.st_mtime_ns)


@cache
def _lora_hash(path: str, size: int, mtime: int) -> str:
    try:
        with safe_open(str(path), "pt") as handle:
            stored = (handle.metadata() or {}).get("sshs_model_hash")
    except (OSError, SafetensorError):
        stored = None
    return (stored or addnet_hash(path))[:12]


def a1111_text(request: GenRequest, job: Job, width: int, height: int, model: dict[str, Any],
               sampler: str) -> tuple[str, dict[str, Any]]:
    """The A1111 prompt line (the prompt, then `<lora:name:weight>` for each LoRA, as A1111 writes
    them) and the A1111 fields with the LoRAs' hashes."""
    tags = "".join(f" <lora:{path.stem}:{weight:g}>" for path, weight in request.loras)
    fields = a1111_fields(request.steps, sampler, request.cfg, job.seed, width, height,
                          model_name(model["source"]))
    fields["Lora hashes"] = lora_hashes([(path.stem, lora_hash(path)) for path, _ in request.loras])
    return job.prompt + tags, fields


def prepare(request: GenRequest) -> tuple[StableDiffusionXLPipeline, dict[str, Any]]:
    """The pipeline with its LoRAs, embeddings and sampler, on its device; and its model section."""
    if not request.prompts:
        raise RunError("no prompt: give --prompt or --prompts FILE")
    model = model_spec(request.model, request.vae)
    lllite = [request.lllite[0]] if request.lllite else []
    for path in [*(path for path, _ in request.loras), *(path for path, _ in request.embeddings), *lllite]:
        if path.is_dir():
            raise RunError(f"{path} is a folder: name the .safetensors file in it")
        if not path.is_file():
            raise RunError(f"{path} does not exist")
    pipe = load_pipeline(model)
    load_loras(pipe, request.loras)
    for path, token in request.embeddings:
        load_embedding(pipe, path, token)
    if request.lllite is not None:
        lllite_method.load(pipe.unet, *request.lllite)
    set_sampler(pipe, request.sampler)
    device = pick_device(request.device)
    dtype = pick_dtype(request.precision, device)
    pipe.to(device)
    # diffusers warns about every cast, even to the same dtype; a saved folder may mix dtypes (transformers
    # keeps the encoders' saved fp16 where diffusers loads the UNet in fp32)
    parts = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    if any(part is not None and part.dtype != dtype for part in parts):
        pipe.to(dtype=dtype)
    return pipe, model


def generate(request: GenRequest, on_file: Callable[[Path], None] | None = None, progress: bool = False,
             pipe: StableDiffusionXLPipeline | None = None) -> list[Path]:
    """Render every prompt at every seed into request.out; returns the PNG files in order.

    `on_file` hears of each file as it is written; `progress` shows the denoising bar; `pipe` reuses
    a pipeline made by `prepare`.
    """
    model: dict[str, Any] = {"source": request.model}
    if pipe is None:
        pipe, model = prepare(request)
    pipe.set_progress_bar_config(disable=not progress)
    width = request.width or pipe.default_sample_size * pipe.vae_scale_factor
    height = request.height or pipe.default_sample_size * pipe.vae_scale_factor
    request.out.mkdir(parents=True, exist_ok=True)
    number, files = next_number(request.out), []
    hint = control.load_control(request.control, width, height) if request.control is not None else None
    for group in chunks(jobs(request), request.batch):
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in group]
        with torch.inference_mode(), control.controlled(pipe.unet, hint):
            images = pipe(
                prompt=[job.prompt for job in group],
                negative_prompt=[request.negative] * len(group) if request.negative else None,
                width=width, height=height, num_inference_steps=request.steps, guidance_scale=request.cfg,
                generator=generators,
            ).images
        for job, image in zip(group, images, strict=True):
            path = request.out / f"{number:05d}-p{job.prompt_index:02d}-s{job.seed}.png"
            shown, fields = a1111_text(request, job, width, height, model, sampler_name(pipe.scheduler))
            record = {**parameters(request, job, width, height, model), "prompt": job.prompt,
                      **control_record(request)}
            info = png_text(shown, fields, record, request.negative)
            save_png(image, path, info)
            files.append(path)
            number += 1
            if on_file is not None:
                on_file(path)
    return files
