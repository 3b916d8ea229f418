"""Output folders never lose a result: re-runs, shared folders, resumed segments, verified checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from sdxlc.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "recipes" / "data" / "quickstart"


def _recipe(folder: Path, name: str = "r", steps: int = 4, extra: str = "") -> Path:
    data = folder / "data"
    if not data.exists():
        shutil.copytree(QUICKSTART, data)
    recipe = folder / f"{name}.sdx"
    recipe.write_text(
        'sdx 1\nmodel tiny\nprofile cpu\ndata "data" caption .txt\nresolution 64 buckets 64..128 step 32\n'
        f"lora rank 4 on unet\nlr 1e-3 adamw\nbatch 2\nsteps {steps}\nseed 5\nlog every 1 no tensorboard\n"
        f'save every 2 steps keep 3\noutput "out"\n{extra}',
        encoding="utf-8",
    )
    return recipe


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *args])
    return result.exit_code, result.output


def test_a_second_run_into_the_same_folder_is_refused_and_overwrite_moves_it_aside(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    assert _run(str(recipe))[0] == 0
    lora = tmp_path / "out" / "r.safetensors"
    first = lora.read_bytes()
    code, output = _run(str(recipe), "--set", "training.seed=6")
    assert code == 2 and "holds the results of another run" in output and "--overwrite" in output, output
    assert lora.read_bytes() == first
    code, output = _run(str(recipe), "--set", "training.seed=6", "--overwrite")
    assert code == 0 and "moved the earlier run's results to" in output, output
    (aside,) = (tmp_path / "out" / "previous").iterdir()
    assert (aside / "r.safetensors").read_bytes() == first
    assert json.loads((aside / "plan.json").read_text())["training"]["seed"] == 5
    assert (aside / "checkpoints" / "step-000004").is_dir()
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["training"]["seed"] == 6


def test_two_recipes_sharing_a_folder_cannot_take_each_others_checkpoints(tmp_path: Path) -> None:
    assert _run(str(_recipe(tmp_path, "a")))[0] == 0
    other = _recipe(tmp_path, "b")
    code, output = _run(str(other))
    assert code == 2 and "another run (plan" in output, output
    code, output = _run(str(other), "--resume")
    assert code == 1 and "a checkpoint of `a`, not of `b`" in output, output
    assert (tmp_path / "out" / "a.safetensors").exists() and not (tmp_path / "out" / "b.safetensors").exists()


def test_an_empty_resume_value_is_a_usage_error(tmp_path: Path) -> None:
    code, output = _run(str(_recipe(tmp_path)), "--resume", "")
    assert code == 2 and "--resume takes" in output


def test_a_resumed_segment_keeps_the_original_plan(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, steps=4)
    assert _run(str(recipe))[0] == 0
    original = (tmp_path / "out" / "plan.json").read_bytes()
    longer = _recipe(tmp_path, steps=6)
    code, output = _run(str(longer), "--resume", "--allow", "schedule")
    assert code == 0, output
    assert (tmp_path / "out" / "plan.json").read_bytes() == original
    segment = json.loads((tmp_path / "out" / "plans" / "resume-1.json").read_text())
    assert segment["training"]["total_steps"] == 6
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "r.safetensors", "pt") as handle:
        lineage = handle.metadata()["sdxlc_lineage"].split(",")
    assert lineage == [json.loads(original)["plan_hash"], segment["plan_hash"]]


def test_a_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, steps=4)
    assert _run(str(recipe))[0] == 0
    checkpoints = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002", "step-000004"]
    weights = checkpoints / "step-000004" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    verify = CliRunner().invoke(main, ["runs", "verify", str(tmp_path / "out")])
    assert verify.exit_code == 3 and "DAMAGED  checkpoints/step-000004" in verify.output, verify.output
    code, output = _run(str(_recipe(tmp_path, steps=6)), "--resume", "--allow", "schedule")
    assert code == 0, output
    assert "skipped step-000004: trainable.safetensors does not match" in output
    assert "resuming from" in output and "step-000002" in output
    for folder in checkpoints.iterdir():
        (folder / "SHA256SUMS").write_text("garbage\n")
    code, output = _run(str(_recipe(tmp_path, steps=8)), "--resume", "--allow", "schedule")
    assert code == 3 and "no intact checkpoint" in output, output


def test_runs_verify_passes_an_intact_folder(tmp_path: Path) -> None:
    assert _run(str(_recipe(tmp_path)))[0] == 0
    result = CliRunner().invoke(main, ["runs", "verify", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "ok       r.safetensors" in result.output and "ok       checkpoints/step-000002" in result.output
    (tmp_path / "out" / "r.safetensors").write_bytes(b"\0" * 10)
    result = CliRunner().invoke(main, ["runs", "verify", str(tmp_path / "out")])
    assert result.exit_code == 3 and "r.safetensors does not match its sha256" in result.output


def test_run_and_cache_report_the_bad_inputs_plan_reports(tmp_path: Path) -> None:
    from sdxlc.cli.data import cache_command

    recipe = _recipe(tmp_path, extra="cache latents to disk\n")
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "data" / "huge.png").write_bytes((QUICKSTART / "00.png").read_bytes())
    (tmp_path / "data" / "huge.txt").write_bytes(b"tag, " * 8000)
    runner = CliRunner()
    for result in (runner.invoke(cache_command, [str(recipe)]), runner.invoke(main, ["run", str(recipe)])):
        assert result.exit_code == 0, result.output
        assert "warning: skipped 2 bad input file(s)" in result.output
        assert "broken.png: not an image" in result.output
        assert "huge.png: caption file huge.txt is over" in result.output


def test_a_checkpoint_whose_sums_leave_out_a_file_is_not_trusted(tmp_path: Path) -> None:
    assert _run(str(_recipe(tmp_path, steps=4)))[0] == 0
    newest = tmp_path / "out" / "checkpoints" / "step-000004"
    (newest / "SHA256SUMS").write_text("")
    (newest / "trainable.safetensors").write_bytes(b"\0" * 10)
    verify = CliRunner().invoke(main, ["runs", "verify", str(tmp_path / "out")])
    assert verify.exit_code == 3 and "SHA256SUMS does not list trainable.safetensors" in verify.output
    older = tmp_path / "out" / "checkpoints" / "step-000002"
    (older / "SHA256SUMS").write_text((older / "SHA256SUMS").read_text() + f"{'0' * 64}  ../plan.json\n")
    code, output = _run(str(_recipe(tmp_path, steps=6)), "--resume", "--allow", "schedule")
    assert code == 3 and "outside the checkpoint" in output and "no intact checkpoint" in output, output


def test_a_refused_resume_writes_nothing(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, steps=4)
    assert _run(str(recipe))[0] == 0
    before = sorted(str(p) for p in (tmp_path / "out").rglob("*"))
    for args in (["--resume", "--set", "optimizer.lr=2e-3"],  # needs --allow schedule
                 ["--resume"],  # finished: nothing left to train
                 ["--resume", str(tmp_path / "nowhere")]):
        code, output = _run(str(recipe), *args)
        assert code in (1, 2, 3) and "Traceback" not in output, output
    assert "nothing left to train" in _run(str(recipe), "--resume")[1]
    assert _run(str(recipe), "--resume", str(tmp_path / "nowhere"))[0] == 2
    assert sorted(str(p) for p in (tmp_path / "out").rglob("*")) == before


def test_runs_verify_notes_an_interrupted_save_and_refuses_a_folder_that_is_no_run(tmp_path: Path) -> None:
    assert _run(str(_recipe(tmp_path)))[0] == 0
    (tmp_path / "out" / "checkpoints" / ".step-000006.tmp-99").mkdir()
    result = CliRunner().invoke(main, ["runs", "verify", str(tmp_path / "out")])
    assert result.exit_code == 0 and "note     checkpoints/.step-000006.tmp-99" in result.output
    (tmp_path / "out" / "r-step000002.safetensors").unlink()
    result = CliRunner().invoke(main, ["runs", "verify", str(tmp_path / "out")])
    assert result.exit_code == 3 and "r-step000002.safetensors is missing" in result.output
    result = CliRunner().invoke(main, ["runs", "verify", str(tmp_path / "data")])
    assert result.exit_code == 2 and "not the output folder of a run" in result.output


def test_plan_o_never_replaces_a_runs_plan(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    assert _run(str(recipe))[0] == 0
    before = (tmp_path / "out" / "plan.json").read_bytes()
    result = CliRunner().invoke(main, ["plan", str(recipe), "--set", "training.seed=9", "-o",
                                       str(tmp_path / "out" / "plan.json")])
    assert result.exit_code == 2 and "is the plan of the run" in result.output
    assert (tmp_path / "out" / "plan.json").read_bytes() == before


def test_the_average_loss_goes_on_after_a_resume(tmp_path: Path) -> None:
    """The printed moving average is the uninterrupted run's, not a new average from the resumed step."""
    recipe = _recipe(tmp_path, steps=6)
    code, first = _run(str(recipe))
    assert code == 0, first
    code, again = _run(str(recipe), "--resume", str(tmp_path / "out" / "checkpoints" / "step-000002"))
    assert code == 0, again

    def line(output: str, step: int) -> str:
        return next(x for x in output.splitlines() if x.startswith(f"step {step}/6 ")).split("  ")[1]

    assert line(again, 6) == line(first, 6) and line(again, 3) == line(first, 3)
