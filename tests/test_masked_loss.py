"""Masked loss (`mask "folder"`, `mask alpha`): the gradient outside the mask, the mask's geometry, the
plan's counts and warnings, a real run through the pipeline, and masks cached with the latents."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from runtime.cache import store as rc
from runtime.train import companions
from runtime.train.data import make_batch, setup_data
from runtime.train.loss import batch_loss, elementwise_loss, masked
from runtime.train.run import run_plan
from sdxlc.pipeline import compile_recipe
from sdxlc.plan import buckets as bk
from sdxlc.plan.manifest import ManifestImage

RECIPE = """sdx 1
model tiny
profile cpu
data "d" {clauses}
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
batch 2
steps 2
seed 3
output "out"
{extra}"""
SIZES = [(64, 64), (96, 64), (64, 96), (70, 70)]


def left_black(size: tuple[int, int]) -> Image.Image:
    """A mask whose left half is black (ignored) and right half white (trained)."""
    mask = Image.new("L", size, 255)
    mask.paste(0, (0, 0, size[0] // 2, size[1]))
    return mask


def dataset(root: Path, kind: str, masked_images: int = len(SIZES), extra: str = "") -> Path:
    """Images in `d`; with kind `folder` masks in `masks` (the first `masked_images`), with `alpha` RGBA
    images whose alpha is the mask."""
    (root / "d").mkdir()
    (root / "masks").mkdir()
    for n, size in enumerate(SIZES):
        image = Image.effect_noise(size, 30 + n).convert("RGB")
        if kind == "alpha" and n < masked_images:
            image = image.convert("RGBA")
            image.putalpha(left_black(size))
        elif kind == "folder" and n < masked_images:
            left_black(size).save(root / "masks" / f"{n}.png")
        image.save(root / "d" / f"{n}.png")
        (root / "d" / f"{n}.txt").write_text(f"sks, item {n}", encoding="utf-8")
    word = 'mask "masks"' if kind == "folder" else "mask alpha"
    recipe = root / "r.sdx"
    recipe.write_text(RECIPE.format(clauses=word, extra=extra), encoding="utf-8")
    return recipe


def test_no_gradient_reaches_the_latents_outside_the_mask() -> None:
    """Half-black mask: the loss's gradient to the prediction is exactly 0 over the black latent half."""
    torch.manual_seed(0)
    prediction = torch.randn(2, 4, 8, 8, requires_grad=True)
    goal = torch.randn(2, 4, 8, 8)
    mask = torch.ones(2, 1, 64, 64)
    mask[:, :, :, :32] = 0.0  # pixels 0-31 are latent columns 0-3
    loss = masked(elementwise_loss(prediction, goal, "l2", 0.1), mask).mean()
    loss.backward()
    assert prediction.grad is not None
    assert torch.equal(prediction.grad[..., :4], torch.zeros(2, 4, 8, 4))
    assert (prediction.grad[..., 4:] != 0).all()
    # a grey pixel weighs in between: kohya's area resize of the mask to the latent grid
    grey = torch.full((1, 1, 16, 16), 0.5)
    assert torch.allclose(masked(torch.ones(1, 1, 2, 2), grey), torch.full((1, 1, 2, 2), 0.5))


