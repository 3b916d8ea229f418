"""Disk caches and bad files during a run: keys, `sdxlc cache` twice, one edited image, a corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from runtime.cache import store as rc
from runtime.train.run import run_plan
from sdxlc.cli.data import cache_command
from sdxlc.pipeline import compile_recipe
from sdxlc.plan import buckets as bk

RECIPE = """sdx 1
model tiny
profile cpu
data "d"{clauses}
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
cache latents to disk
cache te to disk
batch 2
steps 3
output "out"
"""


def dataset(tmp_path: Path, clauses: str = "") -> Path:
    sizes = [(64, 64), (96, 64), (64, 96), (70, 70), (100, 60), (60, 100)]
    (tmp_path / "d").mkdir(exist_ok=True)
    for n, size in enumerate(sizes):
        Image.effect_noise(size, 40 + n).convert("RGB").save(tmp_path / "d" / f"{n}.png")
        (tmp_path / "d" / f"{n}.txt").write_text(f"sks, item {n}", encoding="utf-8")
    recipe = tmp_path / "r.sdx"
    recipe.write_text(RECIPE.format(clauses=clauses), encoding="utf-8")
    return recipe


def counts(output: str) -> dict[str, tuple[int, int]]:
    found = {}
    for line in output.splitlines():
        if "cache:" in line:
            name, rest = line.strip().split(": ", 1)
            encoded, reused = (int(part.split()[0]) for part in rest.split(", "))
            found[name] = (encoded, reused)
    return found


def test_latent_keys_change_exactly_when_an_input_that_matters_changes() -> None:
    crop = bk.Crop(96, 64, 0, 16)
    base = dict(image_hash="a" * 64, bucket=(64, 64), crop=crop, flip=False, vae="v", dtype="float32")
    key = rc.latent_key(**base)  # type: ignore[arg-type]
    assert key == rc.latent_key(**base)  # type: ignore[arg-type]
    changes = [("image_hash", "b" * 64), ("bucket", (64, 96)), ("crop", bk.Crop(96, 64, 0, 0)),
               ("flip", True), ("vae", "w"), ("dtype", "bfloat16")]
    for field, value in changes:
        assert rc.latent_key(**{**base, field: value}) != key, field  # type: ignore[arg-type]
    text = rc.text_key("sks, red", "t", "e")
    assert text == rc.text_key("sks, red", "t", "e")
    assert len({text, rc.text_key("sks, blue", "t", "e"), rc.text_key("sks, red", "u", "e"),
                rc.text_key("sks, red", "t", "f")}) == 4


def test_cache_twice_then_edit_one_image_then_share_and_run(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    runner = CliRunner()
    first = runner.invoke(cache_command, [str(recipe)])
    assert first.exit_code == 0, first.output
    assert counts(first.output) == {"latent cache": (6, 0), "text-encoder cache": (6, 0)}
    second = runner.invoke(cache_command, [str(recipe)])
    assert counts(second.output) == {"latent cache": (0, 6), "text-encoder cache": (0, 6)}
    Image.effect_noise((96, 64), 99).convert("RGB").save(tmp_path / "d" / "1.png")
    third = runner.invoke(cache_command, [str(recipe)])
    assert counts(third.output) == {"latent cache": (1, 5), "text-encoder cache": (0, 6)}
    # A second recipe over the same data (another step count) shares every entry.
    other = tmp_path / "other.sdx"
    other.write_text(recipe.read_text(encoding="utf-8").replace("steps 3", "steps 5"), encoding="utf-8")
    assert counts(runner.invoke(cache_command, [str(other)]).output)["latent cache"] == (0, 6)
    stale = list((tmp_path / ".sdxlc-cache" / "latents").rglob("*.safetensors"))
    assert len(stale) == 7 and not list((tmp_path / ".sdxlc-cache").rglob("*.tmp"))


def test_without_to_disk_there_is_nothing_to_precompute(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    recipe.write_text(recipe.read_text(encoding="utf-8").replace(" to disk", ""), encoding="utf-8")
    result = CliRunner().invoke(cache_command, [str(recipe)])
    assert result.exit_code == 1 and "nothing to precompute" in result.output


def test_a_file_corrupted_after_planning_stops_the_run_before_it_writes(tmp_path: Path) -> None:
    """The plan recorded the image's bytes: a run never trains on (or around) other bytes."""
    from runtime import InputChanged

    recipe = dataset(tmp_path)
    text = recipe.read_text(encoding="utf-8").replace("cache latents to disk\ncache te to disk\n", "")
    recipe.write_text(text, encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None
    broken = tmp_path / "d" / "0.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(InputChanged, match="0.png: its bytes changed"):
        run_plan(compiled.plan, progress=False)
    assert not Path(compiled.plan["output"]["dir"], "plan.json").exists()


def test_nan_latents_are_encoded_again_in_fp32(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The VAE gives NaN for one image in bf16: that image alone is encoded again in fp32, with a message."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from runtime.model.load import setup_model
    from runtime.train.conditioning import Conditioning
    from runtime.train.data import load_pixels, setup_data

    plan = make_plan(tmp_path, data={"cache": {"text_encoder": False, "latents": True, "to_disk": False,
                                               "dir": str(tmp_path / "cache")}})
    models, data = setup_model(plan), setup_data(plan)
    vae = models.pipe.vae
    vae.to(torch.bfloat16)
    models.vae_dtype = torch.bfloat16
    encode, calls = vae.encode, []

    def encode_nan_once(pixels: torch.Tensor, *args: object, **kwargs: object) -> AutoencoderKLOutput:
        calls.append(pixels.dtype)
        out = encode(pixels, *args, **kwargs)
        if pixels.dtype == torch.bfloat16 and calls.count(torch.bfloat16) == 3:
            nan = torch.full_like(out.latent_dist.parameters, float("nan"))
            return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(nan))
        return out

    vae.encode = encode_nan_once  # type: ignore[method-assign]
    said: list[str] = []
    conditioning = Conditioning(models, data, plan["data"]["cache"], said.append)
    images = list(dict.fromkeys(s.image for s in data.samples))  # in the order they are encoded
    third = data.images[images[2]]
    bf16 = torch.bfloat16
    assert calls == [bf16] * 3 + [torch.float32] + [bf16] * (len(images) - 3)  # that image, again in fp32
    assert said == [f"{third.path}: the VAE gave NaN/inf latents in bfloat16; encoded again in fp32"]
    assert vae.dtype == torch.bfloat16  # put back after the fp32 pass
    assert conditioning.latents is not None
    cached = conditioning.latents[(images[2], False)]
    assert cached.dtype == torch.bfloat16 and torch.isfinite(cached).all()
    sample = next(s for s in data.samples if s.image == images[2])
    vae.to(torch.float32)
    pixels = load_pixels(third, sample.crop, sample.bucket, False)[None]
    expected = encode(pixels).latent_dist.parameters[0].to(torch.bfloat16)
    assert torch.equal(cached, expected)
