"""Resolve the data section: datasets found on disk, the bucket table, the samples of an epoch, and the
sample manifest (every image's hash, caption, samples per epoch, bucket and crop) the runtime trains from."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers, Provenance
from sdxlc.plan import buckets as bk
from sdxlc.plan.manifest import Manifest, ManifestImage
from sdxlc.resolve import companions, manifest_reuse, snapshot
from sdxlc.resolve.balance import Balance, epoch_counts
from sdxlc.resolve.datasets import DATASET_DEFAULTS, ImageItem, Problem, ScanResult, is_manifest, scan_dataset
from sdxlc.resolve.index import Index
from sdxlc.resolve.validation import Held, hold_out

LISTED = 20  # bad inputs named one by one in a warning or an error; the rest are counted
CACHE_DIR = ".sdxlc-cache"
Placement = Callable[[int, int], bk.Bucket]  # (width, height) -> the image's bucket


@dataclass
class DataResolution:
    section: dict[str, Any]
    provenance: dict[str, Provenance] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bucket_sizes: list[int] = field(default_factory=list)
    manifest: Manifest = field(default_factory=lambda: Manifest(()))
    validation: Held | None = None  # the validation images (`validate`), held out before the balance


@snapshot.gc_paused
def resolve_data(layers: Layers, recipe_dir: Path, batch_size: int) -> DataResolution:
    """Scan every dataset, place each image in its bucket and count samples and batches per bucket."""
    provenance: dict[str, Provenance] = {}
    cache = _cache(layers, recipe_dir, provenance)
    index = Index.in_dir(cache["dir"])
    datasets, items, res = _datasets(layers, recipe_dir, index, cache["dir"])
    index.save()
    res.provenance.update(provenance)
    size, size_from = layers.get("resolution.size")
    enabled, enabled_from = layers.get("resolution.buckets")
    lo, lo_from = layers.get("resolution.min")
    hi, hi_from = layers.get("resolution.max")
    step, step_from = layers.get("resolution.step")
    no_upscale, no_upscale_from = layers.get("resolution.no_upscale")
    res.provenance.update(
        {
            "data.images": {"source": "derived", "at": None},
            "data.samples_per_epoch": {"source": "derived", "at": None},
            "data.resolution": size_from,
            "data.buckets.enabled": enabled_from,
            "data.buckets.min": lo_from,
            "data.buckets.max": hi_from,
            "data.buckets.step": step_from,
            "data.buckets.no_upscale": no_upscale_from,
            "data.buckets.table": {"source": "derived", "at": None},
        }
    )
    bucket_list = bk.make_buckets(size, lo, hi, step) if enabled else [(size, size)]
    if not bucket_list:
        res.diagnostics.append(
            make(
                "SDX0504",
                f"no bucket fits between {lo} and {hi} at resolution {size}",
                layers.span("resolution.min") or layers.span("resolution") or layers.anchor(),
                help="widen `buckets MIN..MAX`, or `no buckets` for square images only",
            )
        )
        bucket_list = [(size, size)]
    top = hi if enabled else size
    placement = _memo(partial(bk.place, buckets=bucket_list, no_upscale=bool(no_upscale), resolution=size,
                              step=step, max_side=top))
    items, res.validation = hold_out(layers, recipe_dir, index, datasets, items, placement)
    res.diagnostics.extend(res.validation.diagnostics if res.validation else [])
    res.warnings.extend(res.validation.warnings if res.validation else [])
    balance = epoch_counts(items, datasets)
    res.warnings.extend(_balance(layers, datasets, items, balance, res))
    table = _bucket_table(items, balance.counts, placement, batch_size)
    res.warnings.extend(_upscaled(items, placement))
    res.bucket_sizes = [row["samples"] for row in table]
    samples = sum(res.bucket_sizes)
    res.manifest = _manifest(items, balance.counts, placement, cache["dir"])
    _RESOLVED.clear()
    _RESOLVED[res.manifest.sha256] = [(item.width, item.height) for item in items]
    res.section = {
        "datasets": datasets,
        "resolution": size,
        "buckets": {
            "enabled": bool(enabled),
            "min": lo,
            "max": hi,
            "step": step,
            "no_upscale": bool(no_upscale),
            "table": [{k: row[k] for k in ("width", "height", "images", "batches")} for row in table],
        },
        "cache": cache,
        "images": len(items),
        "held_out": res.validation.held_out if res.validation else 0,
        "samples_per_epoch": samples,
        "manifest": res.manifest.summary(),
    }
    res.provenance["data.manifest"] = {"source": "derived", "at": None}
    res.provenance["data.held_out"] = {"source": "derived", "at": None}
    return res


def manifest(items: list[ImageItem], counts: list[int], placement: Placement) -> Manifest:
    """Every image as the run will train it: hash, caption and its source, samples per epoch, bucket, crop."""
    crops: dict[tuple[int, int], tuple[bk.Bucket, bk.Crop]] = {}
    entries = []
    for item, count in zip(items, counts, strict=True):
        shape = (item.width, item.height)
        placed = crops.get(shape)
        if placed is None:
            bucket = placement(*shape)
            placed = crops[shape] = (bucket, bk.cover_crop(*shape, bucket))
        entries.append(ManifestImage(
            item.path, item.sha256, item.size, item.width, item.height, item.dataset, item.caption,
            item.caption_source, count, *placed, item.mask, item.mask_sha256, item.control,
            item.control_sha256,
        ))
    return Manifest(tuple(entries))


def _manifest(
    items: list[ImageItem], counts: list[int], placement: Placement, cache_dir: str | None
) -> Manifest:
    """`manifest`, its text read back from the cache folder's store when an earlier plan made it from
    the same images, counts, buckets and crops (sdxlc/resolve/manifest_reuse.py)."""
    placed = {}
    for shape in {(item.width, item.height) for item in items}:
        bucket = placement(*shape)
        placed[shape] = (bucket, bk.cover_crop(*shape, bucket))
    key = manifest_reuse.manifest_key(items, counts, placed)

    def make() -> Manifest:
        return manifest(items, counts, placement)

    known = manifest_reuse.reuse(key, cache_dir, len(items), sum(counts), make)
    if known is not None:
        return known
    made = make()
    manifest_reuse.remember(key, cache_dir, made)
    return made


# The image sizes of the manifest `resolve_data` made last in this process, by its sha256:
# `bucket_details` reads the plan's images from it instead of scanning the datasets again.
_RESOLVED: dict[str, list[tuple[int, int]]] = {}


def bucket_details(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-bucket report for `sdxlc plan`: images, mean aspect error and share of pixels cropped."""
    placement = bk.plan_placement(plan["data"])
    rows: dict[tuple[int, int], list[float]] = {  # images, summed aspect error, summed cropped share
        (row["width"], row["height"]): [0, 0.0, 0.0] for row in plan["data"]["buckets"]["table"]
    }
    for (width, height), count in Counter(_plan_shapes(plan)).items():  # a few distinct sizes
        bucket = placement(width, height)
        stats = rows[bucket]
        stats[0] += count
        stats[1] += count * bk.aspect_error(width, height, bucket)
        stats[2] += count * bk.cropped_fraction(width, height, bucket)
    details = []
    for row in plan["data"]["buckets"]["table"]:
        n, errors, cropped = rows[(row["width"], row["height"])]
        details.append({**row, "aspect_error": errors / max(1, n), "cropped": cropped / max(1, n)})
    return details


