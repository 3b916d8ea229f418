"""Cadences longer than the run (SDX0590) and Adafactor's default schedule and its warning (SDX0591)."""

from __future__ import annotations

from pathlib import Path

from check_helpers import at, diagnose, only
from conftest import QUICKSTART

from sdxlc.cli.report import render_plan
from sdxlc.lang.diagnostics import Diagnostic
from sdxlc.pipeline import compile_recipe


def codes(diags: list[Diagnostic]) -> list[str]:
    return [d.code for d in diags]


def test_save_sample_and_log_cadences_longer_than_the_run_warn_at_their_clause(tmp_path: Path) -> None:
    text = ("steps 300\nsave every 500 steps keep 2\nsample every 400 steps \"a cat\"\nlog every 301")
    _, diags = diagnose(tmp_path, text)
    found = [d for d in diags if d.code == "SDX0590"]
    assert [d.severity for d in found] == ["warning"] * 3
    save, sample, log = sorted(found, key=lambda d: d.span.line if d.span else 0)
    assert at(save) == (4, 6, 6 + len("every 500 steps"))
    assert "`save every 500 steps`" in save.message and "(300 steps)" in save.message
    assert "only the final one" in save.message and "`save every 150 steps`" in (save.help or "")
    assert "only the final ones" in sample.message and sample.span is not None and sample.span.line == 5
    assert "only the last step is logged" in log.message and log.span is not None and log.span.line == 6


def test_a_cadence_in_epochs_counts_the_steps_per_epoch(tmp_path: Path) -> None:
    plan, diags = diagnose(tmp_path, "batch 2\nsteps 10\nsave every 2 epochs")
    assert plan["training"]["steps_per_epoch"] == 6  # 12 images, batch 2
    assert plan["save"]["every_steps"] == 12
    assert "`save every 2 epochs` is longer than the run (10 steps)" in only(diags, "SDX0590").message
    _, fine = diagnose(tmp_path, "batch 2\nsteps 10\nsave every 1 epochs")
    assert "SDX0590" not in codes(fine)


def test_cadences_within_the_run_and_defaults_do_not_warn(tmp_path: Path) -> None:
    text = 'steps 300\nsave every 300 steps\nsample every 100 steps "a cat"\nlog every 5'
    _, diags = diagnose(tmp_path, text)
    assert "SDX0590" not in codes(diags)
    _, short = diagnose(tmp_path, "steps 3")  # the default `log every 10` is not the recipe's doing
    assert "SDX0590" not in codes(short)


def test_adafactor_without_a_schedule_gets_constant_with_warmup(tmp_path: Path) -> None:
    plan, diags = diagnose(tmp_path, "lr 1e-4 adafactor\nsteps 2000")
    assert plan["schedule"] == {"name": "constant_with_warmup", "warmup_steps": 100}
    assert plan["provenance"]["schedule.name"] == {"source": "default", "at": "for adafactor"}
    assert plan["provenance"]["schedule.warmup_steps"]["at"].startswith("for adafactor")
    assert "SDX0591" not in codes(diags)
    short, _ = diagnose(tmp_path, "lr 1e-4 adafactor\nsteps 300")
    assert short["schedule"]["warmup_steps"] == 30  # at most a tenth of the run
    given, _ = diagnose(tmp_path, "lr 1e-4 adafactor\nsteps 300\nschedule warmup 10")
    assert given["schedule"] == {"name": "constant_with_warmup", "warmup_steps": 10}
    assert given["provenance"]["schedule.warmup_steps"]["source"] == "recipe"


def test_adafactor_relative_step_keeps_the_constant_schedule(tmp_path: Path) -> None:
    plan, diags = diagnose(tmp_path, "optimizer adafactor args relative_step=true\nsteps 300")
    assert plan["schedule"] == {"name": "constant", "warmup_steps": 0}
    assert not {"SDX0544", "SDX0591"} & set(codes(diags))


def test_adafactor_with_another_schedule_warns_at_the_schedule(tmp_path: Path) -> None:
    plan, diags = diagnose(tmp_path, "lr 1e-4 adafactor\nschedule cosine warmup 10\nsteps 300")
    assert plan["schedule"]["name"] == "cosine"
    d = only(diags, "SDX0591")
    assert d.severity == "warning" and "`schedule cosine`" in d.message
    assert "constant_with_warmup" in d.message
    assert d.span is not None and d.span.line == 4
    assert [label for _, label in d.related] == ["Adafactor chosen here"]
    _, advised = diagnose(tmp_path, "lr 1e-4 adafactor\nschedule constant_with_warmup warmup 10\nsteps 300")
    assert "SDX0591" not in codes(advised)
    _, other = diagnose(tmp_path, "lr 1e-4 adamw\nschedule cosine\nsteps 300")
    assert "SDX0591" not in codes(other)


def test_the_plan_shows_why_adafactor_has_its_schedule(tmp_path: Path) -> None:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(f'model tiny\ndata "{QUICKSTART}"\nlr 1e-4 adafactor\nsteps 300\n', encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, compiled.diagnostics
    line = next(line for line in render_plan(compiled.plan).splitlines() if "default for adafactor" in line)
    assert "schedule: name constant_with_warmup" in line
