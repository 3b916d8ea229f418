"""Datasets, resolution and buckets: kohya's subsets (or `train_data_dir`) as `data` and `resolution`.

A subset key comes from the subset, its dataset, `[general]`, then the command-line flag of the same
name, then sd-scripts' default (`caption_extension` is `.caption` there).
"""

from __future__ import annotations

import math
from typing import Any

from sdxlc.tools.kohya import control
from sdxlc.tools.kohya.build import Builder, num, quote, to_number, word_or_string
from sdxlc.tools.kohya.model import KohyaError, Subset, is_unset

# subset keys with a recipe clause: kohya key → (clause, kind)
SUBSET_CLAUSES = {
    "num_repeats": ("repeat", "int"), "caption_extension": ("caption", "word"),
    "shuffle_caption": ("shuffle", "flag"), "keep_tokens": ("keep", "int"),
    "caption_dropout_rate": ("dropout", "number"), "caption_tag_dropout_rate": ("tag dropout", "number"),
    "flip_aug": ("flip", "flag"), "random_crop": ("random crop", "flag"),
    "caption_separator": ("separator", "string"), "caption_prefix": ("prefix", "string"),
    "caption_suffix": ("suffix", "string"), "class_tokens": ("default caption", "string"),
}
DEFAULTS: dict[str, Any] = {"num_repeats": 1, "caption_extension": ".caption", "keep_tokens": 0,
                            "caption_dropout_rate": 0.0, "caption_tag_dropout_rate": 0.0,
                            "caption_separator": ","}
# subset keys sdxlc has no clause for, and the value at which they do nothing
SUBSET_UNMAPPED: dict[str, Any] = {
    "color_aug": False, "face_crop_aug_range": None, "keep_tokens_separator": "", "secondary_separator": None,
    "enable_wildcard": False, "caption_dropout_every_n_epochs": 0, "token_warmup_min": 1,
    "token_warmup_step": 0, "resize_interpolation": None, "custom_attributes": None,
    "network_multiplier": 1.0, "metadata_file": None,
}  # alpha_mask and conditioning_data_dir: control.py; validation_split and validation_seed: validation.py
DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale")
_FLAG_NAMES = {"batch_size": "train_batch_size", "caption_extension": "caption_extension"}


def map_data(b: Builder) -> dict[str, Any]:
    """Writes the `data` lines; returns the dataset-level settings (resolution, batch, buckets)."""
    b.used.add("dataset_config")
    subsets = b.config.subsets or _folder_subsets(b)
    if not subsets:  # a preset: the data line keeps its settings, with a stand-in folder
        b.remarks.append('no train_data_dir or dataset config: `data "images"` stands for the image folder')
        subsets = [Subset({"image_dir": "images", "_folders": True}, "")]
    lllite = control.is_lllite(b)
    for subset in subsets:
        b.add(_data_line(b, subset, lllite))
    control.note_unread(b)
    return _dataset_level(b, subsets)


def _folder_subsets(b: Builder) -> list[Subset]:
    """`--train_data_dir` (folders `<N>_<tokens>`, read by sdxlc the same way) and `--reg_data_dir`."""
    found = []
    for key, reg in (("train_data_dir", False), ("reg_data_dir", True)):
        folder = b.take(key)
        if folder:
            origin = b.config.settings[key].origin
            found.append(Subset({"image_dir": str(folder), "is_reg": reg, "_folders": True}, origin))
    return found


def _lookup(b: Builder, params: dict[str, Any], key: str) -> Any:
    if key in params and not is_unset(params[key]):
        return params[key]
    flag = _FLAG_NAMES.get(key, key)
    if b.has(flag):
        return b.take(flag)
    if key == "caption_extension" and b.has("caption_extention"):  # sd-scripts' old spelling
        return b.take("caption_extention")
    b.used.add(flag)
    return DEFAULTS.get(key)


