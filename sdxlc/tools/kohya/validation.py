"""Validation loss: kohya's `validation_split` and `validation_seed` (dataset keys or flags) with
`validate_every_n_steps` / `validate_every_n_epochs` as `validate every N steps split P% seed S`.

sd-scripts' network training (train_network.py, so sdxl_train_network.py) holds out `validation_split` of
each training subset's images (never the regularization ones) and computes a validation loss every
`validate_every_n_steps` steps and, unless `validate_every_n_epochs` says otherwise, at every epoch's end.
Without a split there is no validation dataset, and the cadence does nothing.
"""

from __future__ import annotations

from sdxlc.tools.kohya.build import Builder, num, to_number
from sdxlc.tools.kohya.data import _lookup
from sdxlc.tools.kohya.model import Subset

KEYS = ("validation_split", "validation_seed", "validate_every_n_steps", "validate_every_n_epochs",
        "max_validation_steps")


def map_validate(b: Builder) -> None:
    b.used.update(KEYS)
    subsets = [s for s in b.config.subsets if not _reg(s)] or [Subset({}, "")]  # flags: train_data_dir
    shares = {to_number("validation_split", _lookup(b, s.params, "validation_split"), s.origin) or 0.0
              for s in subsets}
    seeds = {str(_lookup(b, s.params, "validation_seed")) for s in subsets} - {"None", ""}
    split = max(shares)
    if split <= 0 or split >= 1:
        for key in ("validate_every_n_steps", "validate_every_n_epochs"):
            if b.has(key):
                b.note(key, b.config.get(key), "no validation_split: kohya validates nothing", changes=False)
        if split >= 1:
            b.note("validation_split", split, "must be below 1: kohya splits nothing")
        return
    if len(shares) > 1:
        b.note("validation_split", ", ".join(num(s) for s in sorted(shares)),
               f"differs between datasets; sdxlc holds out one share of all training images: {num(split)}")
    b.remarks.append("kohya holds out validation_split of each subset at random; sdxlc the same share of all "
                     "training images, by a hash of each image (docs/TRAINING.md \"Validation loss\")")
    words = ["validate"]
    steps = b.integer("validate_every_n_steps")
    epochs = b.integer("validate_every_n_epochs")
    if steps:
        words += ["every", str(steps), "steps"]
        if not epochs:
            b.remarks.append("kohya also validates at the end of every epoch; sdxlc every "
                             f"{steps} steps and after the last")
    else:
        words += ["every", str(epochs or 1), "epochs"]
    percent = round(split * 100, 6)
    words += ["split", f"{num(float(percent))}%"]
    if len(seeds) > 1:
        b.note("validation_seed", ", ".join(sorted(seeds)), "differs between datasets; sdxlc has one")
    if seeds:
        seed = to_number("validation_seed", sorted(seeds)[0], "the validation seed")
        words += ["seed", str(int(seed or 0))]
    if b.has("max_validation_steps"):
        b.note("max_validation_steps", b.config.get("max_validation_steps"),
               "sdxlc validates on every held-out image", changes=False)
    b.add(" ".join(words))


def _reg(subset: Subset) -> bool:
    value = subset.params.get("is_reg")
    return value is True or str(value).lower() == "true"
