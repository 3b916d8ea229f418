"""The semantic difference of two resolved plans, each change classed by what it affects.

Both plans are walked generically: dicts key by key, lists of objects index by index; a list of plain
values (LoRA targets, prompts, `block_lr`) is one value. Each differing leaf is classed by the longest
prefix of its path in `KINDS` (indices written as `*`), so one table says what every field means for a
run. `plan_hash` is ignored: it differs whenever anything else does.

Pure: it compares two plan documents and imports nothing of the compiler (`sdxlc.tools.diff` reads the
sides, compiling recipes where needed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sdxlc.plan.manifest import Manifest

Kind = Literal[
    "cosmetic", "logging", "schedule", "numerics", "cache-invalidating", "resume-breaking", "estimate"
]

# Least to most disruptive; the order the text report uses.
KIND_ORDER: tuple[Kind, ...] = (
    "resume-breaking",
    "cache-invalidating",
    "numerics",
    "schedule",
    "logging",
    "estimate",
    "cosmetic",
)

KIND_MEANING: dict[Kind, str] = {
    "cosmetic": "no effect on the trained weights",
    "logging": "what the run reports and saves along the way",
    "schedule": "the learning-rate schedule or the length of the run",
    "numerics": "the arithmetic of training: results differ, checkpoints still load",
    "cache-invalidating": "cached latents or text-encoder outputs must be rebuilt",
    "resume-breaking": "a checkpoint of one cannot be resumed by the other",
    "estimate": "the memory and time estimate",
}

# Path prefix → kind; the longest matching prefix wins. `*` matches one list index.
KINDS: dict[str, Kind] = {
    "plan_version": "cosmetic",
    "sdxlc_version": "cosmetic",
    "sources": "cosmetic",
    "provenance": "cosmetic",
    "warnings": "cosmetic",
    "output": "cosmetic",
    "estimate": "estimate",
    "hardware": "estimate",
    "hardware.device": "numerics",
    "model": "resume-breaking",
    "model.vae": "cache-invalidating",
    "method": "resume-breaking",
    "method.dropout": "numerics",
    "method.block_lr": "schedule",
    "method.lr_te1": "schedule",
    "method.lr_te2": "schedule",
    "method.save_diffusers": "cosmetic",
    "method.unsaved_blocks": "logging",
    "precision": "numerics",
    "precision.offload_text_encoders": "estimate",  # where the encoders wait between batches
    "precision.offload_vae": "estimate",
    "data": "cache-invalidating",
    "data.datasets.*.repeat": "schedule",
    "data.datasets.*.samples": "schedule",  # repeats (and the regularization balance) count samples
    "data.buckets.table.*.batches": "schedule",  # the same images in the same buckets, counted again
    "data.manifest.samples": "schedule",
    "data.datasets.*.loss_weight": "numerics",
    "data.samples_per_epoch": "schedule",
    "data.loader": "cosmetic",
    "optimizer": "numerics",
    "optimizer.name": "resume-breaking",
    "optimizer.lr": "schedule",
    "schedule": "schedule",
    "training": "numerics",
    "training.total_steps": "schedule",
    "training.epochs": "schedule",
    "training.steps_per_epoch": "schedule",
    "training.batches_per_epoch": "schedule",
    "training.ema": "logging",  # an average saved beside the weights: training is the same
    "save": "logging",
    "sample": "logging",
    "validate": "logging",  # measured, never trained on (a split's held-out images change `data`)
    "log": "logging",
    "launch": "numerics",
    "launch.main_process_port": "cosmetic",
}

IGNORED = {"plan_hash"}
# Fields of no table entry (a newer plan): classed as numerics, the kind that changes results without
# claiming more.
FALLBACK: Kind = "numerics"


@dataclass(frozen=True)
class Change:
    """One differing leaf: `old` or `new` is None where the field is null or absent on that side."""

    path: str
    old: Any
    new: Any
    kind: Kind

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "old": self.old, "new": self.new, "kind": self.kind}


def kind_of(path: str) -> Kind:
    """The kind of a change at a dotted plan path (list indices may be numbers or `*`)."""
    parts = ["*" if part.isdigit() else part for part in path.split(".")]
    for size in range(len(parts), 0, -1):
        kind = KINDS.get(".".join(parts[:size]))
        if kind is not None:
            return kind
    return FALLBACK


def diff_plans(
    a: dict[str, Any], b: dict[str, Any], manifests: tuple[Manifest, Manifest] | None = None
) -> list[Change]:
    """Every leaf that differs between two plans, in path order.

    The sample manifests, when the caller has them, tell a manifest that changed only in its sample
    counts (repeats) from one with other images, captions, buckets or crops: only the latter
    invalidates the caches. Without them a changed manifest is taken to invalidate them."""
    counts_only = manifests is not None and same_but_counts(*manifests)
    changes = [Change(path, old, new, _manifest_kind(path, counts_only))
               for path, old, new in _walk(a, b, "")]
    return sorted(changes, key=lambda change: change.path)


MANIFEST_IDENTITY = ("data.manifest.file", "data.manifest.sha256")


def same_but_counts(a: Manifest, b: Manifest) -> bool:
    """Whether two manifests list the same images, captions, buckets and crops, in the same order, and
    differ at most in how many samples each image gives an epoch."""
    def cached(manifest: Manifest) -> list[dict[str, Any]]:
        return [{k: v for k, v in image.to_json().items() if k != "count"} for image in manifest.images]

    return cached(a) == cached(b)


def _manifest_kind(path: str, counts_only: bool) -> Kind:
    return "schedule" if counts_only and path in MANIFEST_IDENTITY else kind_of(path)


def _walk(a: Any, b: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if not prefix and key in IGNORED:
                continue
            yield from _pair(a, b, key, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(a, list) and isinstance(b, list) and not (_plain(a) and _plain(b)):
        for index in range(max(len(a), len(b))):
            yield from _pair(dict(enumerate(a)), dict(enumerate(b)), index, f"{prefix}.{index}")
    elif not _same(a, b):
        yield prefix, a, b


def _pair(a: dict[Any, Any], b: dict[Any, Any], key: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """The changes under one key; a section only one side has is walked against an empty one, so that
    its fields are classed one by one."""
    if key in a and key in b:
        yield from _walk(a[key], b[key], path)
    elif isinstance(a.get(key, b.get(key)), dict):
        yield from _walk(a.get(key, {}), b.get(key, {}), path)
    else:
        yield path, a.get(key), b.get(key)


def _plain(values: list[Any]) -> bool:
    return not any(isinstance(value, dict | list) for value in values)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: `1` and `1.0` are the same number, `true` is not `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def render_changes(changes: list[Change]) -> str:
    """A table of the changes grouped by kind, most disruptive first. Provenance changes (a setting
    moved to another line or file) are counted on one line rather than listed."""
    if not changes:
        return "no difference\n"
    moved = [change for change in changes if change.path.startswith("provenance.")]
    shown = [change for change in changes if not change.path.startswith("provenance.")]
    rows: dict[Kind, list[tuple[str, str]]] = {kind: [] for kind in KIND_ORDER}
    for change in shown:
        rows[change.kind].append((change.path, f"{_show(change.old)} → {_show(change.new)}"))
    if moved:
        rows["cosmetic"].append(("provenance", f"{len(moved)} setting(s) now set at another place"))
    width = max(len(path) for group in rows.values() for path, _ in group)
    out: list[str] = []
    for kind in KIND_ORDER:
        count = sum(1 for change in changes if change.kind == kind)
        if not count:
            continue
        out.append(f"{kind} ({count}): {KIND_MEANING[kind]}")
        out += [f"  {path.ljust(width)}  {text}" for path, text in rows[kind]]
        out.append("")
    return "\n".join(out)


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