def _data_line(b: Builder, subset: Subset, lllite: bool = False) -> str:
    params = subset.params
    words = ["data", quote(b.path(str(params["image_dir"]), subset.origin))]
    for key, (clause, kind) in SUBSET_CLAUSES.items():
        if params.get("_folders") and key in ("num_repeats", "class_tokens"):
            continue  # sdxlc reads them from the `<N>_<tokens>` folder names, as kohya does
        value = _lookup(b, params, key)
        if is_unset(value) or (value == DEFAULTS.get(key, object()) and key != "caption_extension"):
            continue
        words.append(_clause(clause, kind, key, value, subset.origin))
    words = [word for word in words if word]
    if _truthy(_lookup(b, params, "is_reg")):
        words.append("as regularization")
        weight = to_number("prior_loss_weight", _lookup(b, params, "prior_loss_weight"), subset.origin)
        if weight is not None and weight != 1:
            words.append(f"loss weight {num(weight)}")
    words += control.data_clauses(b, params, subset.origin, lllite)
    for key, inert in SUBSET_UNMAPPED.items():
        value = _lookup(b, params, key)
        if value is not None and value != inert and not is_unset(value):
            b.note(key, value, "sdxlc has no such data setting")
    return " ".join(words)


def _clause(clause: str, kind: str, key: str, value: Any, origin: str) -> str:
    if kind == "flag":
        return clause if _truthy(value) else ""
    if kind in ("int", "number"):
        number = to_number(key, value, origin)
        assert number is not None
        if kind == "int" and not float(number).is_integer():
            raise KohyaError(f"{origin}: {key} = {value} must be a whole number")
        return f"{clause} {num(int(number) if kind == 'int' else number)}"
    if kind == "word":
        return f"{clause} {word_or_string(str(value))}"
    return f"{clause} {quote(str(value))}"


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _dataset_level(b: Builder, subsets: list[Subset]) -> dict[str, Any]:
    """Resolution, batch and buckets: one value for all datasets (sdxlc has one of each)."""
    chosen: dict[str, Any] = {}
    for key in DATASET_KEYS:
        values = [_lookup(b, s.params, key) for s in subsets]
        distinct = {str(v) for v in values}
        if len(distinct) > 1:
            b.note(key, ", ".join(sorted(distinct)), "differs between datasets; sdxlc has one value: "
                   f"{values[0]} is used")
        chosen[key] = values[0]
    return chosen


def map_resolution(b: Builder, level: dict[str, Any]) -> None:
    size = _resolution(b, level.get("resolution"))
    if size is None:
        b.note("resolution", None, "not given: sdxlc trains at the model's 1024", changes=False)
        return
    words = ["resolution", str(size)]
    if _truthy(level.get("enable_bucket")):
        low = int(to_number("min_bucket_reso", level.get("min_bucket_reso") or 256, "bucket") or 256)
        high = int(to_number("max_bucket_reso", level.get("max_bucket_reso") or 1024, "bucket") or 1024)
        step = int(to_number("bucket_reso_steps", level.get("bucket_reso_steps") or 64, "bucket") or 64)
        words += ["buckets", f"{low}..{high}", "step", str(step)]
        if _truthy(level.get("bucket_no_upscale")):
            words.append("no upscale")
    else:
        words.append("no buckets")
    b.add(" ".join(words))


def _resolution(b: Builder, value: Any) -> int | None:
    if is_unset(value):
        return None
    parts = value if isinstance(value, list) else str(value).replace("x", ",").split(",")
    try:
        sides = [int(float(str(p).strip())) for p in parts if str(p).strip()]
    except ValueError:
        raise KohyaError(f"resolution {value!r} is not `size` or `width,height`") from None
    if len(sides) == 1:
        return sides[0]
    if len(sides) != 2:
        raise KohyaError(f"resolution {value!r} is not `size` or `width,height`")
    if sides[0] != sides[1]:
        side = int(math.sqrt(sides[0] * sides[1])) // 8 * 8
        b.note("resolution", f"{sides[0]},{sides[1]}", f"not square; sdxlc trains at {side}² pixels")
        return side
    return sides[0]
