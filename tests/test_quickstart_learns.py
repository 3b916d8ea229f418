"""The newcomer's first command, end to end in a fresh process: `sdxlc run recipes/quickstart.sdx`. The
quickstart visibly learns: a short run on the shipped tiny-shapes base model moves its samples toward the
outline drawings it trains on, and its loss falls; the LoRA file it prints carries the plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open

from runtime.train import checkpoint

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
STEPS = 60


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def distance(sample: np.ndarray, targets: list[np.ndarray]) -> float:
    """Root-mean-square pixel distance to the nearest training image."""
    return min(float(np.sqrt(np.mean((sample - target) ** 2))) for target in targets)


def test_sdxlc_run_quickstart_moves_samples_toward_the_training_images(tmp_path: Path) -> None:
    shutil.copy(RECIPES / "quickstart.sdx", tmp_path / "quickstart.sdx")
    for folder in ("data", "models"):  # the recipe's dataset and base model, where it names them
        (tmp_path / folder).symlink_to(RECIPES / folder, target_is_directory=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sdxlc.cli", "run", str(tmp_path / "quickstart.sdx"),
         "--set", f"training.steps={STEPS}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out_dir = tmp_path / "out" / "quickstart"
    plan = json.loads((out_dir / "plan.json").read_text())
    assert plan["training"]["total_steps"] == STEPS
    assert plan["sample"]["before"] and plan["model"]["kind"] == "diffusers_folder"
    lora = out_dir / "quickstart.safetensors"
    assert f"LoRA:    {lora}" in proc.stdout
    assert f"plan:    {out_dir / 'plan.json'}" in proc.stdout
    samples = out_dir / "samples"
    first = sorted(samples.glob("quickstart-*.png"))
    assert first and f"sample:  {first[0]}" in proc.stdout
    assert f"before/after: {samples / 'before-after.png'}" in proc.stdout
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["sdxlc_plan_hash"] == plan["plan_hash"]
    assert json.loads(meta["sdxlc_plan"])["plan_hash"] == plan["plan_hash"]
    assert meta["ss_steps"] == str(STEPS) and meta["ss_network_dim"] == "16"
    assert keys and all(k.startswith("lora_unet_") for k in keys)

    targets = [pixels(p) for p in sorted((RECIPES / "data" / "outlines").glob("*.png"))]
    moved = []
    for index in range(len(plan["sample"]["prompts"])):
        before = distance(pixels(samples / f"quickstart-step000000-{index:02d}.png"), targets)
        after = distance(pixels(samples / f"quickstart-step{STEPS:06d}-{index:02d}.png"), targets)
        moved.append((before, after))
        assert after < before, (index, before, after)
    before, after = moved[0]  # the first prompt is a training caption (data/make_outlines.py)
    assert after < 0.85 * before, moved
    with Image.open(samples / "before-after.png") as grid:
        width, height = plan["sample"]["width"], plan["sample"]["height"]
        assert grid.size == (width * len(plan["sample"]["prompts"]), 2 * height)

    losses = checkpoint.load_state(checkpoint.folder_for(Path(plan["output"]["dir"]), STEPS)).position.losses
    assert len(losses) == STEPS
    half = STEPS // 2
    assert np.mean(losses[half:]) < np.mean(losses[:half]), losses
