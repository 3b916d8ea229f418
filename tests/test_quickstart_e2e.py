"""The newcomer's first command, end to end in a fresh process: `sdxlc run recipes/quickstart.sdx`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent


def test_sdxlc_run_quickstart(tmp_path: Path) -> None:
    shutil.copy(ROOT / "recipes" / "quickstart.sdx", tmp_path / "quickstart.sdx")
    for folder in ("data", "models"):  # the recipe's dataset and base model, where it names them
        (tmp_path / folder).symlink_to(ROOT / "recipes" / folder, target_is_directory=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdxlc.cli",
            "run",
            str(tmp_path / "quickstart.sdx"),
            "--set",
            "training.steps=12",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out_dir = tmp_path / "out" / "quickstart"
    lora = out_dir / "quickstart.safetensors"
    assert f"LoRA:    {lora}" in proc.stdout
    assert f"plan:    {out_dir / 'plan.json'}" in proc.stdout
    samples = sorted((out_dir / "samples").glob("quickstart-*.png"))
    assert samples and f"sample:  {samples[0]}" in proc.stdout
    assert f"before/after: {out_dir / 'samples' / 'before-after.png'}" in proc.stdout
    plan = json.loads((out_dir / "plan.json").read_text())
    assert plan["training"]["total_steps"] == 12
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["sdxlc_plan_hash"] == plan["plan_hash"]
    assert json.loads(meta["sdxlc_plan"])["plan_hash"] == plan["plan_hash"]
    assert meta["ss_steps"] == "12" and meta["ss_network_dim"] == "16"
    assert keys and all(k.startswith("lora_unet_") for k in keys)
