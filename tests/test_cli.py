"""The command line as a user runs it: exit codes, diagnostics, the plan contract, no heavy imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from sdxlc.cli.main import main
from sdxlc.plan.contract import plan_hash
from sdxlc.plan.schemas import load_schema

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
HEAVY = ("torch", "diffusers", "transformers", "peft", "bitsandbytes", "accelerate")


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_importing_the_cli_loads_no_ml_stack() -> None:
    code = (
        "import sys, sdxlc.cli.main, sdxlc.pipeline, sdxlc.cli.report; print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [m for m in HEAVY if m in out]


def test_plan_command_imports_no_ml_stack() -> None:
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom sdxlc.cli.main import main\n"
        f"r = CliRunner().invoke(main, ['plan', {str(RECIPES / 'style_lora.sdx')!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# Loaded by other paths only: the parser (a recipe's statements come from the statement cache), jsonschema
# (a valid document passes the compiled check), Pillow (mask folders), and stdlib modules only errors or
# writers of folders need.
NOT_ON_THE_PLAN_PATH = ("lark", "jsonschema", "PIL", "logging", "difflib", "shutil", "random")


def test_a_plan_of_a_recipe_read_before_loads_only_what_planning_needs(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom sdxlc.cli.main import entry\n"
        f"sys.argv = ['sdxlc', 'plan', {str(RECIPES / 'style_lora.sdx')!r}]\n"
        "try:\n    entry()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        f"print('loaded:', *(m for m in {NOT_ON_THE_PLAN_PATH!r} if m in sys.modules), file=sys.stderr)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("SDXLC_NO_PARSER_CACHE", None)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            for _ in range(2)]
    loaded = []
    for run in runs:
        assert run.returncode == 0, run.stderr
        loaded.append(run.stderr.strip().splitlines()[-1].split()[1:])
    assert "lark" in loaded[0]  # the first plan parsed the recipe (and kept its statements)
    assert loaded[1] == []


@pytest.mark.parametrize("recipe", ["quickstart.sdx", "style_lora.sdx"])
def test_shipped_recipes_plan_and_satisfy_the_contract(recipe: str) -> None:
    code, out, err = _cli("plan", str(RECIPES / recipe), "--json")
    assert code == 0, err
    plan = json.loads(out)
    jsonschema.validate(plan, load_schema("plan"))
    assert plan["plan_hash"] == plan_hash(plan)
    assert isinstance(plan["estimate"]["vram_bytes"], int)
    assert plan["estimate"]["vram_breakdown"] and plan["estimate"]["fits"] is True
    assert plan["training"]["total_steps"] >= plan["training"]["steps_per_epoch"] >= 1
    assert Path(plan["output"]["dir"]).is_absolute()


def test_style_lora_plan_resolves_layers_and_provenance() -> None:
    code, out, err = _cli("plan", str(RECIPES / "style_lora.sdx"), "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["hardware"]["profile"] == "rtx3060-12gb"
    assert plan["model"]["kind"] == "hub"
    assert plan["method"]["rank"] == 16 and plan["optimizer"]["name"] == "lion"
    assert plan["precision"]["mixed"] == "bf16" and plan["data"]["cache"]["text_encoder"] is True
    prov = plan["provenance"]
    assert prov["method.rank"]["source"] == "recipe"
    assert prov["method.rank"]["at"].endswith("style_lora.sdx:7:1") or ":7:" in prov["method.rank"]["at"]
    assert prov["model.source"]["source"] == "use" and "sdxl.sdx" in prov["model.source"]["at"]
    assert prov["optimizer.max_grad_norm"]["source"] == "default"
    # epochs 10 → total steps derived from the step arithmetic
    t = plan["training"]
    assert t["total_steps"] == 10 * t["steps_per_epoch"]
    assert plan["schedule"]["warmup_steps"] == round(t["total_steps"] * 0.05)


def test_plan_text_shows_settings_steps_buckets_and_verdict() -> None:
    code, out, err = _cli("plan", str(RECIPES / "quickstart.sdx"))
    assert code == 0, err
    for needle in ("quickstart.sdx (`sdxlc plan --all`", "steps:", "buckets:", "estimate", "fits", "plan "):
        assert needle in out
    assert "  line 8   method: kind lora, targets unet, rank 16, alpha 16, modules attention, ff, conv" in out
    code, every, err = _cli("plan", str(RECIPES / "quickstart.sdx"), "--all")
    assert code == 0, err
    assert "settings:" in every and "recipes/quickstart.sdx:8:" in every


def test_set_overrides_and_is_recorded() -> None:
    code, out, err = _cli("plan", str(RECIPES / "quickstart.sdx"), "--json", "--set", "optimizer.lr=5e-4")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["optimizer"]["lr"] == 5e-4
    assert plan["provenance"]["optimizer.lr"]["source"] == "set"


def test_plan_hash_is_stable_and_changes_with_the_plan() -> None:
    first = json.loads(_cli("plan", str(RECIPES / "quickstart.sdx"), "--json")[1])
    again = json.loads(_cli("plan", str(RECIPES / "quickstart.sdx"), "--json")[1])
    other = json.loads(_cli("plan", str(RECIPES / "quickstart.sdx"), "--json", "--set", "training.seed=1")[1])
    assert first["plan_hash"] == again["plan_hash"] != other["plan_hash"]


def _write(tmp_path: Path, text: str) -> Path:
    data = tmp_path / "data"
    data.symlink_to(RECIPES / "data" / "quickstart", target_is_directory=True)
    recipe = tmp_path / "bad.sdx"
    recipe.write_text(text, encoding="utf-8")
    return recipe


def test_recipe_error_exits_1_with_location_and_no_traceback(tmp_path: Path) -> None:
    recipe = _write(tmp_path, 'model tiny\ndata "data"\nlr 1e-4 loin\nlora rank 8x\n')
    proc = subprocess.run(
        [sys.executable, "-m", "sdxlc.cli", "check", str(recipe)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{recipe}:3:" in proc.stderr and f"{recipe}:4:" in proc.stderr
    assert "lion" in proc.stderr  # did you mean


def test_check_json_format_lists_every_error(tmp_path: Path) -> None:
    recipe = _write(tmp_path, 'model tiny\ndata "data"\nlr 1e-4 loin\nbatch 0\n')
    code, out, _ = _cli("check", str(recipe), "--format", "json")
    assert code == 1
    found = json.loads(out)
    assert {d["line"] for d in found if d["severity"] == "error"} >= {3, 4}
    for d in found:
        assert set(d) >= {
            "code",
            "severity",
            "message",
            "file",
            "line",
            "column",
            "end_line",
            "end_column",
            "help",
        }
        assert d["code"].startswith("SDX")


def test_semantic_error_points_at_the_line(tmp_path: Path) -> None:
    recipe = _write(tmp_path, 'model tiny\ndata "data" shuffle\nlora rank 4 cache te\nsteps 5\n')
    code, out, _ = _cli("check", str(recipe), "--format", "json")
    assert code == 1
    assert any(d["code"] == "SDX0520" for d in json.loads(out))


def test_missing_dataset_folder_is_a_recipe_error(tmp_path: Path) -> None:
    recipe = tmp_path / "r.sdx"
    recipe.write_text('model tiny\ndata "nowhere"\n', encoding="utf-8")
    code, out, _ = _cli("check", str(recipe), "--format", "json")
    assert code == 1
    assert [d["line"] for d in json.loads(out) if d["code"] == "SDX0502"] == [2]


def test_unknown_profile_suggests(tmp_path: Path) -> None:
    recipe = _write(tmp_path, 'model tiny\ndata "data"\nprofile rtx309\n')
    code, out, _ = _cli("check", str(recipe), "--format", "json")
    assert code == 1
    (diag,) = [d for d in json.loads(out) if d["code"] == "SDX0602"]
    assert diag["line"] == 3 and "rtx3090" in diag["help"]


def test_over_budget_plan_is_an_error_with_levers(tmp_path: Path) -> None:
    recipe = _write(
        tmp_path,
        'model "org/some-sdxl"\nprofile rtx4060-8gb\ndata "data"\n'
        "resolution 1024\nlora rank 64 fp32\nbatch 8\n",
    )
    code, out, _ = _cli("check", str(recipe), "--format", "json")
    assert code == 1
    (diag,) = [d for d in json.loads(out) if d["code"] == "SDX0610"]
    assert diag["help"]


def test_usage_error_exits_2(tmp_path: Path) -> None:
    code, _, _ = _cli("plan", str(tmp_path / "missing.sdx"))
    assert code == 2


def test_fmt_never_changes_the_plan_hash(tmp_path: Path) -> None:
    messy = tmp_path / "messy.sdx"
    text = (RECIPES / "quickstart.sdx").read_text()
    for folder in ("data", "models"):
        (tmp_path / folder).symlink_to(RECIPES / folder, target_is_directory=True)
    messy.write_text(
        text.replace("\n", "\n\n\n").replace("lr 4e-3", "lr   4e-3").replace("batch 4\n", "batch 4;")
    )
    before = json.loads(_cli("plan", str(messy), "--json")[1])
    code, _, err = _cli("fmt", str(messy))
    assert code == 0, err
    assert messy.read_text() != text.replace("\n", "\n\n\n")
    after = json.loads(_cli("plan", str(messy), "--json")[1])
    assert before["plan_hash"] == after["plan_hash"]
    assert before["provenance"] != after["provenance"]


def test_fit_auto_applies_open_levers_and_records_them(tmp_path: Path) -> None:
    base = 'model "org/some-sdxl"\nprofile rtx4060-8gb\ndata "data"\nresolution 1024\nlora rank 16\n'
    strict = _write(tmp_path, base)
    code, out, _ = _cli("check", str(strict), "--format", "json")
    assert code == 1 and any(d["code"] == "SDX0610" for d in json.loads(out))
    strict.write_text(base + "fit auto\n")
    code, out, err = _cli("plan", str(strict), "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["estimate"]["fits"]
    solved = {p: o["at"] for p, o in plan["provenance"].items() if o["source"] == "solver"}
    assert solved and all(plan["warnings"])
    assert any(w.startswith("fit auto:") for w in plan["warnings"])


def test_fit_auto_never_overrides_what_the_recipe_pinned(tmp_path: Path) -> None:
    recipe = _write(
        tmp_path,
        'model "org/some-sdxl"\nprofile rtx4060-8gb\ndata "data"\nresolution 1024\nlora rank 16\n'
        "batch 8 accumulate 1\nfit auto\n",
    )
    code, out, _ = _cli("check", str(recipe), "--format", "json")
    assert code == 1
    (diag,) = [d for d in json.loads(out) if d["code"] == "SDX0610"]
    assert "batch 4" in diag["help"]  # the lever it may not pull is offered to the user


def test_an_internal_error_is_a_one_line_report_with_exit_70(tmp_path: Path) -> None:
    code = (
        "import sys, sdxlc.pipeline as p\n"
        "def broken(*a, **k):\n    raise KeyError('boom')\n"
        "p.compile_recipe = broken\nimport sdxlc.cli.main as c\nc.compile_recipe = broken\n"
        f"sys.argv = ['sdxlc', 'check', {str(RECIPES / 'quickstart.sdx')!r}]\nc.entry()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 70
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "internal error: KeyError" in proc.stderr


def test_every_resolved_setting_says_where_it_came_from() -> None:
    code, out, err = _cli("plan", str(RECIPES / "style_lora.sdx"), "--json")
    assert code == 0, err
    plan = json.loads(out)
    sources = {"recipe", "use", "set", "profile", "default", "derived", "solver"}
    assert {origin["source"] for origin in plan["provenance"].values()} <= sources

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{path}.{k}")]
        if path == "data.datasets":
            return [leaf for i, v in enumerate(node) for leaf in leaves(v, f"{path}.{i}")]
        return [path]

    sections = ("model", "hardware", "method", "precision", "data", "optimizer", "schedule", "training",
                "save", "sample", "output", "log", "launch")
    missing = [leaf for s in sections for leaf in leaves(plan[s], s)
               if not any(leaf == p or leaf.startswith(p + ".") for p in plan["provenance"])]
    assert missing == []
    assert plan["provenance"]["hardware.vram_bytes"]["source"] == "profile"
    batch = plan["provenance"]["training.batch_size"]
    assert batch["source"] == "recipe" and batch["at"].endswith("recipes/style_lora.sdx:9:1")


def test_plan_text_shows_the_arithmetic() -> None:
    code, out, err = _cli("plan", str(RECIPES / "quickstart.sdx"))
    assert code == 0, err
    assert "16 images × 4 repeats = 64 samples" in out
    assert "64 samples per epoch in 1 bucket(s), batch 4 → 16 batches per epoch" in out
    assert "training peak" in out and "sampling peak" in out
    assert re.search(r"time estimate: about \d+ s = training \d+ s \+ sampling \d+ s \+ caching \d+ s", out)
    assert "  sampling: 2 passes × 2 prompts at 20 steps (before the first step, after the final save)" in out
    assert "  per step:" not in out  # the FLOP arithmetic is in `--all`
    every = _cli("plan", str(RECIPES / "quickstart.sdx"), "--all")[1]
    per_step = next(line for line in every.splitlines() if line.startswith("  per step:"))
    # the quickstart's model is sized from its own configs; its CPU efficiency is the fitted one (tiny.json)
    assert re.search(r"TFLOP/s fp32 × efficiency 0\.\d+ = [\d.]+ TFLOP/s\) = [\d.]+ s \+ [\d.]+ s dispatch",
                     per_step), per_step
