"""Disk caches and bad files during a run: keys, `sdxlc cache` twice, one edited image, a corrupt file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from runtime import cache as rc
from runtime.run import run_plan
from sdxlc import buckets as bk
from sdxlc.cli_data import cache_command
from sdxlc.pipeline import compile_recipe

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


def test_a_file_corrupted_after_planning_is_skipped_and_the_run_finishes(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    text = recipe.read_text(encoding="utf-8").replace("cache latents to disk\ncache te to disk\n", "")
    recipe.write_text(text, encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None
    broken = tmp_path / "d" / "0.png"
    broken.write_bytes(broken.read_bytes()[:60])
    result, _ = run_plan(compiled.plan, progress=False)
    assert result.steps == compiled.plan["training"]["total_steps"] and result.lora_path.is_file()
