"""Watching a run: the `log tensorboard` switch, TensorBoard event files, progress lines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runtime import RunError
from runtime.train import tblog
from runtime.train.progress import Progress, duration, memory_text
from runtime.train.run import RunResult, execute
from sdxlc.pipeline import compile_recipe


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def logged(make_plan, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], RunResult]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("tb")
    plan = make_plan(out, training__total_steps=3, log__tensorboard=True, sample__every_steps=2,
                     sample__steps=2, optimizer__lr=1e-3)
    return plan, execute(plan, progress=False)


def test_event_files_hold_loss_lr_grad_norm_and_samples(logged) -> None:  # type: ignore[no-untyped-def]
    plan, result = logged
    assert result.logs == Path(plan["output"]["dir"]) / "logs" and list(result.logs.glob("events.out.*"))
    acc = events(result.logs)
    scalars, images = acc.Tags()["scalars"], acc.Tags()["images"]
    for tag in ("loss/step", "loss/average", "lr/unet", "grad_norm"):
        assert tag in scalars, scalars
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("lr/unet")] == pytest.approx([1e-3] * 3)
    assert all(e.value > 0 for e in acc.Scalars("grad_norm"))
    losses = [e.value for e in acc.Scalars("loss/step")]
    assert acc.Scalars("loss/average")[-1].value == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert {"samples/00", "samples/grid"} <= set(images)
    assert [e.step for e in acc.Images("samples/00")] == [2, 3]  # every 2 steps, and at the end
    last = acc.Images("samples/grid")[-1]
    assert (last.width, last.height) == (64, 64)


def test_grad_norm_and_lr_per_block_without_clipping(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    block_lr = [0.0] * 4 + [2e-3] * 5 + [1e-3] * 14
    plan = make_plan(tmp_path, training__total_steps=1, log__tensorboard=True, sample__prompts=[],
                     optimizer__max_grad_norm=0.0, method__block_lr=block_lr)
    acc = events(execute(plan, progress=False).logs or tmp_path)
    scalars = acc.Tags()["scalars"]
    assert "grad_norm" in scalars and acc.Scalars("grad_norm")[0].value > 0
    lrs = {tag: acc.Scalars(tag)[0].value for tag in scalars if tag.startswith("lr/")}
    assert lrs and all(re.fullmatch(r"lr/block\d\d", tag) for tag in lrs)
    assert lrs["lr/block05"] == pytest.approx(2e-3) and lrs["lr/block11"] == pytest.approx(1e-3)


def test_off_writes_no_logs(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, log__tensorboard=False)
    assert tblog.open_log(plan, main=True) is None
    assert not (tmp_path / "logs").exists()


def test_missing_package_fails_before_the_model_loads(make_plan, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tblog.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr("runtime.train.run.setup_model", lambda plan: pytest.fail("the model was loaded"))
    plan = make_plan(tmp_path, log__tensorboard=True)
    with pytest.raises(RunError, match="pip install tensorboard.*log no tensorboard"):
        execute(plan, progress=False)


@pytest.mark.parametrize(("line", "expected"), [("", True), ("log tensorboard\n", True),
                                                 ("log no tensorboard every 5\n", False)])
def test_the_compiler_decides(tmp_path: Path, line: str, expected: bool) -> None:
    recipe = tmp_path / "r.sdx"
    data = Path(__file__).resolve().parent.parent / "recipes" / "data" / "quickstart"
    recipe.write_text(f'model tiny\ndata "{data}"\nsteps 4\nprofile cpu\n{line}', encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, compiled.errors
    assert compiled.plan["log"]["tensorboard"] is expected
    assert compiled.plan["provenance"]["log.tensorboard"]["source"] == ("recipe" if line else "default")


def test_plain_progress_lines_have_eta_and_memory(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(total=4, every=2, tty=False)
    for step in range(1, 5):
        progress.step(step, 0.5, 1e-4)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"]
    pattern = r"step \d/4  loss 0\.5000  lr 1\.00e-04  [\d.]+ it/s  rss \d+ MiB  eta \S+"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert lines[-1].endswith("eta 0s")


def test_bar_shows_eta_and_memory_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(total=3, every=1, tty=True)
    progress.step(1, 0.25, 2e-4)
    postfix = progress.bar.postfix
    progress.close()
    assert re.search(r"loss 0\.2500  lr 2\.00e-04  [\d.]+ it/s  rss \d+ MiB  eta \S+", postfix), postfix
    assert capsys.readouterr().out == ""  # the bar draws on stderr, stdout stays for results


def test_durations_and_memory_text() -> None:
    assert [duration(s) for s in (4.4, 65, 3725, float("inf"))] == ["4s", "1m05s", "1h02m", "?"]
    assert re.fullmatch(r"rss \d+ MiB", memory_text("cpu"))
    assert tblog.group_tag({"block": 7}, 0, 3) == "lr/block07"
    assert tblog.group_tag({"block": None}, 0, 1) == "lr/unet"
