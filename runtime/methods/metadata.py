"""The metadata every saved file shares: kohya's `ss_*` keys of the data, the captions and the base
model, and the plan, in the form a file that leaves the machine may carry.

kohya (sd-scripts `train_network.py`) names dataset folders by their last part only, so do these keys.
The plan is stored without local paths (`sdxlc.plan.share`), and not at all with `save private`:
docs/RUNS.md lists every key and what it tells.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from sdxlc.plan.contract import canonical
from sdxlc.plan.share import share_value, shareable


def data_metadata(plan: dict[str, Any]) -> dict[str, str]:
    """kohya's dataset, caption, bucket and timestep keys."""
    data, training = plan["data"], plan["training"]
    datasets, buckets = data["datasets"], data["buckets"]
    reg = [d for d in datasets if d["regularization"]]
    train = [d for d in datasets if not d["regularization"]] or datasets
    return {
        "ss_num_train_images": str(sum(d["samples"] for d in datasets if not d["regularization"])),
        "ss_num_reg_images": str(sum(d["images"] for d in reg)),
        "ss_prior_loss_weight": str(reg[0]["loss_weight"] if reg else 1.0),
        "ss_min_timestep": str(training["timestep_min"]),
        "ss_max_timestep": str(training["timestep_max"]),
        "ss_shuffle_caption": _common(train, "shuffle"),
        "ss_keep_tokens": _common(train, "keep_tokens"),
        "ss_caption_dropout_rate": _common(train, "caption_dropout"),
        "ss_caption_dropout_every_n_epochs": "0",
        "ss_caption_tag_dropout_rate": _common(train, "tag_dropout"),
        "ss_flip_aug": _common(train, "flip"),
        "ss_random_crop": _common(train, "random_crop"),
        "ss_enable_bucket": str(buckets["enabled"]),
        "ss_min_bucket_reso": str(buckets["min"]),
        "ss_max_bucket_reso": str(buckets["max"]),
        "ss_bucket_no_upscale": str(buckets["no_upscale"]),
        "ss_datasets": json.dumps([_dataset(plan)]),
        "ss_dataset_dirs": json.dumps(_dirs([d for d in datasets if not d["regularization"]])),
        "ss_reg_dataset_dirs": json.dumps(_dirs(reg)),
    }


def _common(datasets: list[dict[str, Any]], key: str) -> str:
    """A caption setting as kohya's one value: the datasets' value when they agree, else `None` (each
    dataset's own value is in `ss_datasets`)."""
    values = {json.dumps(d[key]) for d in datasets}
    return str(datasets[0][key]) if len(values) == 1 else "None"


def folder_name(path: str) -> str:
    """A dataset's folder (or manifest file) by its last part, as kohya names it."""
    return PurePath(path).name or path


def _dataset(plan: dict[str, Any]) -> dict[str, Any]:
    """kohya's `ss_datasets` entry: one dataset (shared buckets and batch) whose subsets are the plan's
    datasets, each named by its folder's last part."""
    data, buckets = plan["data"], plan["data"]["buckets"]
    subsets = [{
        "img_count": d["images"], "num_repeats": d["repeat"], "color_aug": bool(d.get("color_jitter")),
        "flip_aug": d["flip"], "random_crop": d["random_crop"], "shuffle_caption": d["shuffle"],
        "keep_tokens": d["keep_tokens"], "caption_dropout_rate": d["caption_dropout"],
        "caption_tag_dropout_rate": d["tag_dropout"], "caption_prefix": d["prefix"] or None,
        "caption_suffix": d["suffix"] or None, "image_dir": folder_name(d["path"]),
        "is_reg": d["regularization"],
    } for d in data["datasets"]]
    return {
        "is_dreambooth": True, "batch_size_per_device": plan["training"]["batch_size"],
        "num_train_images": sum(d["samples"] for d in data["datasets"] if not d["regularization"]),
        "num_reg_images": sum(d["images"] for d in data["datasets"] if d["regularization"]),
        "resolution": [data["resolution"], data["resolution"]], "enable_bucket": buckets["enabled"],
        "min_bucket_reso": buckets["min"], "max_bucket_reso": buckets["max"], "subsets": subsets,
    }


def _dirs(datasets: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """kohya's `ss_dataset_dirs`: folder name → repeats and image count; a name seen twice gets ` (2)`."""
    dirs: dict[str, dict[str, int]] = {}
    for d in datasets:
        name, index = folder_name(d["path"]), 2
        while name in dirs:
            name, index = f"{folder_name(d['path'])} ({index})", index + 1
        dirs[name] = {"n_repeats": d["repeat"], "img_count": d["images"]}
    return dirs


def model_metadata(plan: dict[str, Any]) -> dict[str, str]:
    """The base model as kohya names it: the file or folder's last part (a hub id as it is), and the
    sha256 of a single-file checkpoint (`ss_new_sd_model_hash`)."""
    model = plan["model"]
    meta = {"ss_sd_model_name": _name(model["source"])}
    digest = single_file_sha256(model)
    if digest is not None:
        meta["ss_new_sd_model_hash"] = digest
    if model["vae"]:
        meta["ss_vae_name"] = _name(model["vae"])
    return meta


def _name(source: str) -> str:
    """A local file or folder by its last part; a hub id (or `tiny`) as it is."""
    return share_value(source, "")


def single_file_sha256(model: dict[str, Any]) -> str | None:
    """The sha256 the plan recorded of a single-file checkpoint, or None (a folder, a hub id, tiny)."""
    if model["kind"] not in ("single_file", "pickle"):
        return None
    found = [f["sha256"] for f in model["files"] if f["path"] == model["source"]]
    return found[0] if found else None


def plan_metadata(plan: dict[str, Any], lineage: list[str] | None) -> dict[str, str]:
    """The plan hash; unless the plan says `save private`, the plan without local paths and the hashes
    of the plans that trained the weights."""
    meta = {"sdxlc_plan_hash": plan["plan_hash"]}
    if not plan["save"]["private"]:
        meta["sdxlc_plan"] = canonical(shareable(plan))
        meta["sdxlc_lineage"] = ",".join(lineage or [plan["plan_hash"]])
    return meta
