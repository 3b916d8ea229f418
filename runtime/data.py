"""Datasets to batches: scan the folders, place images in the plan's buckets, load and crop pixels.

The bucket placement and the batch order come from `sdxlc.buckets`, the same code the compiler used
to count the plan's steps, so the batches built here are the ones the plan counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from runtime import RunError
from sdxlc import buckets as bk
from sdxlc.datasets import ImageItem, scan_dataset


@dataclass(frozen=True)
class Sample:
    """One image as it is trained: its bucket and where the bucket is cut from the resized image."""

    image: int  # index into TrainData.images
    bucket: bk.Bucket
    crop: bk.Crop


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    captions: list[str]
    time_ids: torch.Tensor  # (B, 6): original h, w; crop top, left; target h, w
    keys: list[tuple[int, bool]]  # (image index, flipped): what the latents depend on


@dataclass
class TrainData:
    images: list[ImageItem]
    samples: list[Sample]
    datasets: list[dict[str, Any]]
    batch_size: int
    seed: int

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches (lists of sample indices) of one epoch, in training order."""
        return bk.epoch_batches([s.bucket for s in self.samples], self.batch_size, self.seed, epoch)


def plan_buckets(data: dict[str, Any]) -> list[bk.Bucket]:
    if not data["buckets"]["enabled"]:
        return [(data["resolution"], data["resolution"])]
    return [(row["width"], row["height"]) for row in data["buckets"]["table"]]


def scan_images(datasets: list[dict[str, Any]]) -> list[ImageItem]:
    images: list[ImageItem] = []
    for index, dataset in enumerate(datasets):
        found = scan_dataset(Path(dataset["path"]), dataset["caption_ext"], index).items
        if not found:
            raise RunError(f"dataset {dataset['path']} holds no readable image")
        if len(found) != dataset["images"]:
            raise RunError(f"dataset {dataset['path']} now holds {len(found)} images, the plan counted "
                           f"{dataset['images']}: make the plan again")
        images.extend(found)
    return images


def setup_data(plan: dict[str, Any]) -> TrainData:
    """Scan every dataset and place each sample (images repeated per dataset) in its bucket."""
    data, training = plan["data"], plan["training"]
    images = scan_images(data["datasets"])
    buckets = plan_buckets(data)
    samples: list[Sample] = []
    for dataset_index, dataset in enumerate(data["datasets"]):
        members = [i for i, item in enumerate(images) if item.dataset == dataset_index]
        for _ in range(dataset["repeat"]):
            for i in members:
                bucket = bk.assign(images[i].width, images[i].height, buckets)
                samples.append(Sample(i, bucket, bk.cover_crop(images[i].width, images[i].height, bucket)))
    result = TrainData(images, samples, data["datasets"], training["batch_size"], training["seed"])
    if len(result.epoch(0)) != training["batches_per_epoch"]:
        raise RunError(f"the data gives {len(result.epoch(0))} batches per epoch, the plan counted "
                       f"{training['batches_per_epoch']}: make the plan again")
    return result


def load_pixels(item: ImageItem, crop: bk.Crop, bucket: bk.Bucket, flip: bool) -> torch.Tensor:
    """The image resized to cover the bucket, cut at the crop, maybe mirrored: (3, H, W) in [-1, 1]."""
    try:
        with Image.open(item.path) as raw:
            image = ImageOps.exif_transpose(raw).convert("RGB")
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read image {item.path}: {exc}") from exc
    image = image.resize((crop.scaled_w, crop.scaled_h), Image.Resampling.LANCZOS)
    image = image.crop((crop.left, crop.top, crop.left + bucket[0], crop.top + bucket[1]))
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def time_ids(item: ImageItem, crop: bk.Crop, bucket: bk.Bucket, flip: bool) -> list[int]:
    """SDXL size conditioning: original (h, w), crop (top, left) in the resized image, target (h, w)."""
    left = crop.scaled_w - bucket[0] - crop.left if flip else crop.left
    return [item.height, item.width, crop.top, left, bucket[1], bucket[0]]


def process_caption(caption: str, dataset: dict[str, Any], rng: random.Random) -> str:
    """Caption dropout, then tag shuffling that keeps the first `keep_tokens` comma-separated tags."""
    if dataset["caption_dropout"] > 0 and rng.random() < dataset["caption_dropout"]:
        return ""
    if not dataset["shuffle"]:
        return caption
    tags = [t.strip() for t in caption.split(",")]
    head, tail = tags[: dataset["keep_tokens"]], tags[dataset["keep_tokens"]:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def make_batch(data: TrainData, indices: list[int], rng: random.Random, pixels: bool = True) -> Batch:
    """Captions, size conditioning and (unless latents are cached) pixels for the given samples."""
    captions, ids, keys, tensors = [], [], [], []
    for index in indices:
        sample = data.samples[index]
        item = data.images[sample.image]
        dataset = data.datasets[item.dataset]
        flip = dataset["flip"] and rng.random() < 0.5
        captions.append(process_caption(item.caption, dataset, rng))
        ids.append(time_ids(item, sample.crop, sample.bucket, flip))
        keys.append((sample.image, flip))
        if pixels:
            tensors.append(load_pixels(item, sample.crop, sample.bucket, flip))
    stacked = torch.stack(tensors) if tensors else torch.empty(0)
    return Batch(stacked, captions, torch.tensor(ids, dtype=torch.float32), keys)


def all_captions(data: TrainData) -> list[str]:
    """Every caption a batch can carry (the empty one too when captions drop out)."""
    captions = {item.caption for item in data.images}
    if any(d["caption_dropout"] > 0 for d in data.datasets):
        captions.add("")
    return sorted(captions)

