"""Control images (`control "folder"`): paired by stem, counted by the plan, cut and flipped exactly like
their image, a missing one reported by path and left out, and the batches that carry them."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from runtime.train import companions
from runtime.train.data import Batch, load_pixels, make_batch, setup_data
from runtime.train.run import run_plan
from sdxlc.pipeline import compile_recipe
from sdxlc.resolve import data as resolve_data

RECIPE = """sdx 1
model tiny
profile cpu
data "d" control "c"{clauses}
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
batch 2
steps 2
output "out"
{extra}"""
SIZES = [(64, 64), (96, 64), (64, 96), (100, 60)]


def dataset(root: Path, missing: tuple[int, ...] = (), clauses: str = "", extra: str = "") -> Path:
    """Images in `d/10_x` and their control images in `c/10_x` (a copy of each image, as a .jpg-free png),
    except the `missing` ones."""
    (root / "d" / "10_x").mkdir(parents=True)
    (root / "c" / "10_x").mkdir(parents=True)
    for n, size in enumerate(SIZES):
        image = root / "d" / "10_x" / f"{n}.png"
        Image.effect_noise(size, 20 + n).convert("RGB").save(image)
        (root / "d" / "10_x" / f"{n}.txt").write_text(f"sks, item {n}", encoding="utf-8")
        if n not in missing:
            shutil.copy(image, root / "c" / "10_x" / f"{n}.png")
    recipe = root / "r.sdx"
    recipe.write_text(RECIPE.format(clauses=clauses, extra=extra), encoding="utf-8")
    return recipe


def test_the_plan_counts_the_pairs(tmp_path: Path) -> None:
    compiled = compile_recipe(dataset(tmp_path))
    assert not compiled.errors, compiled.errors
    entry = compiled.plan["data"]["datasets"][0]
    assert entry["control"] == str((tmp_path / "c").resolve())
    assert (entry["control_pairs"], entry["control_missing"], entry["images"]) == (4, 0, 4)
    assert entry["mask"] is None and entry["masks_missing"] == 0


def test_a_control_image_is_cut_and_flipped_exactly_like_its_image(tmp_path: Path) -> None:
    """Each control image is a copy of its image: every crop and flip must give the very same pixels."""
    compiled = compile_recipe(dataset(tmp_path, clauses=" flip"))
    data = setup_data(compiled.plan)
    assert data.controls and not data.masks
    for sample in data.samples:
        item = data.images[sample.image]
        assert item.control.endswith(Path(item.path).name)
        for flip in (False, True):
            control = companions.load_control(item, sample.crop, sample.bucket, flip)
            assert torch.equal(control, load_pixels(item, sample.crop, sample.bucket, flip))
            assert -1.0 <= float(control.min()) and float(control.max()) <= 1.0


def test_a_missing_control_image_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    compiled = compile_recipe(dataset(tmp_path, missing=(1,)))
    assert not compiled.errors, compiled.errors
    entry = compiled.plan["data"]["datasets"][0]
    assert (entry["control_pairs"], entry["control_missing"], entry["images"]) == (3, 1, 3)
    warning = next(w for w in compiled.plan["warnings"] if "bad input" in w)
    assert str(tmp_path / "d" / "10_x" / "1.png") in warning and "no control image" in warning
    resolve_data._RESOLVED.clear()  # the plan report scans again: the left-out image stays out
    assert sum(row["images"] for row in resolve_data.bucket_details(compiled.plan)) == 3
    data = setup_data(compiled.plan)
    batch = make_batch(data, data.all_batches(0)[0], random.Random(0))
    assert batch.control is not None and batch.control.shape == batch.pixels.shape
    assert batch.mask is None
    result, _ = run_plan(compiled.plan, progress=False)
    assert result.steps == 2 and result.lora_path.is_file()


def test_a_missing_control_image_fails_under_on_bad_image_fail(tmp_path: Path) -> None:
    compiled = compile_recipe(dataset(tmp_path, missing=(2,), clauses=" on bad image fail"))
    error = next(d for d in compiled.errors if d.code == "SDX0530")
    assert "2.png" in error.message and "no control image" in error.message


def test_a_control_image_that_goes_bad_after_planning_is_skipped_by_path(tmp_path: Path) -> None:
    compiled = compile_recipe(dataset(tmp_path))
    data = setup_data(compiled.plan)
    gone = next(item for item in data.images if item.control.endswith("0.png"))
    Path(gone.control).unlink()
    first = next(i for i, s in enumerate(data.samples) if data.images[s.image] is gone)
    batch = make_batch(data, [first], random.Random(0), substitute=True)
    assert batch.control is not None and batch.control.shape[0] == 1
    assert any(gone.control in warning for warning in data.warnings), data.warnings
    with pytest.raises(Exception, match="0.png"):
        make_batch(setup_data(compiled.plan), [first], random.Random(0), substitute=False)


def test_control_with_random_crop_and_cached_latents_is_the_cache_check(tmp_path: Path) -> None:
    recipe = dataset(tmp_path, clauses=" random crop", extra="cache latents\n")
    assert "SDX0525" in [d.code for d in compile_recipe(recipe).errors]
    plain = tmp_path / "plain"
    plain.mkdir()
    cached = compile_recipe(dataset(plain, extra="cache latents\ncache te\n"))
    assert not cached.errors, cached.errors
    result, _ = run_plan(cached.plan, progress=False)  # the control images are read every step
    assert result.steps == 2


def test_batches_pin_their_masks_and_control_images(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned_ids: list[int] = []

    def pin(tensor: torch.Tensor) -> torch.Tensor:  # page-locked memory needs an accelerator
        copy = tensor.clone()
        pinned_ids.append(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = Batch(torch.zeros(1, 3, 8, 8), ["a"], torch.zeros(1, 6), [(0, False)],
                  mask=torch.ones(1, 1, 8, 8), control=torch.zeros(1, 3, 8, 8))
    pinned = batch.pin_memory()
    assert id(pinned.mask) in pinned_ids and id(pinned.control) in pinned_ids
    assert torch.equal(pinned.mask, batch.mask)  # type: ignore[arg-type]
    plain = Batch(torch.zeros(1, 3, 8, 8), ["a"], torch.zeros(1, 6), [(0, False)]).pin_memory()
    assert plain.mask is None and plain.control is None


def test_a_control_folder_that_holds_the_dataset_folder_is_refused(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)  # `.` holds `d`: an image would pair with itself or with `c`'s copy, by stem
    text = recipe.read_text(encoding="utf-8").replace('control "c"', 'control "."')
    recipe.write_text(text, encoding="utf-8")
    errors = [d for d in compile_recipe(recipe).diagnostics if d.severity == "error"]
    assert [d.code for d in errors] == ["SDX0539"] and "holds the dataset folder" in errors[0].message
