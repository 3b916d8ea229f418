"""Regularization (prior-preservation) images: balanced to the training samples as kohya does, counted the
same by the compiler and the runtime, and weighted in the loss by their dataset's `loss weight`."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from runtime.train import loss as objective
from runtime.train.conditioning import Conditioning
from runtime.train.data import TrainData, setup_data
from runtime.train.run import setup_model
from sdxlc.cli.report import render_plan
from sdxlc.pipeline import compile_recipe
from sdxlc.resolve.balance import epoch_counts
from sdxlc.resolve.datasets import ImageItem

RECIPE = """sdx 1
model tiny
profile cpu
data "train" repeat {repeat}
data "reg" as regularization{weight}
resolution 64
lora rank 4 alpha 4 on unet
batch 2
steps 2
output "out"
"""


def _items(train: list[int], reg: list[int]) -> tuple[list[ImageItem], list[dict[str, object]]]:
    """Images with the given folder repeats: dataset 0 trains, dataset 1 regularizes."""
    items = [ImageItem(f"t{i}.png", 64, 64, "", 0, r, True) for i, r in enumerate(train)]
    items += [ImageItem(f"r{i}.png", 64, 64, "", 1, r, True) for i, r in enumerate(reg)]
    datasets = [{"repeat": 1, "regularization": False}, {"repeat": 1, "regularization": True}]
    return items, datasets


def test_fewer_regularization_images_are_repeated_in_turn() -> None:
    items, datasets = _items([3, 3, 3, 3], [1, 1, 1, 1, 1])  # 12 training samples, 5 reg images
    balance = epoch_counts(items, datasets)
    assert balance.counts == [3, 3, 3, 3, 3, 3, 2, 2, 2]
    assert (balance.train_samples, balance.reg_samples, balance.reg_images_used) == (12, 12, 5)


def test_surplus_regularization_images_are_left_out() -> None:
    items, datasets = _items([1, 1, 1], [1] * 5)
    balance = epoch_counts(items, datasets)
    assert balance.counts == [1, 1, 1, 1, 1, 1, 0, 0]
    assert (balance.reg_samples, balance.reg_images, balance.reg_images_used) == (3, 5, 3)


def test_regularization_repeats_count_in_the_first_pass() -> None:
    items, datasets = _items([5, 5], [4, 4])  # 10 training samples; the first reg pass gives 8
    assert epoch_counts(items, datasets).counts == [5, 5, 5, 5]


def test_without_regularization_the_repeats_stand() -> None:
    items, datasets = _items([2, 7], [])
    datasets[0]["repeat"] = 3
    balance = epoch_counts(items, datasets)
    assert balance.counts == [6, 21] and balance.reg_samples == 0


def _folders(tmp_path: Path, train: int, reg: int) -> None:
    for name, count in (("train", train), ("reg", reg)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (64, 64), (i * 20, 80, 0)).save(tmp_path / name / f"{i}.png")
            (tmp_path / name / f"{i}.txt").write_text(f"{name} {i}", encoding="utf-8")


def _compile(tmp_path: Path, repeat: int, weight: str = "") -> Path:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(RECIPE.format(repeat=repeat, weight=weight), encoding="utf-8")
    return recipe


def test_the_plan_counts_the_balance_and_the_report_shows_it(tmp_path: Path) -> None:
    _folders(tmp_path, train=3, reg=2)
    compiled = compile_recipe(_compile(tmp_path, repeat=3, weight=" loss weight 0.5"))
    assert not compiled.errors, compiled.errors
    plan = compiled.plan
    train, reg = plan["data"]["datasets"]
    assert (train["samples"], reg["samples"], reg["loss_weight"]) == (9, 9, 0.5)
    assert plan["data"]["samples_per_epoch"] == 18
    assert plan["training"]["batches_per_epoch"] == 9  # 18 samples in one bucket, batch 2
    text = render_plan(plan)
    assert "2 regularization images balanced to the 9 training samples → 9 samples" in text
    assert "loss weight 0.5" in text


def test_unused_regularization_images_are_warned(tmp_path: Path) -> None:
    _folders(tmp_path, train=2, reg=5)
    plan = compile_recipe(_compile(tmp_path, repeat=1)).plan
    assert plan["data"]["datasets"][1]["samples"] == 2
    assert plan["data"]["buckets"]["table"][0]["images"] == 4  # the 3 unused reg images are not placed
    assert any("2 of 5 images" in w and "other 3 are never used" in w for w in plan["warnings"])


def test_only_regularization_data_is_an_error(tmp_path: Path) -> None:
    _folders(tmp_path, train=0, reg=2)
    recipe = tmp_path / "r.sdx"
    only_reg = RECIPE.replace('data "train" repeat {repeat}\n', "").format(weight="")
    recipe.write_text(only_reg, encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert "SDX0531" in [d.code for d in compiled.errors]


Run = tuple[dict[str, Any], TrainData]


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("reg")
    _folders(root, train=3, reg=2)
    compiled = compile_recipe(_compile(root, repeat=3, weight=" loss weight 0.25"))
    assert not compiled.errors
    return compiled.plan, setup_data(compiled.plan)


def test_the_runtime_trains_the_samples_the_plan_counted(balanced_run: Run) -> None:
    plan, data = balanced_run
    per_image: dict[str, int] = {}
    for sample in data.samples:
        path = data.images[sample.image].path
        per_image[Path(path).parent.name] = per_image.get(Path(path).parent.name, 0) + 1
    assert per_image == {"train": 9, "reg": 9}
    assert len(data.all_batches(0)) == plan["training"]["batches_per_epoch"]


def test_regularization_samples_carry_their_loss_weight(balanced_run: Run) -> None:
    plan, data = balanced_run
    models = setup_model(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    folder = [Path(data.images[s.image].path).parent.name for s in data.samples]
    reg, train = folder.index("reg"), folder.index("train")
    batch = conditioning.batch([train, reg], random.Random(0))
    assert batch.weights == [1.0, 0.25]
    latents, states, pooled = conditioning.encode(batch)
    training = plan["training"]
    unet = models.pipe.unet

    def loss(weights: list[float] | None) -> float:
        torch.manual_seed(3)
        with torch.no_grad():
            return float(objective.batch_loss(unet, models, training, latents, states, pooled,
                                              batch.time_ids, weights))

    per_sample = []
    for only in ([1.0, 0.0], [0.0, 1.0]):
        per_sample.append(loss(only) * 2)
    assert loss(batch.weights) == pytest.approx((per_sample[0] + 0.25 * per_sample[1]) / 2, rel=1e-5)
    assert loss(None) == pytest.approx(sum(per_sample) / 2, rel=1e-5)
