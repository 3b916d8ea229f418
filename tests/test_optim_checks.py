"""Optimizers at compile time: `args` checked against schema/optimizers.json, per-optimizer defaults
resolved into the plan, and the named optimizer checks with their codes and spans."""

from __future__ import annotations

from pathlib import Path

import pytest
from check_helpers import at, diagnose, only


def test_unknown_argument_with_did_you_mean_at_its_span(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "optimizer adamw args weight_decai=0.01 eps=1e-8")
    d = only(diags, "SDX0540")
    assert d.severity == "error" and "weight_decai" in d.message
    assert d.help == "did you mean `weight_decay`?"
    line = "optimizer adamw args weight_decai=0.01 eps=1e-8"
    start = line.index("weight_decai") + 1
    assert at(d) == (3, start, start + len("weight_decai=0.01"))


def test_unknown_argument_without_a_close_name_lists_the_accepted_ones(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "optimizer lion args zzz=1")
    assert "`betas`" in (only(diags, "SDX0540").help or "")


def test_argument_the_runtime_owns_is_refused(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "optimizer adamw8bit args is_paged=true")
    assert "name chooses paging" in (only(diags, "SDX0540").help or "")


@pytest.mark.parametrize(("text", "key"), [
    ("optimizer adafactor args relative_step=0.5", "relative_step"),
    ("optimizer adamw args betas=0.9", "betas"),
    ("optimizer prodigy args slice_p=1.5", "slice_p"),
    ("optimizer sgd args nesterov=yes", "nesterov"),
])
def test_argument_of_the_wrong_type(tmp_path: Path, text: str, key: str) -> None:
    _, diags = diagnose(tmp_path, text)
    d = only(diags, "SDX0541")
    assert key in d.message and at(d)[1] == text.index(key) + 1


def test_arguments_an_optimizer_accepts_pass_and_reach_the_plan(tmp_path: Path) -> None:
    text = "optimizer adamw8bit args min_8bit_size=16.0 betas=0.9,0.99 amsgrad=true"
    plan, diags = diagnose(tmp_path, text)
    assert [d for d in diags if d.severity == "error"] == []
    assert plan["optimizer"]["args"] == {"min_8bit_size": 16, "betas": [0.9, 0.99], "amsgrad": True}
    assert isinstance(plan["optimizer"]["args"]["min_8bit_size"], int)


def test_adafactor_resolves_an_explicit_lr_and_no_clipping(tmp_path: Path) -> None:
    plan, diags = diagnose(tmp_path, "optimizer adafactor lr 1e-5")
    assert diags == []
    assert plan["optimizer"] == {
        "name": "adafactor", "class": "transformers.optimization.Adafactor", "lr": 1e-5, "max_grad_norm": 0.0,
        "args": {"relative_step": False, "scale_parameter": False, "warmup_init": False},
        "implementation": None,
    }
    assert plan["provenance"]["optimizer.max_grad_norm"]["source"] == "default"


def test_prodigy_defaults_to_lr_1(tmp_path: Path) -> None:
    plan, diags = diagnose(tmp_path, "optimizer prodigy")
    assert diags == [] and plan["optimizer"]["lr"] == 1.0


def test_sgd_gets_nesterov_momentum(tmp_path: Path) -> None:
    plan, _ = diagnose(tmp_path, "optimizer sgd args weight_decay=0.001")
    assert plan["optimizer"]["args"] == {"momentum": 0.9, "nesterov": True, "weight_decay": 0.001}


def test_adafactor_with_clipping_warns_at_the_clipping(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "optimizer adafactor\nmax_grad_norm 1")
    d = only(diags, "SDX0543")
    assert d.severity == "warning" and at(d) == (4, 1, 16) and "`max_grad_norm 0`" in (d.help or "")
    assert not [d for d in diagnose(tmp_path, "optimizer adafactor\nclip 0")[1] if d.code == "SDX0543"]


def test_adafactor_relative_step_with_a_schedule(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "optimizer adafactor args relative_step=true\nschedule cosine")
    d = only(diags, "SDX0544")
    assert d.severity == "error" and at(d)[0] == 4
    assert d.related and d.related[0][0].line == 3
    _, fine = diagnose(tmp_path, "optimizer adafactor args relative_step=true\nschedule constant")
    assert not [d for d in fine if d.code == "SDX0544"]


def test_adafactor_warmup_init_needs_relative_step(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "optimizer adafactor args warmup_init=true")
    assert at(only(diags, "SDX0546"))[0] == 3
    _, fine = diagnose(tmp_path, "optimizer adafactor args relative_step=true warmup_init=true")
    assert not [d for d in fine if d.code == "SDX0546"]


@pytest.mark.parametrize("name", ["paged_adamw8bit", "paged_lion8bit"])
def test_paged_optimizer_on_the_cpu_profile_is_an_error(tmp_path: Path, name: str) -> None:
    _, diags = diagnose(tmp_path, f"optimizer {name}")
    d = only(diags, "SDX0542")
    assert d.severity == "error" and at(d)[0] == 3
    assert f"`{name.removeprefix('paged_')}`" in (d.help or "")


@pytest.mark.parametrize("name", ["adamw8bit", "lion8bit"])
def test_8bit_optimizers_are_fine_on_the_cpu(tmp_path: Path, name: str) -> None:
    assert diagnose(tmp_path, f"optimizer {name}")[1] == []


def test_prodigy_with_a_small_lr_warns(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "lr 1e-4 prodigy")
    d = only(diags, "SDX0545")
    assert d.severity == "warning" and at(d) == (3, 1, 8)
    assert diagnose(tmp_path, "lr 0.8 prodigy")[1] == []
