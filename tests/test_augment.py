"""Random crop and colour jitter: real offsets in the size conditioning, and no cached latents."""

from __future__ import annotations

import json
import random
from pathlib import Path

from click.testing import CliRunner

from runtime.train.data import load_pixels, make_batch, setup_data
from sdxlc.cli.main import main
from sdxlc.plan import buckets as bk

ROOT = Path(__file__).resolve().parent.parent


def test_random_crop_stays_inside_and_varies() -> None:
    crop = bk.cover_crop(150, 100, (96, 96))
    rng = random.Random(0)
    seen = {bk.random_crop(crop, (96, 96), rng) for _ in range(50)}
    assert len({c.left for c in seen}) > 5
    for c in seen:
        assert 0 <= c.left <= crop.scaled_w - 96 and 0 <= c.top <= crop.scaled_h - 96


def test_batches_carry_the_random_offsets(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, data__datasets__0__random_crop=True)
    data = setup_data(plan)
    rng = random.Random(3)
    offsets = set()
    for _ in range(4):
        for indices in data.epoch(0):
            batch = make_batch(data, indices, rng)
            offsets |= {(int(t[2]), int(t[3])) for t in batch.time_ids}
    centred = {(s.crop.top, s.crop.left) for s in data.samples}
    assert offsets - centred  # offsets other than the centre crop reach the size conditioning


def test_color_jitter_changes_pixels(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path)
    data = setup_data(plan)
    sample = data.samples[0]
    item = data.images[sample.image]
    plain = load_pixels(item, sample.crop, sample.bucket, False)
    jittered = load_pixels(item, sample.crop, sample.bucket, False, (1.2, 0.8, 1.1))
    assert plain.shape == jittered.shape and (plain - jittered).abs().mean() > 0.01


def test_cached_latents_with_pixel_augmentation_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = tmp_path / "r.sdx"
    recipe.write_text('model tiny\ndata "data" random crop color jitter 0.1\nlora rank 4 cache latents\n')
    result = CliRunner().invoke(main, ["check", str(recipe), "--format", "json"])
    assert result.exit_code == 1
    found = [d for d in json.loads(result.stdout) if d["code"] == "SDX0525"]
    assert len(found) == 2 and {d["line"] for d in found} == {2}
