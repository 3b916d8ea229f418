"""Aspect-ratio buckets: the bucket list, nearest-aspect assignment, crop geometry and batch order.

Pure Python, shared by the compiler (bucket table and step arithmetic in the plan) and the runtime
(which batches it really builds), so the two can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # random loads with the batches of an epoch (training), not with a plan
    import random

Bucket = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Crop:
    """Resize an image to (scaled_w, scaled_h), then cut the bucket out at (top, left)."""

    scaled_w: int
    scaled_h: int
    top: int
    left: int


def make_buckets(resolution: int, min_side: int, max_side: int, step: int) -> list[Bucket]:
    """Buckets of at most resolution² pixels with sides in [min_side, max_side], multiples of step.

    For each width the tallest height that keeps the area is taken (and its transpose), as SDXL
    trainers expect; the square bucket is always present.
    """
    area = resolution * resolution
    found: set[Bucket] = set()
    square = (resolution // step) * step
    if min_side <= square <= max_side:
        found.add((square, square))
    width = _ceil_to(min_side, step)
    while width <= max_side:
        height = min(max_side, (area // width) // step * step)
        if height >= min_side:
            found.add((width, height))
            found.add((height, width))
        width += step
    return sorted(found, key=lambda b: (b[0] / b[1], b[0]))


def assign(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest the image's (compared in log space); ties go to the larger."""
    if not buckets:
        raise ValueError("no buckets to assign to")
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def fitted_bucket(width: int, height: int, resolution: int, step: int, max_side: int | None = None) -> Bucket:
    """A bucket of the image's own aspect that never exceeds it (kohya's `bucket_no_upscale`).

    An image of at most resolution² pixels keeps its size; a larger one is scaled down to resolution²
    pixels. Each side is then rounded down to a multiple of step (capped at max_side); a side shorter
    than one step gets one step, the only case where the bucket is larger than the image.
    """
    scale = min(1.0, math.sqrt(resolution * resolution / (width * height)))
    top = max_side // step * step if max_side is not None else None

    def side(length: int) -> int:
        rounded = max(step, math.floor(length * scale + 1e-9) // step * step)
        return min(rounded, top) if top is not None and top >= step else rounded

    return side(width), side(height)


def place(
    width: int, height: int, buckets: Sequence[Bucket], no_upscale: bool = False,
    resolution: int = 0, step: int = 1, max_side: int | None = None,
) -> Bucket:
    """The bucket an image trains in: `assign`, or with `no_upscale` a bucket that fits inside it.

    With `no_upscale`, an image of at most resolution² pixels gets its own `fitted_bucket`; a larger
    one keeps the nearest-aspect bucket of the list when that fits inside it, else its `fitted_bucket`.
    """
    if not no_upscale:
        return assign(width, height, buckets)
    if width * height > resolution * resolution:
        bucket = assign(width, height, buckets)
        if bucket[0] <= width and bucket[1] <= height:
            return bucket
    return fitted_bucket(width, height, resolution, step, max_side)


def plan_placement(data: dict[str, Any]) -> Callable[[int, int], Bucket]:
    """(width, height) -> bucket, as a plan's data section places images (the runtime's placement).

    Without no-upscale the nearest of the table's buckets; with it, `place` over every bucket the
    settings make, so images land exactly where the compiler put them.
    """
    b, size = data["buckets"], data["resolution"]
    if not b.get("no_upscale"):
        table = [(row["width"], row["height"]) for row in b["table"]] if b["enabled"] else [(size, size)]
        return lambda width, height: assign(width, height, table)
    full = make_buckets(size, b["min"], b["max"], b["step"]) if b["enabled"] else [(size, size)]
    top = b["max"] if b["enabled"] else size
    return lambda width, height: place(width, height, full, True, size, b["step"], top)


def aspect_error(width: int, height: int, bucket: Bucket) -> float:
    """Relative difference between the image's and the bucket's aspect ratios."""
    return abs((width / height) / (bucket[0] / bucket[1]) - 1.0)


def cover_crop(width: int, height: int, bucket: Bucket) -> Crop:
    """Scale the image to cover the bucket, then centre-crop it; the offsets are in resized pixels."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    sw = max(bw, round(width * scale))
    sh = max(bh, round(height * scale))
    return Crop(scaled_w=sw, scaled_h=sh, top=(sh - bh) // 2, left=(sw - bw) // 2)


def random_crop(crop: Crop, bucket: Bucket, rng: random.Random) -> Crop:
    """The same resize as `crop`, cut out at a random place instead of the centre."""
    top = rng.randint(0, crop.scaled_h - bucket[1])
    left = rng.randint(0, crop.scaled_w - bucket[0])
    return Crop(crop.scaled_w, crop.scaled_h, top, left)


def cropped_fraction(width: int, height: int, bucket: Bucket) -> float:
    """Share of the resized image's pixels that the crop throws away."""
    crop = cover_crop(width, height, bucket)
    return 1.0 - (bucket[0] * bucket[1]) / (crop.scaled_w * crop.scaled_h)


def epoch_batches(item_buckets: Sequence[Bucket], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: sample indices grouped by bucket, shuffled from (seed, epoch).

    Every batch holds samples of one bucket; a bucket's last batch may be incomplete and is kept.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    import random

    rng = random.Random(f"{seed}:{epoch}")
    by_bucket: dict[Bucket, list[int]] = {}
    for index, bucket in enumerate(item_buckets):
        by_bucket.setdefault(bucket, []).append(index)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches


def batch_count(bucket_sizes: Sequence[int], batch_size: int) -> int:
    """Number of batches epoch_batches yields for buckets holding these many samples."""
    return sum(math.ceil(n / batch_size) for n in bucket_sizes if n > 0)


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step
