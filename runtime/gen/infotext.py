"""The text chunks of a generated PNG: A1111's `parameters` and sdxlc's own record.

`parameters` is A1111's infotext (`create_infotext` in stable-diffusion-webui modules/processing.py),
which A1111's "PNG Info", Civitai and most image viewers read:

    a lighthouse at dusk <lora:style:0.8>
    Negative prompt: blurry
    Steps: 30, Sampler: Euler, CFG scale: 7.0, Seed: 100, Size: 1024x1024, Model hash: 31e35c80fc,
    Model: sd_xl_base_1.0, Lora hashes: "style: 0123456789ab"

(the last line is one line in the file).

A value holding `,`, `:` or a line break is written as a JSON string, as A1111 quotes it. `Model hash`
is the first 10 hex digits of the checkpoint file's sha256 (A1111's short hash); a LoRA's hash is the
first 12 of the sha256 of its tensor data (A1111's and kohya's `sshs_model_hash`). The chunk `sdxlc`
holds everything else as JSON. There is no `prompt` chunk: ComfyUI keeps its API graph under that name.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from PIL.PngImagePlugin import PngInfo

# diffusers scheduler class -> A1111 sampler name
A1111_SAMPLERS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "UniPCMultistepScheduler": "UniPC",
}
# DPMSolverMultistepScheduler's algorithm_type -> A1111 name, by solver order
_DPM: dict[tuple[Any, Any], str] = {("dpmsolver++", 2): "DPM++ 2M", ("sde-dpmsolver++", 2): "DPM++ 2M SDE",
        ("dpmsolver++", 3): "DPM++ 3M", ("sde-dpmsolver++", 3): "DPM++ 3M SDE"}


def sampler_name(scheduler: Any) -> str:
    """A1111's name of a diffusers scheduler (`DPM++ 2M Karras`); the class name when A1111 has none."""
    name = type(scheduler).__name__
    config = getattr(scheduler, "config", {})
    if name == "DPMSolverMultistepScheduler":
        base = _DPM.get((config.get("algorithm_type"), config.get("solver_order")), name)
    else:
        base = A1111_SAMPLERS.get(name, name)
    return f"{base} Karras" if config.get("use_karras_sigmas") else base


def quote(value: Any) -> str:
    """A1111's `quote`: a value with `,`, `:` or a line break as a JSON string, others as they are."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(prompt: str, negative: str | None, fields: dict[str, Any]) -> str:
    """A1111's infotext: the prompt, the `Negative prompt:` line when there is one, then `Key: value`
    pairs (fields whose value is None are left out)."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def lora_hashes(loras: list[tuple[str, str]]) -> str | None:
    """A1111's `Lora hashes` value, `name: hash, name: hash` (`:` and `,` removed from names)."""
    if not loras:
        return None
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {digest}" for name, digest in loras)


def png_text(
    prompt: str, fields: dict[str, Any], record: dict[str, Any], negative: str | None = None
) -> PngInfo:
    """PNG text chunks: `parameters` (A1111's infotext of prompt, negative and fields) and `sdxlc` (the
    prompt, the negative prompt and `record`, which may give the prompt as it was asked, as sorted JSON)."""
    info = PngInfo()
    info.add_text("parameters", infotext(prompt, negative, fields))
    full = {"prompt": prompt, "negative": negative or None, **record}
    info.add_text("sdxlc", json.dumps(full, sort_keys=True, ensure_ascii=False))
    return info


def a1111_fields(steps: int, sampler: str, cfg: float, seed: int, width: int, height: int,
                 model: str, model_sha256: str | None = None) -> dict[str, Any]:
    """The A1111 fields every image has, in A1111's order; `Model hash` when the checkpoint's sha256
    is known."""
    return {
        "Steps": steps, "Sampler": sampler, "CFG scale": cfg, "Seed": seed, "Size": f"{width}x{height}",
        "Model hash": model_sha256[:10] if model_sha256 else None, "Model": model,
    }


def model_name(source: str) -> str:
    """The model as A1111 names a checkpoint: a file's name without its suffix, a folder's or a hub id's
    last part, `tiny` as it is."""
    last = PurePath(source).name or source
    weights = last.lower().endswith((".safetensors", ".ckpt", ".pt", ".pth", ".bin"))
    return PurePath(last).stem if weights else last
