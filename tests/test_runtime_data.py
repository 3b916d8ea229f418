"""Data: bucket placement, real crop offsets in the size conditioning, caption handling, failures."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime import InputChanged, RunError
from runtime.train.data import make_batch, process_caption, setup_data, time_ids
from runtime.train.run import run_plan
from sdxlc.plan import buckets as bk
from sdxlc.resolve.datasets import DATASET_DEFAULTS, ImageItem

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "data" / "quickstart"


def test_landscape_and_portrait_get_their_own_buckets(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = setup_data(make_plan(tmp_path))
    by_shape: dict[str, set[tuple[int, int]]] = {"landscape": set(), "portrait": set(), "square": set()}
    for sample in data.samples:
        item = data.images[sample.image]
        shape = ("landscape" if item.width > item.height
                 else "portrait" if item.width < item.height else "square")
        by_shape[shape].add(sample.bucket)
    assert by_shape["landscape"] == {(80, 48)}
    assert by_shape["portrait"] == {(48, 80)}
    assert by_shape["square"] == {(64, 64)}


def test_batches_carry_pixels_of_their_bucket_and_real_crops(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = setup_data(make_plan(tmp_path))
    for indices in data.epoch(0):
        batch = make_batch(data, indices, random.Random(0))
        bucket = data.samples[indices[0]].bucket
        assert batch.pixels.shape == (len(indices), 3, bucket[1], bucket[0])
        assert -1.0 <= float(batch.pixels.min()) and float(batch.pixels.max()) <= 1.0
        for row, index in zip(batch.time_ids.tolist(), indices, strict=True):
            item = data.images[data.samples[index].image]
            crop = bk.cover_crop(item.width, item.height, bucket)
            assert row == [item.height, item.width, crop.top, crop.left, bucket[1], bucket[0]]


def test_time_ids_use_the_crop_and_mirror_it_on_flip() -> None:
    item = ImageItem("x.png", width=64, height=96, caption="", dataset=0)
    crop = bk.cover_crop(64, 96, (48, 80))
    assert (crop.scaled_w, crop.scaled_h, crop.top, crop.left) == (53, 80, 0, 2)
    assert time_ids(item, crop, (48, 80), flip=False) == [96, 64, 0, 2, 80, 48]
    assert time_ids(item, crop, (48, 80), flip=True) == [96, 64, 0, 3, 80, 48]


def test_the_unet_receives_the_crop_offsets(make_plan, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, training__total_steps=12, training__batch_size=1, sample__prompts=[])
    from runtime.train import run

    seen: list[torch.Tensor] = []
    setup = run.setup_model

    def spying_setup(p: dict[str, Any]) -> Any:
        loaded = setup(p)

        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone())

        loaded.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
        return loaded

    monkeypatch.setattr(run, "setup_model", spying_setup)
    run_plan(plan, progress=False)
    rows = {tuple(int(v) for v in t[0].tolist()) for t in seen}
    assert len(seen) == 12
    assert (64, 96, 2, 0, 48, 80) in rows  # a 96x64 landscape, cut 2 px from the top of its 80x53 resize
    assert any(row[2] or row[3] for row in rows)


def test_captions_drop_out_and_shuffle_after_kept_tokens() -> None:
    settings = {**DATASET_DEFAULTS, "caption_dropout": 0.0, "shuffle": True, "keep_tokens": 1}
    caption = "sks person, red, blue, green, yellow"
    shuffled = {process_caption(caption, settings, random.Random(seed)) for seed in range(20)}
    assert all(c.startswith("sks person, ") for c in shuffled) and len(shuffled) > 1
    assert all(sorted(c.split(", ")) == sorted(caption.split(", ")) for c in shuffled)
    assert process_caption(caption, {**settings, "caption_dropout": 1.0}, random.Random(0)) == ""


def test_images_gone_since_planning_stop_the_run(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "data"
    shutil.copytree(QUICKSTART, folder)
    plan = make_plan(tmp_path, data__datasets__0__path=str(folder))
    for image in folder.glob("0[0-2].png"):
        image.unlink()
    with pytest.raises(InputChanged, match=r"(?s)3 input.*00.png: gone") as caught:
        setup_data(plan)
    assert len(caught.value.changes) == 3 and "sdxlc plan" in str(caught.value)


def test_changed_data_is_a_run_error(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path)
    plan["training"]["batches_per_epoch"] += 1
    with pytest.raises(RunError, match="batches per epoch"):
        setup_data(plan)


def test_an_image_changed_after_the_check_stops_the_run_when_read(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same size, other bytes: caught when the bytes are read, never trained on nor substituted."""
    folder = tmp_path / "data"
    shutil.copytree(QUICKSTART, folder)
    data = setup_data(make_plan(tmp_path, data__datasets__0__path=str(folder)))
    changed = folder / "00.png"
    raw = bytearray(changed.read_bytes())
    raw[-20] ^= 0xFF
    changed.write_bytes(bytes(raw))
    first = next(i for i, s in enumerate(data.samples) if data.images[s.image].path == str(changed))
    for substitute in (False, True):
        with pytest.raises(InputChanged, match="00.png: its bytes changed"):
            make_batch(data, [first], random.Random(0), substitute=substitute)
