"""`sdxlc export kohya` for masks, control images and validation: a data line's `mask alpha` as the
subset's `alpha_mask`, `mask "dir"` as its `conditioning_data_dir` with `masked_loss`, and `validate`
as `validation_split`, `validation_seed` and `validate_every_n_steps` / `validate_every_n_epochs`.

sd-scripts' schema for a subset with `conditioning_data_dir` (a ControlNet dataset) has no `is_reg` or
`class_tokens`, and a dataset is a ControlNet dataset only when every subset has one: such subsets go
into a `[[datasets]]` of their own (export.py renders them so).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

Table = dict[str, Any]
CONDITIONING = "conditioning_data_dir"
_VALIDATING_KINDS = ("lora",)  # sd-scripts validates in train_network.py (sdxl_train_network.py) only


def subsets(plan: dict[str, Any], dataset: dict[str, Any], found: list[Table],
            lacks: list[str]) -> list[Table]:
    """The kohya subsets of one dataset with its mask (or control images) added."""
    mask, lllite = dataset.get("mask"), plan["method"]["kind"] == "lllite"
    path = dataset["path"]
    if mask and lllite:
        lacks.append(f"masked loss in LLLite training (mask on {path})")
    elif mask == "alpha":
        for subset in found:
            subset["alpha_mask"] = True
    elif mask and dataset["regularization"]:
        lacks.append(f'mask folder on regularization data (mask "{mask}" on {path}): a kohya subset with '
                     "conditioning_data_dir cannot be is_reg")
    elif mask:
        for subset in found:
            # a `10_dog` sub-folder's masks: `masks/10_dog` when there is one, as sdxlc looks there first
            below = Path(mask) / Path(subset["image_dir"]).relative_to(path)
            subset[CONDITIONING] = str(below) if subset["image_dir"] != path and below.is_dir() else mask
    for subset in found:
        if CONDITIONING in subset:
            _controlnet_subset(subset, path, lacks)
    return found


def _controlnet_subset(subset: Table, path: str, lacks: list[str]) -> None:
    subset.pop("is_reg", None)
    tokens = subset.pop("class_tokens", None)
    if tokens:
        lacks.append(f"class tokens in a subset with conditioning_data_dir ({tokens!r} in {path}): caption "
                     "every image there")
    if subset.get("random_crop"):
        lacks.append(f"random crop in a subset with conditioning_data_dir ({path})")


def masked_loss(plan: dict[str, Any]) -> Table:
    """`masked_loss = true` when a dataset has a mask folder (a network script reads it then only)."""
    folders = [d for d in plan["data"]["datasets"] if d.get("mask") not in (None, "alpha")]
    return {"masked_loss": True} if folders and plan["method"]["kind"] != "lllite" else {}


def validation(plan: dict[str, Any], lacks: list[str]) -> tuple[Table, Table]:
    """(training-config keys, dataset `[general]` keys) of the plan's `validate`."""
    validate = plan.get("validate")
    if not validate:
        return {}, {}
    kind = plan["method"]["kind"]
    if kind not in _VALIDATING_KINDS:
        lacks.append("validation loss (`validate`) for this method: only sdxl_train_network.py validates")
        return {}, {}
    if validate.get("folder"):
        lacks.append(f"validation folder (`validate \"{validate['folder']}\"`): validation_split holds out "
                     "training images only")
    fraction = validate.get("fraction")
    if not fraction:
        if validate.get("held_out"):
            lacks.append(f"split by image count (`split {validate['held_out']}`): validation_split is a "
                         "share")
        return {}, {}
    training = plan["training"]
    epochs = max(1, math.ceil(training["total_steps"] / max(1, training["steps_per_epoch"])))
    config: Table = {"validate_every_n_epochs": epochs}  # kohya validates every epoch unless told: the end
    if validate.get("every_steps"):
        config["validate_every_n_steps"] = validate["every_steps"]
    return config, {"validation_split": fraction, "validation_seed": validate["seed"]}
