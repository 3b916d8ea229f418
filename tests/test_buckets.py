"""Bucket geometry and batch order: the arithmetic the plan and the run share."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
from PIL import Image

from sdxlc.plan import buckets as bk


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


def test_no_upscale_buckets_fit_inside_the_image() -> None:
    """kohya's bucket_no_upscale: a small image keeps its own size rounded down to the step."""
    table = bk.make_buckets(1024, 512, 2048, 64)
    place = functools.partial(bk.place, buckets=table, no_upscale=True, resolution=1024, step=64,
                              max_side=2048)
    assert place(500, 300) == (448, 256)  # upscaled to (1280, 768) without no upscale
    assert bk.assign(500, 300, table) == (1280, 768)
    assert place(1000, 1000) == (960, 960)
    assert place(1024, 1024) == (1024, 1024)
    assert place(2000, 300) == (1984, 256)
    assert place(1500, 1000) == bk.assign(1500, 1000, table) == (1216, 832)  # larger: the table's bucket
    assert place(1100, 1100) == (1024, 1024)
    assert place(3000, 400) == (2048, 320)  # (2048, 512) is too tall: scaled, capped
    assert place(40, 700) == (64, 640)  # a side below one step gets one step
    assert bk.place(500, 300, table) == bk.assign(500, 300, table)  # off: nearest aspect as before
    for width in range(64, 2200, 37):
        for height in range(64, 2200, 53):
            w, h = place(width, height)
            assert w <= width and h <= height and w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024


def test_no_upscale_plan_and_runtime_agree(tmp_path: Path) -> None:
    from runtime.train.data import setup_data
    from sdxlc.pipeline import compile_recipe

    # (100, 60) and (60, 100): the nearest-aspect (64, 64) does not fit inside them
    sizes = {(40, 40): (32, 32), (64, 40): (64, 32), (100, 60): (64, 32), (50, 90): (32, 64),
             (60, 100): (32, 64), (70, 70): (64, 64)}
    (tmp_path / "d").mkdir()
    for n, size in enumerate(sizes):
        Image.effect_noise(size, 40 + n).convert("RGB").save(tmp_path / "d" / f"{n}.png")
        (tmp_path / "d" / f"{n}.txt").write_text("sks", encoding="utf-8")
    recipe = tmp_path / "r.sdx"
    text = ('sdx 1\nmodel tiny\nprofile cpu\ndata "d"\nresolution 64 step 32{}\n'
            'lora rank 4\nbatch 2\nsteps 2\noutput "out"\n')
    recipe.write_text(text.format(" no upscale"), encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, compiled.diagnostics
    plan = compiled.plan
    assert plan["data"]["buckets"]["no_upscale"] is True
    table = {(r["width"], r["height"]): r["images"] for r in plan["data"]["buckets"]["table"]}
    assert table == {(32, 32): 1, (64, 32): 2, (64, 64): 1, (32, 64): 2}
    assert not any("upscaled" in w for w in plan["warnings"])
    data = setup_data(plan)  # checks the batch count against the plan's
    for sample in data.samples:
        item = data.images[sample.image]
        assert sample.bucket == sizes[(item.width, item.height)]
    recipe.write_text(text.format(""), encoding="utf-8")
    default = compile_recipe(recipe).plan
    assert default is not None and default["data"]["buckets"]["no_upscale"] is False
    assert any("upscaled" in w for w in default["warnings"])
