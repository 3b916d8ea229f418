"""`sdxlc run PLAN.json`: the runtime executes a sealed plan and its sample manifest, and nothing else.

A plan file runs as it is (checked against the plan schema and its own hash); every image and model
file is checked against the hashes the plan recorded; a launched process never compiles the recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdxlc.cli.main import main
from sdxlc.plan.contract import plan_hash

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "recipes" / "data" / "quickstart"


def _recipe(folder: Path, extra: str = "", model: str = "tiny") -> Path:
    data = folder / "data"
    if not data.exists():
        shutil.copytree(QUICKSTART, data)
    recipe = folder / "r.sdx"
    recipe.write_text(
        f'sdx 1\nmodel "{model}"\nprofile cpu\ndata "data" caption .txt\n'
        "resolution 64 buckets 64..128 step 32\n"
        f'lora rank 4 on unet\nlr 1e-3 adamw\nbatch 2\nsteps 3\nseed 5\nlog every 1 no tensorboard\n'
        f'output "out"\n{extra}',
        encoding="utf-8",
    )
    return recipe


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _plan(folder: Path, *extra: str) -> Path:
    recipe = _recipe(folder)
    code, output = _cli("plan", str(recipe), "-o", str(folder / "p.json"), *extra)
    assert code == 0, output
    return folder / "p.json"


def _env() -> dict[str, str]:
    inside = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SDXLC_LAUNCHED")
    env = {k: v for k, v in os.environ.items() if k not in inside}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SOURCE_DATE_EPOCH": "1700000000"}


def _sdxlc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sdxlc.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def test_plan_o_writes_the_manifest_the_plan_names(tmp_path: Path) -> None:
    plan = json.loads(_plan(tmp_path).read_text(encoding="utf-8"))
    summary = plan["data"]["manifest"]
    sidecar = json.loads((tmp_path / summary["file"]).read_text(encoding="utf-8"))
    assert summary["images"] == len(sidecar["images"]) == 12 and summary["samples"] == 12
    first = sidecar["images"][0]
    assert first["caption_source"].endswith("00.txt") and first["count"] == 1
    assert set(first) >= {"path", "sha256", "size", "bucket", "crop", "caption"}
    assert plan["optimizer"]["class"] == "torch.optim.AdamW"


@pytest.mark.slow
def test_a_plan_file_trains_the_same_bytes_as_the_recipe(tmp_path: Path) -> None:
    plan_file = _plan(tmp_path)
    ran = _sdxlc("run", str(plan_file))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "running plan" in ran.stderr and "compiled" not in ran.stderr
    from_plan = (tmp_path / "out" / "r.safetensors").read_bytes()
    shutil.move(tmp_path / "out", tmp_path / "first")
    again = _sdxlc("run", str(tmp_path / "r.sdx"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "compiled" in again.stderr
    assert (tmp_path / "out" / "r.safetensors").read_bytes() == from_plan


def test_an_image_edited_after_planning_stops_the_run_with_exit_3(tmp_path: Path) -> None:
    plan_file = _plan(tmp_path)
    (tmp_path / "data" / "04.png").write_bytes((QUICKSTART / "05.png").read_bytes())
    code, output = _cli("run", str(plan_file))
    assert code == 3, output
    assert "04.png: its bytes changed" in output and "sdxlc plan" in output
    assert not (tmp_path / "out" / "plan.json").exists()  # nothing written before the inputs are checked


def test_a_model_file_changed_after_planning_stops_the_run(tmp_path: Path, tiny_folder: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_folder, model)
    _recipe(tmp_path, model=str(model))
    code, output = _cli("plan", str(tmp_path / "r.sdx"), "-o", str(tmp_path / "p.json"))
    assert code == 0, output
    files = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["model"]["files"]
    assert any(f["path"].endswith("unet/config.json") for f in files)
    config = model / "unet" / "config.json"
    config.write_text(config.read_text(encoding="utf-8").replace("\n", "\n "), encoding="utf-8")
    code, output = _cli("run", str(tmp_path / "p.json"))
    assert code == 3 and "the model file" in output and "unet/config.json" in output, output


def test_a_plan_runs_from_another_folder_with_its_manifest(tmp_path: Path) -> None:
    """Reviewed on one machine, run on another: the manifest travels beside the plan file."""
    from runtime.train.data import load_manifest

    plan_file = _plan(tmp_path)
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    shutil.rmtree(plan["data"]["cache"]["dir"])  # the other machine has no cache folder
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("p.json", plan["data"]["manifest"]["file"]):
        shutil.move(tmp_path / name, moved / name)
    assert len(load_manifest(plan, moved / "p.json").images) == 12
    (moved / plan["data"]["manifest"]["file"]).unlink()
    code, output = _cli("run", str(moved / "p.json"))
    assert code == 3 and "manifest" in output and "not found intact" in output, output


def test_a_tampered_plan_file_is_refused(tmp_path: Path) -> None:
    plan_file = _plan(tmp_path)
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    plan["optimizer"]["lr"] = 0.5
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    code, output = _cli("run", str(plan_file))
    assert code == 2 and "plan_hash" in output, output
    plan["plan_hash"] = plan_hash(plan)
    plan["optimizer"]["class"] = 7
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    code, output = _cli("run", str(plan_file))
    assert code == 2 and "optimizer.class" in output, output
    plan_file.write_text("{ not json", encoding="utf-8")
    code, output = _cli("run", str(plan_file))
    assert code == 2 and "invalid JSON" in output, output


def test_a_plan_file_takes_no_recipe_overrides(tmp_path: Path) -> None:
    code, output = _cli("run", str(_plan(tmp_path)), "--set", "training.steps=9")
    assert code == 2 and "a plan file runs as it is" in output


@pytest.mark.slow
def test_launched_processes_run_the_plan_file_and_never_compile(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "processes 2\n")
    done = subprocess.run([sys.executable, "-m", "sdxlc.cli", "run", str(recipe)], capture_output=True,
                          text=True, timeout=300, env={**_env(), "MAIN_PROCESS_PORT": "29519"})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert log.count("compiled ") == 1  # the launching process, once
    plan_file = tmp_path / "out" / "plan.json"
    # each launched process runs the written plan; rank 0 alone says so, and prints the summary and result
    assert log.count(f"running plan {plan_file}") == 1
    assert log.count(": LoRA rank 4 (unet) on tiny") == 1
    assert log.count("are smaller than their bucket and are upscaled") == 1  # the plan's warning
    assert log.count("done in ") == 1
    assert f"-m sdxlc.cli run {plan_file}" in log
    # relaunch wrote the accelerate config and ran `accelerate launch` with it
    assert "accelerate.commands.launch --config_file" in log
    assert (tmp_path / "out" / "launch" / "accelerate.json").exists()
    assert (tmp_path / "out" / "r.safetensors").exists()


def test_hostile_plan_files_are_usage_errors_never_internal_ones(tmp_path: Path) -> None:
    plan_file = _plan(tmp_path)
    text = plan_file.read_text(encoding="utf-8")
    for bad in (text.replace('"lr": 0.001', '"lr": NaN'), "[" * 100000 + "]" * 100000):
        plan_file.write_text(bad, encoding="utf-8")
        code, output = _cli("run", str(plan_file))
        assert code == 2 and "invalid JSON" in output, output
    plan = json.loads(text)
    plan["output"]["name"] = "../../escape"
    plan["plan_hash"] = plan_hash(plan)
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    code, output = _cli("run", str(plan_file))
    assert code == 2 and "output.name" in output, output
