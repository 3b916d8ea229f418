"""Nonsense settings are flagged: an error past a field's bounds, a warning outside its usual range.

The list below is the issue's nonsense recipes (lr 10, steps 1e9, repeat 1e9, betas 5,5, dropout 1, a
loss weight of 0 on the only dataset, noise offset 100, seeds ≥ 2^64, …): each must produce at least
one diagnostic, and the usual settings none.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sdxlc.pipeline import Compiled, compile_recipe

ROOT = Path(__file__).resolve().parent.parent
DATA = 'data "data/quickstart"'

NONSENSE = [
    "lr 10", "lr 1e-12", "lr 5 sgd", "steps 1000000000", "steps 2000000", "epochs 1000000000",
    "epochs 200000",
    f"{DATA} repeat 1000000000", f"{DATA} repeat 5000", "optimizer adamw args betas=5,5",
    "optimizer adamw args eps=5", "optimizer adamw args weight_decay=100",
    "optimizer adamw args weight_decay=-1", "optimizer sgd args momentum=2",
    "optimizer adafactor args decay_rate=1", "optimizer prodigy args d_coef=0", f"{DATA} dropout 1",
    "lora dropout 1", "lora dropout 0.9", f"{DATA} loss weight 0", f"{DATA} loss weight 1000",
    "noise offset 100", "noise offset 0.5", "noise perturbation 5", "snr gamma 1000000", "snr gamma 0.01",
    "loss huber c 1000000", "seed 18446744073709551616", "seed 4294967296",
    'sample "x" seed 18446744073709551616',
    "model tiny seed 18446744073709551616", 'sample "x" steps 100000', 'sample "x" steps 500',
    'sample "x" cfg 1000', 'sample "x" cfg 50', 'sample "x" size 100000', 'sample "x" size 100',
    "resolution 96 buckets 64..1000000 step 32", "resolution 96 step 100000", "lora rank 512",
    "lora alpha 1000000000", "clip 1000000000", "batch 100000", "batch 2 accumulate 100000",
    "save every 1000000000 steps", "save keep 1000000", "log every 1000000000", f"{DATA} color jitter 1",
    f"{DATA} tag dropout 1", f"{DATA} keep 100000", "model tiny init normal 50", "model tiny init normal 0.5",
    "schedule cosine warmup 100000000000", "block_lr 10 x23", "lora te1 lr 50 on unet+te1", 'data "/"',
    'output "/"', 'output "data/quickstart"', "lr 1e-4 prodigy",
]


def _compile(tmp_path: Path, text: str) -> Compiled:
    (tmp_path / "data").mkdir(exist_ok=True)
    if not (tmp_path / "data" / "quickstart").exists():
        (tmp_path / "data" / "quickstart").symlink_to(ROOT / "recipes" / "data" / "quickstart")
    recipe = tmp_path / "r.sdx"
    recipe.write_text(text, encoding="utf-8")
    return compile_recipe(recipe)


@pytest.mark.parametrize("line", NONSENSE)
def test_nonsense_is_flagged_where_it_is_written(tmp_path: Path, line: str) -> None:
    body = line + "\n" if line.startswith("data ") else f"{DATA}\n{line}\n"
    compiled = _compile(tmp_path, "model tiny\n" + body)
    flagged = [d for d in compiled.diagnostics if d.span is not None and d.span.file.endswith("r.sdx")]
    assert flagged, f"`{line}` plans without a word"
    assert all(d.span is not None for d in compiled.errors)


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.sdx")), ids=lambda p: p.name)
def test_usual_settings_plan_without_a_bound_warning(recipe: Path) -> None:
    compiled = compile_recipe(recipe)
    assert [d.code for d in compiled.diagnostics if d.code in ("SDX0404", "SDX0407", "SDX0533")] == []


@pytest.mark.parametrize("line", ["lr 1e-4", "lr 1e-3 adamw8bit", "lr 1e-6", "lr 5e-3", "lr 1 prodigy",
                                  "lr 0.1 sgd", "noise offset 0.0357", "snr gamma 5",
                                  "lora rank 128 alpha 64",
                                  'sample "x" steps 30 cfg 7'])
def test_usual_values_are_not_flagged(tmp_path: Path, line: str) -> None:
    compiled = _compile(tmp_path, f"model tiny\n{DATA}\n{line}\n")
    assert compiled.diagnostics == [] and compiled.plan is not None


def test_a_bound_error_says_the_value_the_bound_and_why(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, f"model tiny\n{DATA}\nnoise offset 100\n")
    (diag,) = compiled.errors
    assert diag.code == "SDX0404" and "100" in diag.message and "1" in diag.message
    assert diag.help is not None and "outweighs the noise" in diag.help


def test_an_unusual_value_is_a_warning_with_its_range(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, f"model tiny\n{DATA}\nlr 10\n")
    assert compiled.errors == [] and compiled.plan is not None
    (diag,) = compiled.diagnostics
    assert (diag.code, diag.severity) == ("SDX0407", "warning") and "1e-08 to 0.01" in diag.message
    assert diag.span is not None and diag.span.line == 3


def test_loss_weight_zero_on_every_training_dataset_is_an_error(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, f"model tiny\n{DATA} loss weight 0\n")
    assert [(d.code, d.span.line if d.span else None) for d in compiled.errors] == [("SDX0532", 2)]


def _kohya(tmp_path: Path, repeat: int) -> str:
    """A kohya-style folder whose name repeats the 12 quickstart images `repeat` times."""
    (tmp_path / "kohya").mkdir()
    (tmp_path / "kohya" / f"{repeat}_style").symlink_to(ROOT / "recipes" / "data" / "quickstart")
    return 'data "kohya"'


def test_implied_counts_are_bounded(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, f"model tiny\n{_kohya(tmp_path, 500)} repeat 1000\nepochs 1000000\n")
    codes = [(d.code, d.span.line if d.span else None) for d in compiled.errors]
    assert codes == [("SDX0533", 3), ("SDX0533", 2)]  # 6 million samples an epoch; 6e12 steps


def test_balancing_regularization_images_takes_no_time(tmp_path: Path) -> None:
    start = time.perf_counter()
    data = _kohya(tmp_path, 99999)
    compiled = _compile(tmp_path, f"model tiny\n{data} repeat 100000\n{DATA} as regularization\nsteps 10\n")
    assert time.perf_counter() - start < 2
    assert [d.code for d in compiled.errors] == ["SDX0533"]
