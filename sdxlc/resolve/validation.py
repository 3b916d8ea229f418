"""Resolve `ema` and `validate`: the EMA settings, and the validation images with their fixed timesteps.

The split is deterministic and independent of listing order: every image of a training dataset (not the
regularization ones) gets the key sha256("<seed>/<path within its dataset>/<sha256 of its bytes>"), and
the images with the smallest keys are held out. Held-out images leave the training data before the
regularization balance and the bucket table are made, so they are never trained on. A `validate "folder"`
dataset is scanned like a data folder (captions, kohya folder names, manifests). Every validation image
is recorded in the plan (`validate.images`) as the sample manifest records a training image, with the
caption the validation pass encodes (the dataset's default caption, prefix and suffix applied; never
shuffled or dropped) and count 1. docs/TRAINING.md "EMA" and "Validation loss".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers
from sdxlc.plan import buckets as bk
from sdxlc.plan.manifest import ManifestImage
from sdxlc.resolve.datasets import DATASET_DEFAULTS, ImageItem, is_manifest, scan_dataset
from sdxlc.resolve.index import Index

Placement = Callable[[int, int], bk.Bucket]
FOLDER_DATASET = -1  # the `dataset` of a validation image from `validate "folder"`
LISTED = 20  # files named one by one in a warning; the rest are counted


@dataclass
class Held:
    """The validation images of a plan, and how they were chosen."""

    images: list[ManifestImage] = field(default_factory=list)
    held_out: int = 0  # images taken out of the training data (a split)
    fraction: float | None = None  # the split as a fraction, when given as a percentage
    folder: str | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the plan's warnings (skipped files, overlaps)


def split_key(seed: int, relative: str, sha256: str) -> str:
    """The key that orders the images for the split (the smallest are held out)."""
    return hashlib.sha256(f"{seed}/{relative}/{sha256}".encode()).hexdigest()


def _relative(item: ImageItem, datasets: list[dict[str, Any]]) -> str:
    known = 0 <= item.dataset < len(datasets)
    root = Path(datasets[item.dataset]["path"]) if known else Path(item.path).parent
    base = root.parent if is_manifest(root) else root
    return Path(os.path.relpath(item.path, base)).as_posix()


def validation_seed(layers: Layers) -> int:
    seed, _ = layers.get("validate.seed")
    if seed is None:
        seed, _ = layers.get("training.seed")
    return int(seed)


def hold_out(layers: Layers, recipe_dir: Path, index: Index, datasets: list[dict[str, Any]],
             items: list[ImageItem], placement: Placement) -> tuple[list[ImageItem], Held | None]:
    """The training images left after the split, and the validation images (None without `validate`)."""
    if "validate" not in layers.doc:
        return items, None
    held, seed = Held(), validation_seed(layers)
    chosen = _split(layers, datasets, items, seed, held)
    taken = {id(item) for item in chosen}
    kept = [item for item in items if id(item) not in taken]
    for item in chosen:
        datasets[item.dataset]["images"] -= 1
    folder_items = _folder(layers, recipe_dir, index, held)
    trained = {item.sha256 for item in kept}
    overlap = [item.path for item in folder_items if item.sha256 in trained]
    if overlap:
        shown = "; ".join(overlap[:5]) + (f"; … and {len(overlap) - 5} more" if len(overlap) > 5 else "")
        held.warnings.append(
            f"{len(overlap)} of the {len(folder_items)} validation image(s) in {held.folder} are also "
            f"training images (the same bytes), so their val_loss does not measure held-out images: {shown}")
    held.images = [_image(item, datasets, placement) for item in [*chosen, *folder_items]]
    if not held.images and not held.diagnostics:
        held.diagnostics.append(make(
            "SDX0593", "`validate` has no validation image", layers.place("validate"),
            help="hold out training images with `split 10%` (or `split 4`), or name a folder: "
                 '`validate "data/val" every 100 steps`'))
    return kept, held


def _split(layers: Layers, datasets: list[dict[str, Any]], items: list[ImageItem], seed: int,
           held: Held) -> list[ImageItem]:
    percent, _ = layers.get("validate.split_percent")
    count, _ = layers.get("validate.split_images")
    if percent is None and count is None:
        return []
    trainable = [item for item in items if not datasets[item.dataset].get("regularization")]
    if percent is not None:
        held.fraction = float(percent) / 100
        count = max(1, round(len(trainable) * held.fraction))
    if not trainable:
        return []
    span = layers.place("validate.split_percent", "validate.split_images", "validate")
    if count >= len(trainable):
        held.diagnostics.append(make(
            "SDX0592", f"the validation split holds out {count} of the {len(trainable)} training images: "
            "none would be left to train on", span,
            help="hold out fewer (`split 10%`), or give validation images of their own: "
                 '`validate "data/val"`'))
        return []
    ordered = sorted(trainable, key=lambda item: split_key(seed, _relative(item, datasets), item.sha256))
    chosen = ordered[:count]
    held.held_out = len(chosen)
    return chosen


def _folder(layers: Layers, recipe_dir: Path, index: Index, held: Held) -> list[ImageItem]:
    given, _ = layers.get("validate.folder")
    if given is None:
        return []
    source = (layers.base_dir("validate.folder", recipe_dir) / given).resolve()
    held.folder = str(source)
    span = layers.span("validate.folder")
    if not (source.is_dir() or is_manifest(source)):
        held.diagnostics.append(make("SDX0502", f"validation folder `{given}` does not exist", span,
                                     help=f"looked for {source} (a folder, or a .jsonl/.csv manifest)"))
        return []
    scan = scan_dataset(source, str(DATASET_DEFAULTS["caption_ext"]), FOLDER_DATASET, index=index)
    index.save()
    problems = "; ".join(str(p) for p in scan.problems[:LISTED])
    if len(scan.problems) > LISTED:
        problems += f"; … and {len(scan.problems) - LISTED} more"
    if scan.problems and scan.items:
        held.warnings.append(f"skipped {len(scan.problems)} bad input file(s) in validation folder {source}: "
                             + problems)
    if scan.missing_captions:
        held.warnings.append(f"{scan.missing_captions} validation image(s) in {source} have no "
                             f"{DATASET_DEFAULTS['caption_ext']} caption and are validated with an empty "
                             "caption")
    if not scan.items:
        bad = f"; {len(scan.problems)} bad: {problems}" if scan.problems else ""
        held.diagnostics.append(make("SDX0503", f"validation folder `{given}` holds no readable image{bad}",
                                     span,
                                     help="supported: png, jpg, webp, bmp, gif, tiff and whatever else "
                                          "Pillow reads"))
    return sorted(scan.items, key=lambda item: item.path)


def _image(item: ImageItem, datasets: list[dict[str, Any]], placement: Placement) -> ManifestImage:
    dataset = datasets[item.dataset] if 0 <= item.dataset < len(datasets) else DATASET_DEFAULTS
    caption = item.caption or str(dataset["default_caption"])
    text = " ".join(part for part in (str(dataset["prefix"]), caption, str(dataset["suffix"])) if part)
    bucket = placement(item.width, item.height)
    # a held-out image keeps its control image (an LLLite run validates on the pair); its mask is not
    # read: the validation loss is plain MSE
    return ManifestImage(item.path, item.sha256, item.size, item.width, item.height, item.dataset, text,
                         item.caption_source, 1, bucket, bk.cover_crop(item.width, item.height, bucket),
                         control=item.control, control_sha256=item.control_sha256)


def fixed_timesteps(count: int, low: int, high: int) -> list[int]:
    """One timestep per validation image, evenly spaced over [low, high): the middle of each of `count`
    equal slices (the range's upper bound is exclusive, as in training)."""
    return [low + ((2 * i + 1) * (high - low)) // (2 * count) for i in range(count)]


def resolve_validate(b: Any, held: Held | None, training: dict[str, Any], ema: bool) -> dict[str, Any] | None:
    """The plan's `validate` object (None without `validate`); `b` is the resolver's value builder."""
    if held is None:
        b.derived("validate", None, "default")
        return None
    every = b.take("validate.every", "validate.every_steps")
    if every is not None:
        unit, _ = b.layers.get("validate.unit", "steps")
        every = int(every * training["steps_per_epoch"] if unit == "epochs" else every)
    source = "folder" if held.folder and not held.held_out else ("both" if held.folder else "split")
    seed = validation_seed(b.layers)
    b.provenance["validate.seed"] = b.layers.origin("validate.seed") if b.layers.given("validate.seed") \
        else b.layers.origin("training.seed")
    for key in ("source", "folder", "fraction", "count", "held_out", "timesteps", "images", "ema"):
        b.derived(f"validate.{key}", None)
    return {
        "every_steps": every,
        "source": source,
        "folder": held.folder,
        "fraction": held.fraction,
        "count": len(held.images),
        "held_out": held.held_out,
        "seed": seed,
        "ema": ema,
        "timesteps": fixed_timesteps(len(held.images), training["timestep_min"], training["timestep_max"]),
        "images": [image.to_json() for image in held.images],
    }


def resolve_ema(b: Any, training: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's `training.ema` object (None without `ema`)."""
    if "ema" not in b.layers.doc:
        b.derived("training.ema", None, "default")
        return None
    every = b.take("ema.every", "training.ema.every", 1)
    unit, _ = b.layers.get("ema.unit", "steps")
    return {
        "decay": b.take("ema.decay", "training.ema.decay"),
        "every": int(every * training["steps_per_epoch"] if unit == "epochs" else every),
        "from_step": b.take("ema.from_step", "training.ema.from_step", 0),
    }


def ema_never_updates(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """`ema every 500 steps` (or `from step 500`) in a run of 300 steps: the EMA is the final weights."""
    ema, total = plan["training"].get("ema"), int(plan["training"]["total_steps"])
    if not ema or ema["from_step"] + ema["every"] <= total:
        return []
    return [make(
        "SDX0594", f"the EMA never updates: its first update is at step {ema['from_step'] + ema['every']}, "
        f"the run has {total} steps, so the EMA file holds the final weights",
        layers.place("ema.every", "ema.from_step", "ema.decay"),
        help=f"update more often (`every 1 step`) or start earlier (`from step {max(0, total // 2)}`)")]


def sharded_weights(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """FSDP shards the weights over the processes: neither an EMA of them nor a validation pass on the
    main process sees whole weights."""
    if plan["launch"]["strategy"] != "fsdp" or not (plan["training"].get("ema") or plan.get("validate")):
        return []
    word = "ema" if plan["training"].get("ema") else "validate"
    return [make(
        "SDX0595", f"`{word}` with `strategy fsdp`: the weights are sharded over the processes",
        layers.place(word, "launch.strategy"),
        help="use `strategy ddp` or `strategy deepspeed-zero2` (they keep whole weights on every process), "
             f"or drop `{word}`", related=layers.related("launch.strategy", "fsdp chosen here"))]


VALIDATION_CHECKS = (ema_never_updates, sharded_weights)
