"""Which recipe changes a resume accepts, needs an --allow for, or refuses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from click.testing import CliRunner

from sdxlc.cli.main import main
from sdxlc.tools.resume import judge

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.sdx"


def _plan(*sets: str) -> dict:
    args = ["plan", str(RECIPE), "--json"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_unchanged_plan_resumes() -> None:
    plan = _plan()
    verdict = judge(plan, copy.deepcopy(plan))
    assert verdict.ok and not verdict.rebuild_schedule


def test_logging_and_cadence_changes_are_accepted() -> None:
    verdict = judge(_plan(), _plan("log.every=5", "save.every=20", "sample.steps=4"))
    assert verdict.ok and verdict.accepted and not verdict.allowed


def test_schedule_changes_need_allow_schedule() -> None:
    old, new = _plan(), _plan("training.steps=300", "optimizer.lr=5e-4")
    refused = judge(old, new)
    assert not refused.ok and set(refused.needs) == {"schedule"}
    assert "--allow schedule" in refused.explain(None)
    allowed = judge(old, new, frozenset({"schedule"}))
    assert allowed.ok and allowed.rebuild_schedule


def test_resume_breaking_changes_are_refused_even_with_allow() -> None:
    old = _plan()
    for change in ("lora.rank=4", "optimizer.name=lion", "precision.vae_fp32=true", "model.tiny_seed=3"):
        verdict = judge(old, _plan(change), frozenset({"schedule", "numerics", "data"}))
        assert verdict.breaking, change
        assert not verdict.ok
        text = verdict.explain(Path("out/q.safetensors"))
        assert 'from "out/q.safetensors"' in text