def _plan_shapes(plan: dict[str, Any]) -> list[tuple[int, int]]:
    """(width, height) of every image of the plan: from its manifest when this process resolved it,
    else from a scan of its datasets through the index."""
    known = _RESOLVED.get(plan["data"]["manifest"]["sha256"])
    if known is not None:
        return known
    index = Index.in_dir(plan["data"]["cache"]["dir"])
    shapes = []
    for number, dataset in enumerate(plan["data"]["datasets"]):
        scan = scan_dataset(Path(dataset["path"]), dataset["caption_ext"], number, index=index)
        companions.pair(scan, dataset["path"], dataset.get("mask"), dataset.get("control"), index)
        shapes += [(item.width, item.height) for item in scan.items]
    return shapes


def _memo(placement: Placement) -> Placement:
    """`placement` remembered per image size (a dataset holds few distinct sizes)."""
    placed: dict[tuple[int, int], bk.Bucket] = {}

    def place(width: int, height: int) -> bk.Bucket:
        bucket = placed.get((width, height))
        if bucket is None:
            bucket = placed[(width, height)] = placement(width, height)
        return bucket

    return place


def _datasets(
    layers: Layers, recipe_dir: Path, index: Index, cache_dir: str | None = None
) -> tuple[list[dict[str, Any]], list[ImageItem], DataResolution]:
    res = DataResolution(section={})
    given = layers.doc.get("data") or []
    if not given:
        res.diagnostics.append(
            make(
                "SDX0501",
                "the recipe names no training data",
                layers.anchor(),
                help='add a line such as `data "images/my_concept" repeat 10`',
            )
        )
    datasets: list[dict[str, Any]] = []
    items: list[ImageItem] = []
    for number, entry in enumerate(given):
        base = layers.base_dir(f"data.{number}.path", recipe_dir)
        source = (base / entry["path"]).resolve()
        resolved = {**DATASET_DEFAULTS, **entry, "path": str(source)}
        resolved["source"] = "manifest" if is_manifest(source) else "folder"
        for key in DATASET_DEFAULTS:
            res.provenance[f"data.datasets.{number}.{key}"] = (
                layers.origin(f"data.{number}.{key}") if key in entry else {"source": "default", "at": None}
            )
        for key in ("images", "samples", "source"):
            res.provenance[f"data.datasets.{number}.{key}"] = {"source": "derived", "at": None}
        res.provenance[f"data.datasets.{number}.path"] = layers.origin(f"data.{number}.path")
        span = layers.span(f"data.{number}.path")
        if not (source.is_dir() or is_manifest(source)):
            res.diagnostics.append(
                make(
                    "SDX0502",
                    f"dataset folder `{entry['path']}` does not exist",
                    span,
                    help=f"looked for {source} (a folder, or a .jsonl/.csv manifest)",
                )
            )
            resolved.update(images=0, samples=0, mask=None, control=None, masks_missing=0, control_pairs=0,
                            control_missing=0)
            datasets.append(resolved)
            continue
        scan = snapshot.scan(source, resolved, number, index, cache_dir)
        _companions(layers, number, base, resolved, scan, index, res)
        _report(entry["path"], resolved, scan, span, res)
        resolved["images"] = len(scan.items)
        datasets.append(resolved)
        items.extend(scan.items)
    return datasets, items, res


