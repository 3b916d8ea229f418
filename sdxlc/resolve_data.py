"""Resolve the data section: datasets found on disk, the bucket table and the samples of an epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxlc import buckets as bk
from sdxlc.datasets import ImageItem, scan_dataset
from sdxlc.diagnostics import Diagnostic, make
from sdxlc.layers import Layers, Provenance

DATASET_DEFAULTS: dict[str, Any] = {
    "repeat": 1,
    "caption_ext": ".txt",
    "shuffle": False,
    "keep_tokens": 0,
    "caption_dropout": 0.0,
    "flip": False,
    "regularization": False,
}


@dataclass
class DataResolution:
    section: dict[str, Any]
    provenance: dict[str, Provenance] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bucket_sizes: list[int] = field(default_factory=list)


def resolve_data(layers: Layers, recipe_dir: Path, batch_size: int) -> DataResolution:
    """Scan every dataset, place each image in its bucket and count samples and batches per bucket."""
    datasets, items, res = _datasets(layers, recipe_dir)
    size, size_from = layers.get("resolution.size")
    enabled, enabled_from = layers.get("resolution.buckets")
    lo, lo_from = layers.get("resolution.min")
    hi, hi_from = layers.get("resolution.max")
    step, step_from = layers.get("resolution.step")
    res.provenance.update(
        {
            "data.images": {"source": "derived", "at": None},
            "data.samples_per_epoch": {"source": "derived", "at": None},
            "data.resolution": size_from,
            "data.buckets.enabled": enabled_from,
            "data.buckets.min": lo_from,
            "data.buckets.max": hi_from,
            "data.buckets.step": step_from,
        }
    )
    bucket_list = bk.make_buckets(size, lo, hi, step) if enabled else [(size, size)]
    if not bucket_list:
        res.diagnostics.append(
            make(
                "SDX0504",
                f"no bucket fits between {lo} and {hi} at resolution {size}",
                layers.span("resolution.min"),
                help="widen `buckets MIN..MAX`",
            )
        )
        bucket_list = [(size, size)]
    table = _bucket_table(datasets, items, bucket_list, batch_size)
    res.bucket_sizes = [row["samples"] for row in table]
    samples = sum(res.bucket_sizes)
    res.section = {
        "datasets": datasets,
        "resolution": size,
        "buckets": {
            "enabled": bool(enabled),
            "min": lo,
            "max": hi,
            "step": step,
            "table": [{k: row[k] for k in ("width", "height", "images", "batches")} for row in table],
        },
        "cache": _cache(layers, recipe_dir, res.provenance),
        "images": len(items),
        "samples_per_epoch": samples,
    }
    return res


def bucket_details(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-bucket report for `sdxlc plan`: images, mean aspect error and share of pixels cropped."""
    buckets = [(row["width"], row["height"]) for row in plan["data"]["buckets"]["table"]]
    rows: dict[tuple[int, int], dict[str, Any]] = {b: {"errors": [], "cropped": []} for b in buckets}
    for index, dataset in enumerate(plan["data"]["datasets"]):
        for item in scan_dataset(Path(dataset["path"]), dataset["caption_ext"], index).items:
            bucket = bk.assign(item.width, item.height, buckets)
            rows[bucket]["errors"].append(bk.aspect_error(item.width, item.height, bucket))
            rows[bucket]["cropped"].append(bk.cropped_fraction(item.width, item.height, bucket))
    details = []
    for row in plan["data"]["buckets"]["table"]:
        stats = rows[(row["width"], row["height"])]
        n = max(1, len(stats["errors"]))
        details.append(
            {**row, "aspect_error": sum(stats["errors"]) / n, "cropped": sum(stats["cropped"]) / n}
        )
    return details


def _datasets(
    layers: Layers, recipe_dir: Path
) -> tuple[list[dict[str, Any]], list[ImageItem], DataResolution]:
    res = DataResolution(section={})
    given = layers.doc.get("data") or []
    if not given:
        res.diagnostics.append(
            make(
                "SDX0501",
                "the recipe names no training data",
                None,
                help='add a line such as `data "images/my_concept" repeat 10`',
            )
        )
    datasets: list[dict[str, Any]] = []
    items: list[ImageItem] = []
    for index, entry in enumerate(given):
        base = layers.base_dir(f"data.{index}.path", recipe_dir)
        folder = (base / entry["path"]).resolve()
        resolved = {**DATASET_DEFAULTS, **entry, "path": str(folder)}
        for key in DATASET_DEFAULTS:
            res.provenance[f"data.datasets.{index}.{key}"] = (
                layers.origin(f"data.{index}.{key}") if key in entry else {"source": "default", "at": None}
            )
        res.provenance[f"data.datasets.{index}.images"] = {"source": "derived", "at": None}
        res.provenance[f"data.datasets.{index}.path"] = layers.origin(f"data.{index}.path")
        span = layers.span(f"data.{index}.path")
        if not folder.is_dir():
            res.diagnostics.append(
                make(
                    "SDX0502",
                    f"dataset folder `{entry['path']}` does not exist",
                    span,
                    help=f"looked for {folder}",
                )
            )
            resolved["images"] = 0
            datasets.append(resolved)
            continue
        scan = scan_dataset(folder, resolved["caption_ext"], index)
        for problem in scan.problems:
            res.warnings.append(f"skipped {problem}")
        if scan.missing_captions:
            res.warnings.append(
                f"{scan.missing_captions} image(s) in {entry['path']} have no "
                f"{resolved['caption_ext']} caption and train with an empty caption"
            )
        if not scan.items:
            res.diagnostics.append(
                make(
                    "SDX0503",
                    f"dataset folder `{entry['path']}` holds no readable image",
                    span,
                    help="supported: " + ", ".join(("png", "jpg", "webp", "bmp")),
                )
            )
        resolved["images"] = len(scan.items)
        datasets.append(resolved)
        items.extend(scan.items)
    return datasets, items, res


def _bucket_table(
    datasets: list[dict[str, Any]], items: list[ImageItem], buckets: list[bk.Bucket], batch_size: int
) -> list[dict[str, Any]]:
    counts: dict[bk.Bucket, list[int]] = {b: [0, 0] for b in buckets}
    for item in items:
        bucket = bk.assign(item.width, item.height, buckets)
        counts[bucket][0] += 1
        counts[bucket][1] += datasets[item.dataset]["repeat"]
    table = []
    for (width, height), (images, samples) in counts.items():
        if images:
            table.append(
                {
                    "width": width,
                    "height": height,
                    "images": images,
                    "samples": samples,
                    "batches": bk.batch_count([samples], batch_size),
                }
            )
    return table


def _cache(layers: Layers, recipe_dir: Path, provenance: dict[str, Provenance]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for key in ("text_encoder", "latents", "to_disk"):
        value, origin = layers.get(f"cache.{key}")
        section[key] = bool(value)
        provenance[f"data.cache.{key}"] = origin
    section["dir"] = str((recipe_dir / ".sdxlc-cache").resolve())
    provenance["data.cache.dir"] = {"source": "default", "at": None}
    return section
