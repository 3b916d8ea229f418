"""The `model` section of a plan for a model named on the command line (`sdxlc gen`, `sdxlc lora …`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime import RunError


def model_spec(source: str, vae: str | None = None) -> dict[str, Any]:
    """The `model` section runtime/model/load.py loads from: `tiny`, a diffusers folder, a single-file
    SDXL checkpoint (with the shipped SDXL configs), or a hub id."""
    if source == "tiny":
        return {"kind": "tiny", "source": "tiny", "tiny_seed": 0, "vae": vae}
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return {"kind": "single_file", "source": str(path.resolve()), "config": None, "vae": vae}
    if path.is_file():
        raise RunError(f"{source} is not a .safetensors checkpoint: convert it, or name a folder or hub id")
    if path.is_dir():
        return {"kind": "diffusers_folder", "source": str(path.resolve()), "vae": vae}
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise RunError(f"model {source} is neither `tiny`, an existing folder nor a hub id")
    return {"kind": "hub", "source": source, "vae": vae}
