"""Bucket geometry and batch order: the arithmetic the plan and the run share."""

from __future__ import annotations

import math

import pytest

from sdxlc import buckets as bk


def test_sdxl_buckets_keep_area_and_step() -> None:
    found = bk.make_buckets(1024, 512, 2048, 64)
    assert (1024, 1024) in found
    assert (1216, 832) in found and (832, 1216) in found
    for width, height in found:
        assert width % 64 == 0 and height % 64 == 0
        assert width * height <= 1024 * 1024
        assert 512 <= width <= 2048 and 512 <= height <= 2048


def test_assign_nearest_aspect() -> None:
    found = bk.make_buckets(1024, 512, 2048, 64)
    assert bk.assign(1000, 1000, found) == (1024, 1024)
    wide = bk.assign(1500, 1000, found)
    tall = bk.assign(1000, 1500, found)
    assert wide[0] > wide[1] and tall == (wide[1], wide[0])
    assert bk.aspect_error(1500, 1000, wide) < 0.05


@pytest.mark.parametrize("size", [(1500, 1000), (1000, 1500), (333, 777), (1024, 1024)])
def test_cover_crop_covers_bucket(size: tuple[int, int]) -> None:
    bucket = bk.assign(*size, bk.make_buckets(1024, 512, 2048, 64))
    crop = bk.cover_crop(*size, bucket)
    assert crop.scaled_w >= bucket[0] and crop.scaled_h >= bucket[1]
    assert crop.top + bucket[1] <= crop.scaled_h and crop.left + bucket[0] <= crop.scaled_w
    # the image is scaled by one factor: the side that fits exactly is the bucket's
    assert crop.scaled_w == bucket[0] or crop.scaled_h == bucket[1]


def test_landscape_crop_is_off_centre_on_the_long_side() -> None:
    crop = bk.cover_crop(1500, 1000, (1024, 1024))
    assert crop.top == 0 and crop.left == (crop.scaled_w - 1024) // 2 > 0


def test_epoch_batches_one_bucket_per_batch_and_deterministic() -> None:
    items = [(64, 64)] * 5 + [(128, 64)] * 3
    batches = bk.epoch_batches(items, 2, seed=7, epoch=0)
    assert len(batches) == bk.batch_count([5, 3], 2) == math.ceil(5 / 2) + math.ceil(3 / 2)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for batch in batches:
        assert len({items[i] for i in batch}) == 1
    assert batches == bk.epoch_batches(items, 2, seed=7, epoch=0)
    assert batches != bk.epoch_batches(items, 2, seed=7, epoch=1)
