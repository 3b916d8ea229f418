"""Training-state checkpoints: everything an exact resume needs, written atomically.

A checkpoint is a folder `<output.dir>/checkpoints/step-NNNNNN/` holding the trainable weights (and
their EMA with `ema`: `ema.safetensors`), the optimizer, scheduler and grad-scaler states, the RNG
states (python, numpy, torch), the data position and counters (`state.json`) and the plan that was
running. It is written under a temporary name, every file flushed to disk, then renamed into place:
a kill or a full disk during a save leaves the previous checkpoint whole. Older checkpoints are pruned
only after the new one is complete.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from runtime import RunError
from runtime.formats.safetensors_file import write as write_safetensors
from sdxlc.plan import layout
from sdxlc.plan.files import atomic_folder
from sdxlc.plan.layout import PREFIX as _PREFIX
from sdxlc.plan.layout import STATE_FILE
from sdxlc.plan.sums import write_folder_sums

EMA_FILE = "ema.safetensors"


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the next batch (epoch, index within it)."""

    step: int
    epoch: int
    batch_index: int
    losses: list[float] = field(default_factory=list)
    lineage: list[str] = field(default_factory=list)  # hashes of the plans that trained to here, oldest first


@dataclass
class Saved:
    """A checkpoint read back from disk."""

    folder: Path
    position: Position
    plan: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: dict[str, Any]
    ema: dict[str, torch.Tensor] | None = None  # the EMA of the trained weights (runtime/train/ema.py)


def folder_for(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{_PREFIX}{step:06d}"


def save_state(
    out: Path,
    position: Position,
    plan: dict[str, Any],
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint folder atomically and return its final path."""
    final = folder_for(out, position.step)
    with atomic_folder(final) as tmp:
        write_safetensors(tmp / "trainable.safetensors", {k: v.float() for k, v in trainable.items()})
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            _torch_save(scaler.state_dict(), tmp / "scaler.pt")
        if ema is not None:
            write_safetensors(tmp / EMA_FILE, {k: v.float() for k, v in ema.items()})
        _save_rng(tmp)
        (tmp / "plan.json").write_text(json.dumps(plan, indent=2, sort_keys=True), encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(position)), encoding="utf-8")
        write_folder_sums(tmp)  # last: a folder whose files all match it is a whole checkpoint
    return final


def _torch_save(state: Any, path: Path) -> None:
    """torch.save through memory, so that a full disk is an OSError (torch's own writer raises a
    RuntimeError) and is reported as one."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getbuffer())


def prune(out: Path, keep: int) -> None:
    """Remove all but the newest `keep` complete checkpoints (and stale temporary folders)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return
    for stale in root.glob(f".{_PREFIX}*.tmp-*"):  # `atomic_folder`'s temporary folders
        shutil.rmtree(stale, ignore_errors=True)
    for old in complete(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def complete(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return layout.complete(out)


def find(out: Path, which: str) -> Path:
    """`latest` (the newest intact checkpoint under out) or an explicit checkpoint folder, verified."""
    try:
        return layout.find(out, which)
    except layout.ResumeError as exc:
        raise RunError(str(exc)) from exc


def load_state(folder: Path) -> Saved:
    """Read a checkpoint folder back (tensors on the CPU)."""
    try:
        position = Position(**json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
        scaler_file = folder / "scaler.pt"
        return Saved(
            folder=folder,
            position=position,
            plan=json.loads((folder / "plan.json").read_text(encoding="utf-8")),
            trainable=load_file(str(folder / "trainable.safetensors")),
            optimizer=torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True),
            scheduler=torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True),
            scaler=torch.load(scaler_file, weights_only=True) if scaler_file.exists() else None,
            rng=_load_rng(folder),
            ema=load_file(str(folder / EMA_FILE)) if (folder / EMA_FILE).exists() else None,
        )
    except Exception as exc:  # noqa: BLE001 - safetensors and torch raise their own types on damage
        raise RunError(f"cannot read checkpoint {folder}: {type(exc).__name__}: {exc}") from exc


def restore_rng(rng: dict[str, Any]) -> None:
    """The process's RNG states (a batch's data randomness is seeded by its place: runtime/train/loader.py;
    a checkpoint of an older sdxlc also holds the state of the sequential data generator it replaced)."""
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _save_rng(folder: Path) -> None:
    """RNG states without pickle: python and numpy states as JSON, torch states as byte tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": _py_state(random.getstate()),
        "numpy": [kind, [int(k) for k in keys], pos, has_gauss, gauss],
    }
    (folder / "rng.json").write_text(json.dumps(states), encoding="utf-8")
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
    write_safetensors(folder / "rng.safetensors", tensors)


def _load_rng(folder: Path) -> dict[str, Any]:
    states = json.loads((folder / "rng.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "rng.safetensors"))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1)]
    return {
        "python": _py_unstate(states["python"]),
        "numpy": (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss),
        "torch": tensors["torch"],
        "cuda": cuda,
    }


def _py_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_unstate(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
