"""The sample manifest to batches: the images the plan decided, checked against it, loaded and cropped.

Every image, its caption, samples per epoch, bucket and crop come from the plan's sample manifest
(`sdxlc.plan.manifest`); the batch order from `sdxlc.plan.buckets`, the same code the compiler used to
count the plan's steps. Nothing here scans a folder or places an image: the runtime trains what the
plan says. Before training, every image is checked to exist with the planned size; every time an
image's bytes are read, their sha256 is checked against the manifest, so a run never trains on an
image that changed since it was planned (it stops with `InputChanged`, which names the file). An image
whose planned bytes fail to decode is skipped with a warning and replaced by another sample of the same
bucket, so every batch keeps its size and bucket and the step count stays the plan's.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from runtime import InputChanged, RunError
from runtime.train import companions
from runtime.train.images import WHITE, place, to_rgb  # noqa: F401 (also cuts the image's companions)
from sdxlc.plan import buckets as bk
from sdxlc.plan import manifest as mf
from sdxlc.plan.manifest import Manifest, ManifestImage


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
    weights: list[float] = field(default_factory=list)  # each sample's loss weight (its dataset's)
    # images found undecodable while making the batch, with their warnings (runtime/train/loader.py)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    # loss mask (docs/DATA.md "Masked loss"): (B, 1, H, W) float32 in [0, 1] at pixel resolution, cut
    # and flipped like the pixels (1 = train, 0 = ignore); an image without a mask is all 1. None when
    # no dataset of the run has `mask`.
    mask: torch.Tensor | None = None
    # control image (docs/DATA.md "Control images"): (B, 3, H, W) float32 in [-1, 1] (the pixels' range;
    # kohya's LLLite training feeds its conditioning images to the network in [-1, 1] too), cut and
    # flipped like the pixels. None when no dataset of the run has `control`.
    control: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """The batch with its tensors in page-locked memory (DataLoader's `pin_memory`)."""
        pixels = self.pixels.pin_memory() if self.pixels.numel() else self.pixels
        mask = self.mask.pin_memory() if self.mask is not None else None
        control = self.control.pin_memory() if self.control is not None else None
        return replace(self, pixels=pixels, time_ids=self.time_ids.pin_memory(), mask=mask, control=control)


@dataclass
class TrainData:
    images: list[ManifestImage]
    samples: list[Sample]
    datasets: list[dict[str, Any]]
    batch_size: int
    seed: int
    bad: set[int] = field(default_factory=set)  # image indices that failed to decode during the run
    skips: list[tuple[int, str]] = field(default_factory=list)  # (image, warning) of each, in order found
    warnings: list[str] = field(default_factory=list)
    rank: int = 0  # this process among `world` training processes (docs/SCALE.md)
    world: int = 1
    masks: bool = False  # a dataset of the run has `mask`: batches carry masks (runtime/train/companions.py)
    controls: bool = False  # a dataset of the run has `control`: batches carry control images

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every batch (list of sample indices) of one epoch over all ranks, in training order."""
        return bk.epoch_batches([s.bucket for s in self.samples], self.batch_size, self.seed, epoch)

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches THIS rank trains in one epoch, in its training order (see `rank_batches`)."""
        return rank_batches(self.all_batches(epoch), self.rank, self.world)


def rank_batches(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """Rank r's share of an epoch: batches r, r+N, r+2N, … (N = world).

    Micro-step m of every rank trains batch m·N + r, so the N ranks' m-th micro-steps together cover
    batches m·N … m·N+N-1, in the epoch's order: N processes with accumulation A consume the epoch
    exactly as one process with accumulation N·A would. When the batch count is not a multiple of N,
    the last round is padded with the epoch's first batches, so every rank runs the same number of
    micro-steps (a rank that ran one fewer would leave the others waiting in the gradient all-reduce).
    """
    if world <= 1:
        return batches
    if not batches:
        return []
    padded = batches + [batches[i % len(batches)] for i in range(-len(batches) % world)]
    return padded[rank::world]


def topology() -> tuple[int, int]:
    """(rank, world size) of this process, from accelerate's state once an Accelerator (or PartialState)
    exists; (0, 1) before."""
    from accelerate import PartialState

    if not PartialState._shared_state:
        return 0, 1
    state = PartialState()
    return int(state.process_index), int(state.num_processes)


def setting(dataset: dict[str, Any], key: str) -> Any:
    """A dataset setting of the plan (every one is resolved by the compiler)."""
    return dataset[key]


def load_manifest(plan: dict[str, Any], plan_file: str | os.PathLike[str] | None = None) -> Manifest:
    """The plan's sample manifest, from beside the plan file or the cache folder's store, hash-checked."""
    from pathlib import Path

    summary = plan["data"]["manifest"]
    places = mf.candidates(summary, Path(plan_file) if plan_file else None, plan["data"]["cache"]["dir"])
    try:
        return mf.load(summary, places)
    except mf.ManifestError as exc:
        raise RunError(str(exc)) from exc


def check_inputs(manifest: Manifest) -> None:
    """Every planned image still exists with its planned size (bytes are checked as they are read)."""
    changed = []
    for image in manifest.images:
        try:
            size = os.stat(image.path).st_size
        except OSError as exc:
            changed.append(f"{image.path}: gone ({exc.strerror or type(exc).__name__})")
            continue
        if size != image.size:
            changed.append(f"{image.path}: its bytes changed ({size} bytes, {image.size} when planned)")
    if changed:
        raise InputChanged(changed)


def setup_data(plan: dict[str, Any], manifest: Manifest | None = None) -> TrainData:
    """The plan's samples: each manifest image as many times as the manifest counts, in bucket and crop."""
    data, training = plan["data"], plan["training"]
    manifest = manifest if manifest is not None else load_manifest(plan)
    check_inputs(manifest)
    images = list(manifest.images)
    samples = [Sample(i, images[i].bucket, images[i].crop) for i in manifest.sample_order()]
    rank, world = topology()
    result = TrainData(images, samples, data["datasets"], training["batch_size"], training["seed"],
                       rank=rank, world=world, masks=any(d.get("mask") for d in data["datasets"]),
                       controls=any(d.get("control") for d in data["datasets"]))
    expected = (plan.get("launch") or {}).get("world_size", 1)
    if world != expected:
        raise RunError(f"{world} process(es) are running, the plan is for {expected}: "
                       "start it with `sdxlc run` (it launches the processes) or the command it prints")
    if len(result.all_batches(0)) != training["batches_per_epoch"]:
        raise RunError(f"the manifest gives {len(result.all_batches(0))} batches per epoch, the plan counted "
                       f"{training['batches_per_epoch']}: the plan and its manifest disagree; plan again")
    return result


def read_checked(image: ManifestImage) -> bytes:
    """The image's bytes, which must be the planned ones (InputChanged otherwise)."""
    try:
        with open(image.path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise InputChanged([f"{image.path}: gone ({exc.strerror or type(exc).__name__})"]) from exc
    if hashlib.sha256(raw).hexdigest() != image.sha256:
        raise InputChanged([f"{image.path}: its bytes changed since it was planned"])
    return raw


def decode(item: ManifestImage) -> Image.Image:
    """The planned image decoded and upright, in its own mode (an alpha channel kept for `mask alpha`)."""
    data = read_checked(item)
    try:
        with Image.open(io.BytesIO(data)) as raw:
            raw.load()
            return ImageOps.exif_transpose(raw)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RunError(f"cannot read image {item.path}: {exc}") from exc


def load_pixels(item: ManifestImage, crop: bk.Crop, bucket: bk.Bucket, flip: bool,
                jitter: tuple[float, float, float] | None = None,
                decoded: Image.Image | None = None) -> torch.Tensor:
    """The image (`decoded`, else read and decoded here) resized to cover the bucket, cut at the crop,
    maybe mirrored and colour-jittered (brightness, contrast, saturation factors): (3, H, W) in [-1, 1]."""
    image = place(to_rgb(decoded if decoded is not None else decode(item)), crop, bucket, flip)
    if jitter is not None:
        for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color),
                                    jitter, strict=True):
            image = enhancer(image).enhance(factor)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def time_ids(item: ManifestImage, crop: bk.Crop, bucket: bk.Bucket, flip: bool) -> list[int]:
    """SDXL size conditioning: original (h, w), crop (top, left) in the resized image, target (h, w)."""
    left = crop.scaled_w - bucket[0] - crop.left if flip else crop.left
    return [item.height, item.width, crop.top, left, bucket[1], bucket[0]]


def process_caption(caption: str, dataset: dict[str, Any], rng: random.Random) -> str:
    """The caption a step trains on: the default caption for a missing one, caption dropout, tag dropout
    and shuffling (the first `keep_tokens` tags stay), then the prefix and suffix around it."""
    caption = caption or setting(dataset, "default_caption")
    if dataset["caption_dropout"] > 0 and rng.random() < dataset["caption_dropout"]:
        return ""
    separator, keep = setting(dataset, "separator"), dataset["keep_tokens"]
    tag_dropout = setting(dataset, "tag_dropout")
    if dataset["shuffle"] or tag_dropout > 0:
        tags = [t.strip() for t in caption.split(separator) if t.strip()]
        head, tail = tags[:keep], tags[keep:]
        if tag_dropout > 0:
            tail = [t for t in tail if rng.random() >= tag_dropout]
        if dataset["shuffle"]:
            rng.shuffle(tail)
        caption = f"{separator} ".join(head + tail)
    parts = (setting(dataset, "prefix"), caption, setting(dataset, "suffix"))
    return " ".join(part for part in parts if part)


def make_batch(data: TrainData, indices: list[int], rng: random.Random, pixels: bool = True,
               substitute: bool = False) -> Batch:
    """Captions, size conditioning and (unless latents are cached) pixels for the given samples.

    With `substitute`, a sample whose image cannot be decoded is replaced by another sample of the
    same bucket (warned once per image); without it, that is a RunError. A replaced sample draws its
    randomness as if its image had been known to be bad beforehand, so the batch does not depend on
    which process found out first.
    """
    captions, ids, keys, tensors, weights = [], [], [], [], []
    masks: list[torch.Tensor] = []
    controls: list[torch.Tensor] = []
    for index in indices:
        state = rng.getstate()
        while True:
            try:
                sample, crop, flip, tensor, decoded = _sample(data, index, rng, pixels, substitute)
                mask, control = _companions(data, sample, crop, flip, decoded)
                break
            except InputChanged:
                raise
            except RunError as exc:
                image = data.samples[index].image
                if not substitute or image in data.bad:  # a replacement found none: nothing left to try
                    raise
                mark_bad(data, image, str(exc))
                rng.setstate(state)
        if tensor is not None:
            tensors.append(tensor)
        masks += [mask] if mask is not None else []
        controls += [control] if control is not None else []
        item = data.images[sample.image]
        dataset = data.datasets[item.dataset]
        captions.append(process_caption(item.caption, dataset, rng))
        ids.append(time_ids(item, crop, sample.bucket, flip))
        keys.append((sample.image, flip))
        weights.append(float(dataset["loss_weight"]))
    stacked = torch.stack(tensors) if tensors else torch.empty(0)
    return Batch(stacked, captions, torch.tensor(ids, dtype=torch.float32), keys, weights,
                 mask=torch.stack(masks) if masks else None,
                 control=torch.stack(controls) if controls else None)


def _companions(data: TrainData, sample: Sample, crop: bk.Crop, flip: bool, decoded: Image.Image | None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The sample's mask (with its pixels, `decoded`: cached latents bring theirs) and control image, when
    the run has them; cut like the image (runtime/train/companions.py)."""
    if not (data.masks or data.controls):
        return None, None
    item = data.images[sample.image]
    return companions.load(item, crop, sample.bucket, flip, data.masks and decoded is not None, data.controls,
                           decoded)


def _sample(data: TrainData, index: int, rng: random.Random, pixels: bool, substitute: bool
            ) -> tuple[Sample, bk.Crop, bool, torch.Tensor | None, Image.Image | None]:
    """The sample trained in place of sample `index`, its crop, flip and (with `pixels`) tensor and decoded
    image; an image known to be bad is first replaced by another of the same bucket."""
    if substitute and data.samples[index].image in data.bad:
        index = replacement(data, index)
    sample = data.samples[index]
    item = data.images[sample.image]
    dataset = data.datasets[item.dataset]
    flip = dataset["flip"] and rng.random() < 0.5
    crop = bk.random_crop(sample.crop, sample.bucket, rng) if dataset["random_crop"] else sample.crop
    strength = dataset["color_jitter"]
    jitter = tuple(1.0 + rng.uniform(-strength, strength) for _ in range(3)) if strength > 0 else None
    if not pixels:
        return sample, crop, flip, None, None
    decoded = decode(item)
    tensor = load_pixels(item, crop, sample.bucket, flip, jitter, decoded)  # type: ignore[arg-type]
    return sample, crop, flip, tensor, decoded


def mark_bad(data: TrainData, image: int, reason: str) -> None:
    note_bad(data, image, f"skipped {reason}")


def note_bad(data: TrainData, image: int, warning: str) -> None:
    """Image `image` does not decode: skipped from now on, warned once."""
    if image not in data.bad:
        data.bad.add(image)
        data.skips.append((image, warning))
        data.warnings.append(warning)


def replacement(data: TrainData, index: int) -> int:
    """The next sample of the same bucket (in sample order, wrapping) whose image still decodes."""
    bucket, count = data.samples[index].bucket, len(data.samples)
    for step in range(1, count + 1):
        candidate = (index + step) % count
        sample = data.samples[candidate]
        if sample.bucket != bucket or sample.image in data.bad:
            continue
        item = data.images[sample.image]
        try:
            decoded = decode(item)
            load_pixels(item, sample.crop, sample.bucket, False, decoded=decoded)
            _companions(data, sample, sample.crop, False, decoded)
        except InputChanged:
            raise
        except RunError as exc:
            mark_bad(data, sample.image, str(exc))
            continue
        return candidate
    raise RunError(f"no image of bucket {bucket[0]}x{bucket[1]} decodes any more: nothing left to train")


def all_captions(data: TrainData) -> list[str]:
    """Every caption a batch can carry (the empty one too when captions drop out)."""
    captions = {process_caption(item.caption, {**d, "caption_dropout": 0.0}, random.Random(0))
                for item in data.images for d in (data.datasets[item.dataset],)}
    if any(d["caption_dropout"] > 0 for d in data.datasets):
        captions.add("")
    return sorted(captions)