def _companions(layers: Layers, number: int, base: Path, resolved: dict[str, Any], scan: ScanResult,
                index: Index, res: DataResolution) -> None:
    """The dataset's masks and control images (sdxlc/resolve/companions.py): paired in place, counted."""
    for key in ("mask", "control"):
        folder = layers.base_dir(f"data.{number}.{key}", base)
        resolved[key] = companions.folder_setting(resolved[key], folder, alpha=key == "mask")
    pairing = companions.pair(scan, resolved["path"], resolved["mask"], resolved["control"], index)
    resolved.update(pairing.counts())
    for key in ("masks_missing", "control_pairs", "control_missing"):
        res.provenance[f"data.datasets.{number}.{key}"] = {"source": "derived", "at": None}
    spans = {key: layers.span(f"data.{number}.{key}") or layers.span(f"data.{number}.path")
             for key in ("mask", "control")}
    res.diagnostics.extend(companions.diagnostics(pairing, layers.doc["data"][number]["path"],
                                                  resolved["mask"], spans))


def _report(
    name: str, resolved: dict[str, Any], scan: ScanResult, span: Any, res: DataResolution
) -> None:
    """Bad inputs: skipped with one summary warning, or an error listing them under `on bad image fail`."""
    if scan.problems and resolved["bad_image"] == "fail":
        res.diagnostics.append(
            make(
                "SDX0530",
                f"{len(scan.problems)} bad input file(s) in `{name}`: " + _listing(scan.problems),
                span,
                help="fix or remove them, or use `on bad image skip` to train without them",
            )
        )
    elif scan.problems:
        listing = _listing(scan.problems)
        res.warnings.append(f"skipped {len(scan.problems)} bad input file(s) in {name}: {listing}")
    if scan.folder_captions:
        res.warnings.append(
            f"{scan.folder_captions} image(s) in {name} have no {resolved['caption_ext']} caption and train "
            "with their kohya folder's class tokens (`10_sks dog` → `sks dog`)"
        )
    if scan.missing_captions:
        fallback = resolved["default_caption"]
        train_with = f"the default caption {fallback!r}" if fallback else "an empty caption"
        res.warnings.append(
            f"{scan.missing_captions} image(s) in {name} have no {resolved['caption_ext']} caption "
            f"and train with {train_with}"
        )
    if not scan.items:
        res.diagnostics.append(
            make(
                "SDX0503",
                f"dataset `{name}` holds no readable image"
                + (f"; {len(scan.problems)} bad: {_listing(scan.problems)}" if scan.problems else ""),
                span,
                help="supported: png, jpg, webp, bmp, gif, tiff and whatever else Pillow reads",
            )
        )


