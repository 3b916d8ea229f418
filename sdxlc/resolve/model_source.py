"""Model sources the compiler can check without torch: single-file checkpoints and their config folder.

A `.safetensors` file starts with an 8-byte little-endian header length and a JSON header naming every
tensor, so the compiler can tell an SDXL checkpoint (original layout: `model.diffusion_model.*` and
OpenCLIP bigG under `conditioner.embedders.1.model.*`) from a LoRA, a diffusers component, the SDXL
refiner, an SD 1.x/2.x, SD3 or FLUX checkpoint by reading that header alone, and check its shapes
against its config folder. Pickle checkpoints cannot be inspected without running them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdxlc.resolve.architecture import (
    CONFIG_ERRORS,
    classify,
    header_mismatch,
    read_configs,
    unet_tensors,
)
from sdxlc.resolve.index import Index
from sdxlc.resolve.model_family import folder_problem, hub_problem, single_file_kind
from sdxlc.resolve.profiles import SCHEMA_DIR

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "data" / "sdxl_config"
MODELS_DIR = SCHEMA_DIR / "models"
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SDXL_MARKERS = {
    "model.diffusion_model.": "the UNet (`model.diffusion_model.*`)",
    "conditioner.embedders.1.model.": "the OpenCLIP bigG text encoder (`conditioner.embedders.1.model.*`)",
}
_MAX_HEADER = 100 * 1024 * 1024


class HeaderError(Exception):
    """A file that is not a readable safetensors file."""


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name → {dtype, shape, data_offsets}, plus
    `__metadata__` when present."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise HeaderError("too short to be a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length <= 0 or length > min(_MAX_HEADER, size - 8):
            raise HeaderError("its header length does not fit the file: not a safetensors file")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"its header is not JSON ({exc.__class__.__name__})") from exc
    if not isinstance(header, dict):
        raise HeaderError("its header is not a JSON object")
    return header


def _looks_like(keys: list[str]) -> str:
    if any(k.startswith(("lora_", "lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k
           for k in keys):
        return "it looks like a LoRA: load it with `sdxlc gen --lora`, or train on top of a base model"
    if set(keys) and set(keys) <= {"clip_l", "clip_g"}:
        return ("it looks like a textual-inversion embedding: load it with "
                "`sdxlc gen --embedding FILE:TOKEN` on a base model")
    if other := single_file_kind(keys):
        return f"it looks like {other}"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "it looks like a Stable Diffusion 1.x/2.x checkpoint, not SDXL"
    if any(k.startswith(("down_blocks.", "encoder.down_blocks.", "text_model.")) for k in keys):
        return "it looks like one diffusers component: name the diffusers folder that holds it"
    if any(k.startswith("first_stage_model.") for k in keys) and not any(
        k.startswith("model.diffusion_model.") for k in keys
    ):
        return "it looks like a VAE alone: use it with `vae`"
    return "it is not an SDXL checkpoint in the original single-file layout"


def sdxl_problem(path: Path) -> str | None:
    """Why `path` is not a usable SDXL single-file checkpoint, or None when it is one."""
    try:
        header = read_header(path)
    except (OSError, HeaderError) as exc:
        return f"cannot read `{path.name}`: {exc}"
    keys = [k for k in header if k != "__metadata__"]
    missing = [what for marker, what in SDXL_MARKERS.items() if not any(k.startswith(marker) for k in keys)]
    if not missing:
        return None
    return f"`{path.name}` has no tensors of {' or '.join(missing)}: {_looks_like(keys)}"


def config_problem(folder: Path) -> str | None:
    """Why `folder` cannot serve as the diffusers config folder of a single file, or None."""
    if not folder.is_dir():
        return f"the config folder {folder} does not exist"
    missing = [name for name in ("model_index.json", "unet/config.json", "vae/config.json",
                                 "text_encoder/config.json", "text_encoder_2/config.json")
               if not (folder / name).is_file()]
    if missing:
        return f"the config folder {folder} has no {', '.join(missing)}"
    return None


def model_files(model: dict[str, Any], index: Index) -> list[dict[str, Any]]:
    """Every local file the model is loaded from (a single file, each file of a diffusers folder, a local
    VAE), with its size and sha256: the run checks them before it loads the model. A hub id has none."""
    roots = [Path(model["source"])] if model["kind"] in ("single_file", "pickle", "diffusers_folder") else []
    if model.get("vae") and Path(model["vae"]).exists():
        roots.append(Path(model["vae"]))
    files: list[dict[str, Any]] = []
    for root in roots:
        found = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root)) \
            if root.is_dir() else [root] if root.is_file() else []
        for file in found:
            size, digest = index.file_hash(file)
            files.append({"path": str(file), "size": size, "sha256": digest})
    return files


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def config_mismatch(path: Path, folder: Path) -> str | None:
    """Why a single SDXL file's tensor shapes do not fit its config folder, or None (an unreadable file
    or folder is reported by `sdxl_problem` and `config_problem`)."""
    try:
        problem = header_mismatch(read_header(path), read_configs(folder))
    except (OSError, HeaderError, *CONFIG_ERRORS):
        return None
    return f"`{path.name}` does not fit the config folder {folder}: {problem}" if problem else None


def family_problem(kind: str, source: str) -> str | None:
    """Why a diffusers folder or a hub id is not an SDXL base-topology model, or None."""
    if kind == "hub":
        return hub_problem(source)
    if kind != "diffusers_folder":
        return None
    try:
        if problem := folder_problem(Path(source)):
            return problem
        unet_tensors(read_configs(Path(source)).unet)
    except CONFIG_ERRORS as exc:
        return f"its configs do not describe an SDXL-topology model ({exc}): sdxlc trains SDXL only"
    return None


def config_folder(kind: str, source: str, config: str | None) -> Path | None:
    """Where the model's configs are: a folder's own, a single file's config folder; None for the tiny
    model and hub ids (the shipped SDXL configs describe those)."""
    if kind == "diffusers_folder":
        return Path(source)
    return Path(config) if kind in ("single_file", "pickle") and config else None


def architecture(kind: str, source: str, config: str | None) -> str:
    """Which model facts describe the model: `tiny` or `sdxl` (schema/models/<name>.json) when its configs
    give exactly those parameter counts, else `custom` (computed from its configs by the estimate)."""
    folder = config_folder(kind, source, config)
    if kind == "tiny":
        return "tiny"
    if folder is None:
        return "sdxl"
    known = {name: json.loads((MODELS_DIR / f"{name}.json").read_text(encoding="utf-8"))["params"]
             for name in ("sdxl", "tiny")}
    try:
        return classify(read_configs(folder), known)
    except CONFIG_ERRORS:
        return "sdxl"  # an unreadable config is reported by the checks; the runtime would not load it
