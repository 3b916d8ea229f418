"""`validate`: a deterministic split recorded in the plan, held-out images never trained on, a validation
loss that repeats exactly, leaves training untouched and reaches TensorBoard, and its checks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runtime.train import checkpoint
from runtime.train.run import execute
from sdxlc.pipeline import compile_recipe
from sdxlc.plan import manifest as mf

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "data" / "quickstart"
RECIPE = """model tiny
profile cpu
data "data"
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet dropout 0.1
lr 5e-3 adamw
batch 2
steps 4
log every 1 {tensorboard}
seed 5
ema 0.9
{validate}
"""


def _compile(folder: Path, validate: str, tensorboard: str = "no tensorboard", data: Path = QUICKSTART,
             seed: str = "") -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "data").exists():
        (folder / "data").symlink_to(data, target_is_directory=True)
    recipe = folder / "r.sdx"
    recipe.write_text(RECIPE.format(validate=validate, tensorboard=tensorboard) + seed, encoding="utf-8")
    return compile_recipe(recipe)


def _plan(folder: Path, validate: str, **kwargs: Any) -> dict[str, Any]:
    compiled = _compile(folder, validate, **kwargs)
    assert compiled.plan is not None, [str(d) for d in compiled.errors]
    return dict(compiled.plan)


def _held(plan: dict[str, Any]) -> list[str]:
    return [Path(image["path"]).name for image in plan["validate"]["images"]]


def test_the_split_is_deterministic_recorded_and_never_trained(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "a", "validate every 2 steps split 25%")
    validate, data = plan["validate"], plan["data"]
    assert validate["source"] == "split" and validate["fraction"] == 0.25
    assert validate["count"] == validate["held_out"] == data["held_out"] == 3 and data["images"] == 9
    assert validate["timesteps"] == [166, 500, 833]  # evenly spaced over [0, 1000)
    # the manifest the run trains from holds none of them
    store = Path(data["cache"]["dir"]) / mf.MANIFEST_DIR / data["manifest"]["file"]
    trained = mf.load(data["manifest"], [store])
    names = {Path(image.path).name for image in trained.images}
    assert len(names) == 9 and not names & set(_held(plan))
    # the same images wherever the folder is and however it is listed; another seed holds out others
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(QUICKSTART, moved)
    assert _held(_plan(tmp_path / "b", "validate split 25%", data=moved)) == _held(plan)
    other = _plan(tmp_path / "c", "validate split 25% seed 11")
    assert other["validate"]["seed"] == 11 and _held(other) != _held(plan)


def _run(folder: Path, validate: str, tensorboard: str = "no tensorboard") -> dict[str, Any]:
    plan = _plan(folder, validate, tensorboard=tensorboard)
    execute(plan, progress=False)
    return plan


def _losses(plan: dict[str, Any]) -> list[float]:
    out = Path(plan["output"]["dir"])
    return list(checkpoint.load_state(checkpoint.complete(out)[-1]).position.losses)


def _scalars(plan: dict[str, Any], tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(Path(plan["output"]["dir"]) / "logs"), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_validation_repeats_exactly_and_leaves_training_unchanged(tmp_path: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    for stem in ("00", "05", "10"):
        for suffix in (".png", ".txt"):
            shutil.copy(QUICKSTART / f"{stem}{suffix}", val / f"v{stem}{suffix}")
    line = f'validate "{val}" every 2 steps'
    first = _run(tmp_path / "a", line, tensorboard="tensorboard")
    second = _run(tmp_path / "b", line, tensorboard="tensorboard")
    plain = _run(tmp_path / "c", "")
    assert first["validate"]["source"] == "folder" and first["validate"]["count"] == 3
    assert first["data"]["held_out"] == 0 and plain["validate"] is None
    # the validation loss after steps 2 and 4, the same in both runs; the EMA's too
    val_loss, val_ema = _scalars(first, "val_loss"), _scalars(first, "val_loss_ema")
    assert [step for step, _ in val_loss] == [2, 4] and [step for step, _ in val_ema] == [2, 4]
    assert val_loss == _scalars(second, "val_loss") and val_ema == _scalars(second, "val_loss_ema")
    assert val_loss[0][1] != val_loss[1][1] and val_loss[1][1] != val_ema[1][1]
    # training: the same step losses and weights with and without validation
    assert _losses(first) == _losses(plain) and len(_losses(plain)) == 4
    for name in ("r.safetensors", "r-ema.safetensors"):
        a, b = (load_file(str(Path(p["output"]["dir"]) / name)) for p in (first, plain))
        assert all(torch.equal(a[key], b[key]) for key in a), name


@pytest.mark.parametrize(("line", "code"), [
    ("validate split 12", "SDX0592"),
    ("validate every 2 steps", "SDX0593"),
    ('validate "missing" split 1', "SDX0502"),
    ("validate every 50 steps split 10%", "SDX0590"),
    ("validate split 0%", "SDX0404"),
])
def test_validate_checks(tmp_path: Path, line: str, code: str) -> None:
    compiled = _compile(tmp_path, line)
    found = [d for d in compiled.diagnostics if d.code == code]
    assert found and found[0].help, [str(d) for d in compiled.diagnostics]


def test_a_validation_folder_warns_of_bad_files_missing_captions_and_training_images(tmp_path: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    shutil.copy(QUICKSTART / "00.png", val / "00.png")  # a training image, without its caption
    (val / "bad.png").write_bytes((QUICKSTART / "01.png").read_bytes()[:200])  # truncated
    plan = _plan(tmp_path, 'validate "val"')
    assert _held(plan) == ["00.png"]
    warnings = "\n".join(plan["warnings"])
    assert "skipped 1 bad input file(s) in validation folder" in warnings and "bad.png" in warnings
    assert "1 validation image(s)" in warnings and "no .txt caption" in warnings
    assert "also training images" in warnings and "00.png" in warnings
    (val / "00.png").unlink()
    compiled = _compile(tmp_path, 'validate "val"')
    found = [d for d in compiled.diagnostics if d.code == "SDX0503"]
    assert found and "bad.png" in found[0].message, [str(d) for d in compiled.diagnostics]


def test_explain_split_describes_images_not_steps() -> None:
    from sdxlc.tools.explain import explain
    text = explain("split")
    assert text is not None and "image count" in text and "step count" not in text
