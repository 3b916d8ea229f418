"""`sdxlc plan`'s text: the default view (what the recipe set, what was chosen for it), `--all` (every
value), values as recipe text, and the time estimate with its final sampling pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import QUICKSTART

from sdxlc.cli.main import main
from sdxlc.cli.recipe_text import number_text, value_text
from sdxlc.cli.report import render_plan
from sdxlc.estimate.analytic import sample_passes
from sdxlc.pipeline import compile_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
PYTHON_REPRS = ("True", "False", "None", "['", "{'", "0.0001")


def _plan(tmp_path: Path, body: str) -> dict[str, Any]:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(f'sdx 1\nmodel tiny\nprofile cpu\ndata "{QUICKSTART}"\n{body}\n', encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, compiled.diagnostics
    return compiled.plan


@pytest.mark.parametrize("recipe", ["style_lora.sdx", "quickstart.sdx"])
def test_the_default_view_is_short_and_all_lists_every_value(recipe: str) -> None:
    plan = compile_recipe(RECIPES / recipe).plan
    assert plan is not None
    brief, every = render_plan(plan), render_plan(plan, everything=True)
    assert 30 <= len(brief.splitlines()) <= 50 < len(every.splitlines())
    warned = ("warnings:",) if plan["warnings"] else ()  # the quickstart plans without a warning
    needles = ("steps:", "buckets:", "estimate on", "time estimate:", *warned, f"plan {plan['plan_hash']}")
    for needle in needles:
        assert needle in brief and needle in every
    for path in plan["provenance"]:
        assert f"  {path} " in every, path
    for text in (brief, every):
        assert not [r for r in PYTHON_REPRS if r in text.replace("/", " ")]


def test_the_default_view_groups_what_the_recipe_set_by_line() -> None:
    plan = compile_recipe(RECIPES / "style_lora.sdx").plan
    assert plan is not None
    lines = render_plan(plan).splitlines()
    assert lines[0].startswith("set by ")
    assert lines[0].endswith("style_lora.sdx (`sdxlc plan --all` lists every resolved value):")
    assert "  use base/sdxl.sdx:3  model: source stabilityai/stable-diffusion-xl-base-1.0" in lines
    row = next(line for line in lines if line.startswith("  line 8 "))
    assert row.endswith("optimizer: name lion, lr 1e-4; schedule: name cosine, warmup_steps 15")
    assert any("sample: prompts \"a lighthouse at dusk, sks style\", every_steps 250, size 1024" in line
               for line in lines)
    chosen = lines[lines.index(next(line for line in lines if line.startswith("chosen for it"))):]
    assert any(line.startswith("  profile ") and "training: channels_last true" in line for line in chosen)
    assert not any("model.tiny_seed" in line or "tiny_seed" in line for line in lines)  # plain defaults


def test_set_values_and_the_fit_solver_are_shown(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "lr 1e-3 adamw\nsteps 20")
    assert "set" not in {o["source"] for o in plan["provenance"].values()}
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "r.sdx"), "--set", "optimizer.lr=2e-4"])
    assert result.exit_code == 0, result.output
    assert any(line.split() == ["--set:1", "optimizer:", "lr", "2e-4"] for line in result.stdout.splitlines())
    lever = {"source": "solver", "at": "checkpointing"}
    solved = dict(plan, provenance={**plan["provenance"], "training.gradient_checkpointing": lever})
    lines = render_plan(solved).splitlines()
    row = next(line for line in lines if line.startswith("  fit auto: checkpointing"))
    assert row.split()[3:] == ["training:", "gradient_checkpointing", "false"]


def test_values_print_as_recipe_text() -> None:
    assert value_text("optimizer.lr", 0.0001) == "1e-4"
    assert value_text("optimizer.lr", 2.5e-5) == "2.5e-5"
    assert value_text("training.noise_offset", 0.0357) == "0.0357"
    assert value_text("sample.cfg", 7.0) == "7"
    assert value_text("method.block_lr", [0.0, 1e-4] + [1e-4] * 21) == "0, 1e-4, 1e-4, … (23 values)"
    assert value_text("method.targets", ["unet", "te1"]) == "unet+te1"
    assert value_text("training.debiased", False) == "false"
    assert value_text("model.vae", None) == "—"
    assert value_text("hardware.vram_bytes", 12 * 2**30) == "12.00 GiB"
    assert value_text("sample.prompts", ["a cat, sitting"]) == '"a cat, sitting"'
    assert value_text("data.datasets.0.prefix", "") == '""'
    assert value_text("optimizer.args", {"betas": [0.9, 0.99], "relative_step": False}) == (
        "betas=0.9,0.99 relative_step=false")
    assert value_text("optimizer.args", {}) == "—"
    assert number_text(1e8) == "1e8" and number_text(300) == "300"


def test_many_buckets_are_cut_short_in_the_default_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sdxlc.cli.report as report

    plan = _plan(tmp_path, "steps 20")
    row = {"width": 64, "height": 64, "images": 1, "batches": 1, "aspect_error": 0.0, "cropped": 0.0}
    monkeypatch.setattr(report, "bucket_details", lambda _plan: [row] * (report.BUCKET_ROWS + 2))
    assert "  … 2 more (`sdxlc plan --all` lists them)" in render_plan(plan)
    assert "more (`sdxlc plan --all`" not in render_plan(plan, everything=True)


def test_the_time_estimate_counts_the_final_sampling_pass(tmp_path: Path) -> None:
    cadence = _plan(tmp_path, 'steps 30\nsample every 20 steps "a cat"')
    final_only = _plan(tmp_path, 'steps 30\nsample "a cat"')
    none = _plan(tmp_path, "steps 30")
    assert [sample_passes(p) for p in (cadence, final_only, none)] == [2, 1, 0]  # steps 20 and 30
    exact = _plan(tmp_path, 'steps 30\nsample every 10 steps "a cat"')
    assert sample_passes(exact) == 3  # steps 10, 20 and the final 30, once
    once = final_only["estimate"]["time_breakdown"]["sampling"]
    assert once > 0 and none["estimate"]["time_breakdown"]["sampling"] == 0
    assert cadence["estimate"]["time_breakdown"]["sampling"] == pytest.approx(2 * once, rel=1e-3)
    t = cadence["estimate"]
    assert t["total_seconds"] == pytest.approx(sum(t["time_breakdown"][k] for k in ("training", "sampling",
                                                                                   "caching")), abs=1e-2)
    assert "  sampling: 2 passes × 1 prompt at 8 steps (every 20 steps, and after the final save)" in (
        render_plan(cadence))
