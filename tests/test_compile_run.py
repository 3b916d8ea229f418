"""`compile` end to end: `sdxlc run` of a recipe with `compile` on the tiny model, compiled by TorchInductor
for real, trains as the same recipe does eager (losses to float rounding) and saves the same keys.

A cold compile of the tiny UNet's step takes minutes on 2 cores, so this test is opt-in:
`pytest -m full` (docs/TRAINING.md "Compiling the step")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runtime.train import checkpoint

ROOT = Path(__file__).resolve().parent.parent
SDXLC = Path(sys.executable).parent / "sdxlc"
RECIPE = f"""sdx 1
model tiny
profile cpu
data "{ROOT / "recipes" / "data" / "quickstart"}"
resolution 64 no buckets
lora rank 4 on unet
batch 2 {{words}}
steps 4
save every 4 steps
seed 3
output "out"
"""


def run(folder: Path, words: str) -> tuple[list[float], dict[str, torch.Tensor], str]:
    folder.mkdir()
    (folder / "r.sdx").write_text(RECIPE.format(words=words), encoding="utf-8")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder.parent / "inductor")}
    done = subprocess.run([str(SDXLC), "run", "r.sdx"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    out = folder / "out"
    losses = list(checkpoint.load_state(checkpoint.folder_for(out, 4)).position.losses)
    weights = load_file(str(next(out.glob("*.safetensors"))))
    return losses, weights, done.stdout + done.stderr


@pytest.mark.full
def test_a_compiled_run_trains_as_the_eager_run(tmp_path: Path) -> None:
    eager_losses, eager_weights, _ = run(tmp_path / "eager", "")
    losses, weights, output = run(tmp_path / "compiled", "compile")
    assert "compile: the first step" in output
    assert losses == pytest.approx(eager_losses, rel=1e-3, abs=1e-5)
    assert weights.keys() == eager_weights.keys()
    for key, value in weights.items():
        torch.testing.assert_close(value, eager_weights[key], rtol=1e-2, atol=1e-4)