def _listing(problems: list[Problem]) -> str:
    shown = "; ".join(str(p) for p in problems[:LISTED])
    more = len(problems) - LISTED
    return shown + (f"; … and {more} more" if more > 0 else "")


def _upscaled(items: list[ImageItem], placement: Placement) -> list[str]:
    """Images smaller than their bucket: trained upscaled, with one warning naming them."""
    shapes = Counter((item.width, item.height) for item in items)  # a dataset holds few distinct sizes
    placed = {shape: placement(*shape) for shape in shapes}
    upscaled = {(w, h): bucket for (w, h), bucket in placed.items() if w < bucket[0] or h < bucket[1]}
    count = sum(shapes[shape] for shape in upscaled)
    if not count:
        return []
    small = []
    for item in items:
        bucket = upscaled.get((item.width, item.height))
        if bucket is not None:
            small.append(f"{item.path} ({item.width}x{item.height} < {bucket[0]}x{bucket[1]})")
            if len(small) == LISTED:
                break
    more = f"; … and {count - LISTED} more" if count > LISTED else ""
    return [f"{count} image(s) are smaller than their bucket and are upscaled: " + "; ".join(small) + more]


def _balance(
    layers: Layers, datasets: list[dict[str, Any]], items: list[ImageItem], balance: Balance,
    res: DataResolution,
) -> list[str]:
    """Each dataset's samples per epoch after the regularization balance; what the balance left out."""
    for dataset in datasets:
        dataset["samples"] = 0
    for item, samples in zip(items, balance.counts, strict=True):
        datasets[item.dataset]["samples"] += samples
    if not balance.reg_images:
        return []
    if not balance.train_samples:
        first = next(n for n, d in enumerate(datasets) if d["regularization"])
        res.diagnostics.append(
            make(
                "SDX0531",
                "every dataset is `as regularization`: there is nothing to balance them against",
                layers.span(f"data.{first}.path"),
                help="add the training images as a dataset of their own, without `as regularization`",
            )
        )
        return []
    unused = balance.reg_images - balance.reg_images_used
    if not unused:
        return []
    return [f"regularization: {balance.reg_images_used} of {balance.reg_images} images give the "
            f"{balance.reg_samples} samples that balance the {balance.train_samples} training samples; "
            f"the other {unused} are never used (add training repeats to use more)"]


def _bucket_table(
    items: list[ImageItem], counts_per_image: list[int], placement: Placement, batch_size: int
) -> list[dict[str, Any]]:
    """Images, samples and batches per bucket, in aspect order (the order `make_buckets` gives). Images
    that give no sample (regularization images past the balance) are left out."""
    counts: dict[bk.Bucket, list[int]] = {}
    shapes = Counter(zip([(item.width, item.height) for item in items], counts_per_image, strict=True))
    for (shape, samples), images in shapes.items():  # a few distinct (size, samples) pairs
        if not samples:
            continue
        count = counts.setdefault(placement(*shape), [0, 0])
        count[0] += images
        count[1] += images * samples
    table = []
    for (width, height), (images, samples) in sorted(counts.items(), key=_aspect_order):
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


def _aspect_order(entry: tuple[bk.Bucket, list[int]]) -> tuple[float, int]:
    (width, height), _ = entry
    return width / height, width


def _cache(layers: Layers, recipe_dir: Path, provenance: dict[str, Provenance]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for key in ("text_encoder", "latents", "to_disk"):
        value, origin = layers.get(f"cache.{key}")
        section[key] = bool(value)
        provenance[f"data.cache.{key}"] = origin
    section["dir"] = os.path.realpath(recipe_dir / CACHE_DIR)  # a symlink loop stays a path, never a crash
    provenance["data.cache.dir"] = {"source": "default", "at": None}
    return section
