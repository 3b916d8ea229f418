"""Checkpoints and exact resume: a resumed run ends with the very weights of one never stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from runtime import RunError
from runtime.train import checkpoint
from runtime.train.run import execute
from sdxlc.cli.main import main
from sdxlc.pipeline import compile_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """model tiny
profile cpu
data "data" shuffle dropout 0.2 flip
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet dropout 0.1
lr 2e-3 adamw; schedule cosine warmup 2
batch 2 accumulate 2
steps {steps}
save every 3 steps keep 10 fp32
log every 1 no tensorboard
seed 7
"""


def _plan(folder: Path, steps: int = 9, extra: str = "") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if not data.exists():
        data.symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = folder / "r.sdx"
    recipe.write_text(RECIPE.format(steps=steps) + extra, encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    return compiled.plan


def _weights(plan: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(plan["output"]["dir"]) / "r.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    plan = _plan(tmp_path_factory.mktemp("whole"))
    execute(plan, progress=False)
    return plan


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoints_hold_the_whole_state(uninterrupted: dict) -> None:
    out = Path(uninterrupted["output"]["dir"])
    names = [p.name for p in checkpoint.complete(out)]
    assert names == ["step-000003", "step-000006", "step-000009"]
    saved = checkpoint.load_state(out / "checkpoints" / "step-000003")
    assert saved.position.step == 3 and len(saved.position.losses) == 3
    assert saved.plan["plan_hash"] == uninterrupted["plan_hash"]
    assert saved.optimizer["state"] and saved.scheduler["last_epoch"] == 3
    assert {"python", "numpy", "torch"} <= set(saved.rng)  # a batch's data randomness is seeded by its place


@pytest.mark.parametrize("at", [3, 6])
def test_resume_from_a_checkpoint_is_bit_exact(uninterrupted: dict, tmp_path: Path, at: int) -> None:
    plan = _plan(tmp_path)
    out = Path(plan["output"]["dir"])
    source = Path(uninterrupted["output"]["dir"]) / "checkpoints" / f"step-{at:06d}"
    shutil.copytree(source, out / "checkpoints" / source.name)
    execute(plan, progress=False, resume=checkpoint.find(out, "latest"))
    _same(_weights(uninterrupted), _weights(plan))


def test_more_steps_with_a_rebuilt_schedule_continues_from_the_checkpoint(
    uninterrupted: dict, tmp_path: Path
) -> None:
    plan = _plan(tmp_path, steps=12)
    out = Path(plan["output"]["dir"])
    source = Path(uninterrupted["output"]["dir"]) / "checkpoints" / "step-000009"
    shutil.copytree(source, out / "checkpoints" / source.name)
    result = execute(plan, progress=False, resume=out / "checkpoints" / source.name, rebuild_schedule=True)
    assert result.steps == 12
    assert [p.name for p in checkpoint.complete(out)][-1] == "step-000012"


def test_resume_past_the_end_is_an_error(uninterrupted: dict, tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    source = Path(uninterrupted["output"]["dir"]) / "checkpoints" / "step-000009"
    with pytest.raises(RunError, match="nothing left to train"):
        execute(plan, progress=False, resume=source)


def test_a_torn_save_leaves_the_previous_checkpoint_intact(uninterrupted: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = Path(uninterrupted["output"]["dir"]) / "checkpoints"
    shutil.copytree(source / "step-000003", out / "checkpoints" / "step-000003")
    # a save killed half-way leaves only a temporary folder behind
    torn = out / "checkpoints" / ".step-000006.tmp-999"
    shutil.copytree(source / "step-000006", torn)
    (torn / "state.json").unlink()
    assert checkpoint.find(out, "latest").name == "step-000003"
    checkpoint.prune(out, 3)
    assert not torn.exists() and checkpoint.load_state(out / "checkpoints" / "step-000003").position.step == 3


def _run_cli(recipe: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sdxlc.cli", "run", str(recipe), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _kill_after(proc: subprocess.Popen[str], folder: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (folder / "state.json").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_then_resume_through_the_cli_is_bit_exact(uninterrupted: dict, tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    recipe, out = tmp_path / "r.sdx", Path(plan["output"]["dir"])
    _kill_after(_run_cli(recipe), out / "checkpoints" / "step-000003")
    resumed = _run_cli(recipe, "--resume")  # a fresh process resumes, saves step 6 and is killed too
    _kill_after(resumed, out / "checkpoints" / "step-000006")
    final = CliRunner().invoke(main, ["run", str(recipe), "--resume", "latest"])  # the last leg in this one
    output = final.output
    assert final.exit_code == 0, output
    assert "resuming from" in output and "step-000006" in output
    _same(_weights(uninterrupted), _weights(plan))


def test_a_full_disk_during_a_save_is_a_clear_error_and_keeps_the_last_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from runtime.train import checkpoint as ckpt

    plan = _plan(tmp_path)
    real = ckpt.write_safetensors
    calls = {"n": 0}

    def fill_up(filename: Path, tensors: dict, metadata: dict | None = None) -> None:
        calls["n"] += 1
        if "step-000006" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(filename, tensors, metadata)

    monkeypatch.setattr(ckpt, "write_safetensors", fill_up)
    full = r"No space left on device \(.* free on its disk\); the previous save is intact"
    with pytest.raises(RunError, match=full):
        execute(plan, progress=False)
    out = Path(plan["output"]["dir"])
    assert [p.name for p in checkpoint.complete(out)] == ["step-000003"]
    assert not list((out / "checkpoints").glob(".*tmp*"))
    assert checkpoint.load_state(out / "checkpoints" / "step-000003").position.step == 3


def test_run_output_holds_the_recipe_and_its_git_state(uninterrupted: dict) -> None:
    out = Path(uninterrupted["output"]["dir"])
    assert (out / "recipe" / "r.sdx").is_file()
    assert uninterrupted["sources"][0]["git"] is None  # a temporary folder is in no repository


def test_a_gpu_plan_on_a_machine_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    plan = _plan(tmp_path)
    plan["hardware"].update(device="cuda", profile="rtx4090-24gb", name="RTX 4090")
    from sdxlc.plan.contract import plan_hash

    plan["plan_hash"] = plan_hash(plan)
    with pytest.raises(RunError, match="no CUDA device"):
        execute(plan, progress=False)
