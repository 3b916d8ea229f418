"""Disk: the bytes a run will write (artifacts, training-state checkpoints, samples, disk caches).

`disk_bytes(plan)` is deterministic and goes into the plan (`estimate.disk_bytes`); `room(plan)` compares
it with the free space of the output and cache folders when a plan is shown or run (free space changes
from minute to minute, so it is never part of the plan or its hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdxlc.estimate.analytic import (
    model_facts,
    optimizer_state_bytes,
    trainable_param_count,
)
from sdxlc.estimate.model_data import get_path
from sdxlc.plan.files import free_bytes

SAVE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
PNG_RATIO = 0.5  # a sample PNG against its raw RGB size: a generous bound for generated images
MARGIN = 1.1  # filesystem overhead and the temporary copy of the file being replaced
# Fixed per file, so that the estimate (and the plan hash) never depends on paths or the recipe's layout:
FILE_OVERHEAD = 64 << 10  # a safetensors header and its metadata, the whole plan included
CHECKPOINT_OVERHEAD = 384 << 10  # pickled optimizer and scheduler structure, RNG states, the plan, sums


def disk_bytes(plan: dict[str, Any]) -> dict[str, int]:
    """Bytes the run writes at most, by kind, and their `total`."""
    model = model_facts(plan)
    trained = trainable_param_count(plan, model)
    total_steps = int(get_path(plan, "training.total_steps"))
    saves = _events(plan["save"]["every_steps"], total_steps)
    kept = min(int(plan["save"]["keep"]), saves)
    ema = 2 if plan["training"].get("ema") else 1  # `ema`: each save has its `-ema` twin, each state its EMA
    artifact = (trained * SAVE_BYTES[plan["save"]["dtype"]] + FILE_OVERHEAD) * ema
    state = trained * 4 * ema + optimizer_state_bytes(plan, model, trained) + CHECKPOINT_OVERHEAD
    found = {
        "artifacts": artifact * (1 + kept),
        "checkpoints": state * (1 + kept),
        "samples": _samples(plan, total_steps),
        "caches": _caches(plan, model),
    }
    found["total"] = sum(found.values())
    return found


def _events(every: int | None, total: int) -> int:
    """Saves (or sample passes) before the last step; the last step's comes on top."""
    return (total - 1) // every if every else 0


def _samples(plan: dict[str, Any], total_steps: int) -> int:
    sample = plan["sample"]
    prompts = len(sample.get("prompts") or [])
    if not prompts:
        return 0
    before = 1 if sample.get("before") else 0
    passes = _events(sample.get("every_steps"), total_steps) + 1 + before
    image = int(sample["width"] * sample["height"] * 3 * PNG_RATIO)
    # each prompt's image and the grid; with `before`, the before/after grid (two rows of the prompts)
    return passes * (prompts + 1) * image + before * 2 * prompts * image


def _caches(plan: dict[str, Any], model: dict[str, Any]) -> int:
    cache = plan["data"]["cache"]
    if not cache["to_disk"]:
        return 0
    total = 0
    if cache["latents"]:
        latent = model["latent"]
        for row in plan["data"]["buckets"]["table"]:
            px = (row["width"] // latent["downscale"]) * (row["height"] // latent["downscale"])
            total += row["images"] * 2 * latent["channels"] * px * 4  # mean and log-variance, fp32
        if any(d["flip"] for d in plan["data"]["datasets"]):
            total *= 2
    if cache["text_encoder"]:
        context = model["context"]  # the text-encoder outputs per caption, fp32
        total += plan["data"]["images"] * (context["length"] * context["width"] + context["pooled_width"]) * 4
    return total


def room(plan: dict[str, Any]) -> list[str]:
    """Warnings when the output or cache folder's disk has less free space than the run will write."""
    need = plan["estimate"].get("disk_bytes")
    if not need:
        return []
    wants = {plan["output"]["dir"]: need["artifacts"] + need["checkpoints"] + need["samples"]}
    cache = plan["data"]["cache"]["dir"]
    wants[cache] = wants.get(cache, 0) + need["caches"] if _same_disk(cache, plan["output"]["dir"]) \
        else need["caches"]
    warnings = []
    for folder, size in wants.items():
        free = free_bytes(folder)
        if size and free is not None and size * MARGIN > free:
            warnings.append(f"{folder}: the run writes up to {_size(size)}, its disk has {_size(free)} free")
    return warnings


def _same_disk(a: str, b: str) -> bool:
    try:
        return _existing(Path(a)).stat().st_dev == _existing(Path(b)).stat().st_dev
    except OSError:
        return False


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
