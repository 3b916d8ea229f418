"""How many samples each image gives an epoch: its repeats, with regularization balanced to training.

Shared by the compiler (step arithmetic, bucket table) and the runtime (the samples it trains), so the
plan's counts are the run's. The rule is kohya-ss/sd-scripts' (`DreamBoothDataset`), which SDXL users
compare step counts against: regularization images, in dataset and file order, first each with its own
repeats, then one more each in turn, until they give as many samples as the training images do. Images
past that point give none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdxlc.resolve.datasets import ImageItem


@dataclass(frozen=True)
class Balance:
    counts: list[int]  # samples per epoch of each image, in the order given
    train_samples: int
    reg_samples: int
    reg_images: int  # regularization images found
    reg_images_used: int  # of those, the ones that give at least one sample


def epoch_counts(items: Sequence[ImageItem], datasets: Sequence[dict[str, Any]]) -> Balance:
    """Samples per epoch of every image (see the module docstring)."""
    own = [int(datasets[item.dataset]["repeat"]) * item.repeat for item in items]
    is_reg = [bool(datasets[item.dataset]["regularization"]) for item in items]
    train = sum(n for n, reg in zip(own, is_reg, strict=True) if not reg)
    reg = [i for i, flag in enumerate(is_reg) if flag]
    counts = [0 if flag else n for n, flag in zip(own, is_reg, strict=True)]
    given = 0
    for i in reg:  # first pass: each image with its own repeats
        if given >= train:
            break
        counts[i] = own[i]
        given += own[i]
    if reg and given < train:  # then one more sample each, in turn, until the training samples are met
        rounds, extra = divmod(train - given, len(reg))
        for position, i in enumerate(reg):
            counts[i] += rounds + (position < extra)
        given = train
    used = sum(1 for i in reg if counts[i] > 0)
    return Balance(counts, train, given, len(reg), used)
