"""The quickstart visibly learns: a short run of recipes/quickstart.sdx on the shipped tiny-shapes base model
moves its samples toward the outline drawings it trains on, and its loss falls."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.train import checkpoint
from runtime.train.run import execute
from sdxlc.pipeline import compile_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
STEPS = 60


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def distance(sample: np.ndarray, targets: list[np.ndarray]) -> float:
    """Root-mean-square pixel distance to the nearest training image."""
    return min(float(np.sqrt(np.mean((sample - target) ** 2))) for target in targets)


def test_a_short_quickstart_run_moves_samples_toward_the_training_images(tmp_path: Path) -> None:
    shutil.copy(RECIPES / "quickstart.sdx", tmp_path / "quickstart.sdx")
    for folder in ("data", "models"):
        (tmp_path / folder).mkdir()
    (tmp_path / "data" / "outlines").symlink_to(RECIPES / "data" / "outlines")
    (tmp_path / "models" / "tiny-shapes").symlink_to(RECIPES / "models" / "tiny-shapes")
    compiled = compile_recipe(tmp_path / "quickstart.sdx", (f"training.steps={STEPS}",))
    assert compiled.plan is not None, compiled.diagnostics
    plan = compiled.plan
    assert plan["sample"]["before"] and plan["model"]["kind"] == "diffusers_folder"

    result = execute(plan, progress=False)

    samples = Path(plan["output"]["dir"]) / "samples"
    assert result.before_after == samples / "before-after.png" and result.before_after.is_file()
    targets = [pixels(p) for p in sorted((RECIPES / "data" / "outlines").glob("*.png"))]
    moved = []
    for index in range(len(plan["sample"]["prompts"])):
        before = distance(pixels(samples / f"quickstart-step000000-{index:02d}.png"), targets)
        after = distance(pixels(samples / f"quickstart-step{STEPS:06d}-{index:02d}.png"), targets)
        moved.append((before, after))
        assert after < before, (index, before, after)
    before, after = moved[0]  # the first prompt is a training caption (data/make_outlines.py)
    assert after < 0.85 * before, moved
    with Image.open(result.before_after) as grid:
        width, height = plan["sample"]["width"], plan["sample"]["height"]
        assert grid.size == (width * len(plan["sample"]["prompts"]), 2 * height)

    losses = checkpoint.load_state(checkpoint.folder_for(Path(plan["output"]["dir"]), STEPS)).position.losses
    assert len(losses) == STEPS
    half = STEPS // 2
    assert np.mean(losses[half:]) < np.mean(losses[:half]), losses