def test_batch_loss_backpropagates_nothing_to_the_masked_latents(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Through the tiny UNet: the gradient to its prediction is 0 exactly where the mask is black."""
    from runtime.model.load import setup_model
    from runtime.train.conditioning import encode_text

    plan = make_plan(tmp_path)
    models = setup_model(plan)
    unet = models.pipe.unet.requires_grad_(True)
    latents = torch.randn(1, 4, 8, 8)
    states, pooled = encode_text(models, ["a"])
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    outputs: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _args: object, out: object) -> None:
        out.sample.retain_grad()  # type: ignore[attr-defined]
        outputs.append(out.sample)  # type: ignore[attr-defined]

    handle = unet.register_forward_hook(keep)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., :32] = 0.0
    try:
        batch_loss(unet, models, plan["training"], latents, states, pooled, time_ids, mask=mask).backward()
    finally:
        handle.remove()
    grad = outputs[0].grad
    assert grad is not None and torch.equal(grad[..., :4], torch.zeros_like(grad[..., :4]))
    assert grad[..., 4:].abs().sum() > 0


def asymmetric(tmp_path: Path) -> tuple[ManifestImage, Path]:
    """A 96x64 image whose mask is a gradient in x, and a mask file for it."""
    mask = Image.linear_gradient("L").rotate(90, expand=True).resize((96, 64))  # bright on the left
    path = tmp_path / "m.png"
    mask.save(path)
    rgba = Image.effect_noise((96, 64), 5).convert("RGBA")
    rgba.putalpha(mask)
    image = tmp_path / "i.png"
    rgba.save(image)
    crop = bk.Crop(96, 64, 0, 16)  # the 64x64 bucket cut 16 px from the left
    item = ManifestImage(str(image), hashlib.sha256(image.read_bytes()).hexdigest(), image.stat().st_size,
                         96, 64, 0, "", "default", 1, (64, 64), crop, str(path),
                         hashlib.sha256(path.read_bytes()).hexdigest())
    return item, path


def test_the_mask_is_cut_and_flipped_like_its_image(tmp_path: Path) -> None:
    item, path = asymmetric(tmp_path)
    full = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32)) / 255.0
    plain = companions.load_mask(item, item.crop, item.bucket, False)
    assert plain.shape == (1, 64, 64)
    assert torch.allclose(plain[0], full[:, 16:80], atol=1.5 / 255)  # the crop's columns, no resize
    flipped = companions.load_mask(item, item.crop, item.bucket, True)
    assert torch.equal(flipped, plain.flip(-1))
    # `mask alpha`: the image's own alpha channel goes through the same geometry
    alpha = companions.load_mask(ManifestImage(*[getattr(item, f) for f in (
        "path", "sha256", "size", "width", "height", "dataset", "caption", "caption_source", "count",
        "bucket", "crop")], "alpha"), item.crop, item.bucket, True)
    assert torch.equal(alpha, flipped)
    # a mask at half the image's size is resized to the image's scaled size first: the same cut
    Image.open(path).resize((48, 32), Image.Resampling.LANCZOS).save(path)

    small = ManifestImage(*[getattr(item, f) for f in (
        "path", "sha256", "size", "width", "height", "dataset", "caption", "caption_source", "count",
        "bucket", "crop")], str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    assert (companions.load_mask(small, item.crop, item.bucket, False) - plain).abs().mean() < 0.02
    assert torch.equal(companions.load_mask(
        ManifestImage(*[getattr(item, f) for f in ("path", "sha256", "size", "width", "height", "dataset",
                                                   "caption", "caption_source", "count", "bucket", "crop")]),
        item.crop, item.bucket, False), torch.ones(1, 64, 64))


def test_the_plan_counts_and_names_the_images_without_a_mask(tmp_path: Path) -> None:
    compiled = compile_recipe(dataset(tmp_path, "folder", masked_images=2))
    assert not compiled.errors, compiled.errors
    entry = compiled.plan["data"]["datasets"][0]
    assert entry["mask"] == str((tmp_path / "masks").resolve()) and entry["masks_missing"] == 2
    warning = next(d for d in compiled.diagnostics if d.code == "SDX0536")
    assert "2 image(s)" in warning.message and "2.png" in warning.message and "3.png" in warning.message
    assert "unmasked" in warning.message


def test_mask_alpha_warns_about_images_without_alpha(tmp_path: Path) -> None:
    compiled = compile_recipe(dataset(tmp_path, "alpha", masked_images=3))
    assert not compiled.errors, compiled.errors
    assert compiled.plan["data"]["datasets"][0]["mask"] == "alpha"
    assert compiled.plan["data"]["datasets"][0]["masks_missing"] == 1
    warning = next(d for d in compiled.diagnostics if d.code == "SDX0537")
    assert "3.png" in warning.message


def test_a_mask_of_another_shape_is_warned_and_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    recipe = dataset(tmp_path, "folder")
    Image.new("L", (64, 64), 255).save(tmp_path / "masks" / "1.png")  # its image is 96x64
    compiled = compile_recipe(recipe)
    warning = next(d for d in compiled.diagnostics if d.code == "SDX0538")
    assert "1.png (64x64 for 96x64)" in warning.message and warning.help
    recipe.write_text(recipe.read_text(encoding="utf-8").replace('"masks"', '"nowhere"'), encoding="utf-8")
    assert "SDX0539" in [d.code for d in compile_recipe(recipe).errors]
    recipe.write_text(recipe.read_text(encoding="utf-8").replace('"nowhere"', '"d"'), encoding="utf-8")
    inside = next(d for d in compile_recipe(recipe).errors if d.code == "SDX0539")
    assert "inside the dataset folder" in inside.message
    text = recipe.read_text(encoding="utf-8").replace('mask "d"', 'mask "masks/1.png"')
    recipe.write_text(text, encoding="utf-8")
    a_file = next(d for d in compile_recipe(recipe).errors if d.code == "SDX0539")
    assert "is a file, not a folder" in a_file.message


@pytest.mark.parametrize("kind", ["folder", "alpha"])
def test_a_masked_run_trains_through_the_pipeline(tmp_path: Path, kind: str) -> None:
    compiled = compile_recipe(dataset(tmp_path, kind))
    assert not compiled.errors, compiled.errors
    data = setup_data(compiled.plan)
    indices = data.all_batches(0)[0]
    batch = make_batch(data, indices, random.Random(0))
    assert batch.mask is not None and batch.mask.shape == (len(indices), 1, *batch.pixels.shape[2:])
    assert batch.control is None
    assert batch.mask.min() == 0.0 and batch.mask.max() == 1.0  # the black half and the white half
    result, _ = run_plan(compiled.plan, progress=False)
    assert result.steps == 2 and result.lora_path.is_file()
    assert torch.isfinite(torch.tensor(result.final_loss))


def test_masks_are_cached_with_the_latents_under_a_key_that_names_them(tmp_path: Path) -> None:
    from sdxlc.cli.data import cache_command

    crop = bk.Crop(96, 64, 0, 16)
    base = dict(image_hash="a" * 64, bucket=(64, 64), crop=crop, flip=False, vae="v", dtype="float32")
    unmasked = rc.latent_key(**base)  # type: ignore[arg-type]
    assert rc.latent_key(**base, mask="") == unmasked  # type: ignore[arg-type]
    assert len({unmasked, rc.latent_key(**base, mask="b" * 64), rc.latent_key(**base, mask="alpha")}) == 3  # type: ignore[arg-type]

    recipe = dataset(tmp_path, "folder", extra="cache latents to disk\nno cache te\n")
    runner = CliRunner()
    first = runner.invoke(cache_command, [str(recipe)])
    assert first.exit_code == 0, first.output
    assert "latent cache: 4 encoded, 0 reused" in first.output
    entries = list((tmp_path / ".sdxlc-cache" / "latents").rglob("*.safetensors"))
    from safetensors.torch import load_file

    assert all(set(load_file(str(e))) == {"parameters", "mask"} for e in entries)
    assert rc.verify(tmp_path / ".sdxlc-cache") == (len(entries), [])  # `sdxlc cache --verify` keeps them
    left_black((70, 70)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "masks" / "3.png")
    again = runner.invoke(cache_command, [str(recipe)])
    assert "latent cache: 1 encoded, 3 reused" in again.output, again.output  # only the new mask's image

    compiled = compile_recipe(recipe)
    from runtime.model.load import setup_model
    from runtime.train.conditioning import Conditioning

    data = setup_data(compiled.plan)
    conditioning = Conditioning(setup_model(compiled.plan), data, compiled.plan["data"]["cache"])
    batch = conditioning.batch(data.all_batches(0)[0], random.Random(0))
    assert batch.mask is None and batch.pixels.numel() == 0  # the cached latents bring their masks
    conditioning.encode(batch)
    assert batch.mask is not None
    for row, (image, flip) in enumerate(batch.keys):
        item, sample = data.images[image], next(s for s in data.samples if s.image == image)
        assert torch.equal(batch.mask[row], companions.load_mask(item, sample.crop, sample.bucket, flip))


def test_a_mask_file_with_an_alpha_channel_is_warned(tmp_path: Path) -> None:
    recipe = dataset(tmp_path, "folder")
    transparent = Image.new("RGBA", SIZES[0], (0, 0, 0, 0))
    transparent.save(tmp_path / "masks" / "0.png")
    compiled = compile_recipe(recipe)
    warning = next(d for d in compiled.diagnostics if d.code == "SDX0535")
    assert "1 mask(s)" in warning.message and "0.png" in warning.message
    assert "`mask alpha`" in str(warning.help)
