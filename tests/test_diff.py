"""`sdxlc diff`: plans compared field by field, each change classed by one prefix table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sdxlc.cli.lang import diff_command
from sdxlc.pipeline import compile_recipe
from sdxlc.plan.contract import to_text
from sdxlc.plan.diff import KINDS, Change, diff_plans, kind_of, render_changes
from sdxlc.plan.schemas import load_schema
from sdxlc.tools.diff import SideError, load_side

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data" / "quickstart"

BASE = """sdx 1
model tiny
profile cpu
data "{data}" repeat 2 caption .txt
resolution 96 buckets 64..160 step 32
lora rank 8 alpha 8 on unet
lr 1e-3 adamw
schedule cosine warmup 10%
batch 2
steps 60
seed 42
output "out"
log every 10
"""


def _plan(tmp_path: Path, name: str, replace: tuple[str, str] | None = None) -> dict[str, Any]:
    text = BASE.format(data=DATA)
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / f"{name}.sdx"
    path.write_text(text, encoding="utf-8")
    compiled = compile_recipe(path)
    assert compiled.plan is not None, compiled.diagnostics
    return compiled.plan


def _effective(changes: list[Change]) -> list[Change]:
    return [change for change in changes if change.kind not in ("cosmetic", "estimate")]


def test_identical_plans_have_no_change(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "a")
    assert diff_plans(plan, _plan(tmp_path, "a")) == []
    assert render_changes([]) == "no difference\n"


def test_lr_is_one_schedule_change(tmp_path: Path) -> None:
    changes = _effective(diff_plans(_plan(tmp_path, "a"), _plan(tmp_path, "b", ("lr 1e-3", "lr 5e-4"))))
    assert changes == [Change("optimizer.lr", 0.001, 0.0005, "schedule")]


def test_rank_is_resume_breaking(tmp_path: Path) -> None:
    changes = _effective(diff_plans(_plan(tmp_path, "a"), _plan(tmp_path, "b", ("rank 8", "rank 16"))))
    assert [(c.path, c.kind) for c in changes] == [("method.rank", "resume-breaking")]


def test_log_every_is_logging(tmp_path: Path) -> None:
    b = _plan(tmp_path, "b", ("log every 10", "log every 5"))
    changes = _effective(diff_plans(_plan(tmp_path, "a"), b))
    assert [(c.path, c.kind) for c in changes] == [("log.every_steps", "logging")]


def test_the_recipe_file_name_is_cosmetic(tmp_path: Path) -> None:
    changes = diff_plans(_plan(tmp_path, "a"), _plan(tmp_path, "b", ('output "out"', 'output "b"')))
    assert {c.path for c in changes} >= {"sources.0.file", "output.dir", "output.name"}
    assert {c.kind for c in changes} == {"cosmetic"}


def test_plan_hash_is_ignored_and_estimate_has_its_own_kind() -> None:
    a = {"plan_hash": "a", "estimate": {"vram_bytes": 1}}
    b = {"plan_hash": "b", "estimate": {"vram_bytes": 2}}
    assert diff_plans(a, b) == [Change("estimate.vram_bytes", 1, 2, "estimate")]


def test_generic_walk_over_lists_and_missing_keys() -> None:
    a = {"data": {"datasets": [{"path": "/a", "repeat": 1}]}, "method": {"targets": ["unet"]}}
    b = {"data": {"datasets": [{"path": "/a", "repeat": 2}, {"path": "/b"}]},
         "method": {"targets": ["unet", "te1"]}, "training": {"seed": 1}}
    assert diff_plans(a, b) == [
        Change("data.datasets.0.repeat", 1, 2, "schedule"),
        Change("data.datasets.1.path", None, "/b", "cache-invalidating"),
        Change("method.targets", ["unet"], ["unet", "te1"], "resume-breaking"),
        Change("training.seed", None, 1, "numerics"),
    ]


def test_numbers_compare_as_json_values() -> None:
    assert diff_plans({"optimizer": {"lr": 1}}, {"optimizer": {"lr": 1.0}}) == []
    assert diff_plans({"precision": {"vae_fp32": True}}, {"precision": {"vae_fp32": 1}}) != []


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("sdxlc_version", "cosmetic"),
        ("provenance.optimizer.lr.at", "cosmetic"),
        ("output.dir", "cosmetic"),
        ("log.every_steps", "logging"),
        ("sample.prompts", "logging"),
        ("save.every_steps", "logging"),
        ("save.keep", "logging"),
        ("optimizer.lr", "schedule"),
        ("schedule.warmup_steps", "schedule"),
        ("training.total_steps", "schedule"),
        ("training.epochs", "schedule"),
        ("method.block_lr", "schedule"),
        ("precision.mixed", "numerics"),
        ("training.noise_offset", "numerics"),
        ("training.snr_gamma", "numerics"),
        ("training.timestep_min", "numerics"),
        ("training.seed", "numerics"),
        ("optimizer.max_grad_norm", "numerics"),
        ("training.batch_size", "numerics"),
        ("training.accumulate", "numerics"),
        ("data.datasets.3.path", "cache-invalidating"),
        ("data.images", "cache-invalidating"),
        ("data.buckets.table.0.width", "cache-invalidating"),
        ("data.resolution", "cache-invalidating"),
        ("data.datasets.0.caption_ext", "cache-invalidating"),
        ("model.vae", "cache-invalidating"),
        ("data.cache.latents", "cache-invalidating"),
        ("method.kind", "resume-breaking"),
        ("method.rank", "resume-breaking"),
        ("method.alpha", "resume-breaking"),
        ("method.targets", "resume-breaking"),
        ("method.unet_modules", "resume-breaking"),
        ("model.source", "resume-breaking"),
        ("model.kind", "resume-breaking"),
        ("model.prediction", "resume-breaking"),
        ("optimizer.name", "resume-breaking"),
        ("estimate.vram_bytes", "estimate"),
    ],
)
def test_kind_table(path: str, kind: str) -> None:
    assert kind_of(path) == kind


def test_every_plan_section_is_in_the_table() -> None:
    sections = set(load_schema("plan")["properties"]) - {"plan_hash"}
    assert sections <= {prefix.split(".")[0] for prefix in KINDS}


def test_load_side_reads_plan_files_and_output_folders(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "a")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text(to_text(plan), encoding="utf-8")
    (tmp_path / "p.json").write_text(to_text(plan), encoding="utf-8")
    assert load_side(str(tmp_path / "run")) == plan
    assert load_side(str(tmp_path / "p.json")) == plan
    assert load_side(str(tmp_path / "a.sdx")) == plan


def test_load_side_reports_a_recipe_that_does_not_compile(tmp_path: Path) -> None:
    (tmp_path / "bad.sdx").write_text("sdx 1\nlora rank eight\n", encoding="utf-8")
    with pytest.raises(SideError) as caught:
        load_side(str(tmp_path / "bad.sdx"))
    assert "SDX0203" in [d.code for d in caught.value.diagnostics]
    with pytest.raises(SideError):
        load_side(str(tmp_path / "missing.json"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(SideError, match="nested too deeply"):
        load_side(str(tmp_path / "deep.json"))


def _git_tracks(path: Path) -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", path.name],
                          capture_output=True, check=False)
    return done.returncode == 0


QUICKSTART = ROOT / "recipes" / "quickstart.sdx"


@pytest.mark.skipif(not _git_tracks(QUICKSTART), reason="git or the committed recipe is unavailable")
def test_a_recipe_at_a_git_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    head = load_side("recipes/quickstart.sdx@HEAD")
    assert Path(head["data"]["datasets"][0]["path"]).parent == DATA.parent
    assert head["output"]["dir"] == str(ROOT / "recipes" / "out" / "quickstart")
    assert head["sources"][0]["file"] == "recipes/quickstart.sdx"
    committed = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", str(QUICKSTART)],
                               check=False).returncode == 0
    if committed:
        assert diff_plans(head, load_side("recipes/quickstart.sdx")) == []
    with pytest.raises(SideError):
        load_side("recipes/quickstart.sdx@no-such-revision")


def test_cli_table_and_json(tmp_path: Path) -> None:
    _plan(tmp_path, "a")
    _plan(tmp_path, "b", ("rank 8", "rank 16"))
    a, b = str(tmp_path / "a.sdx"), str(tmp_path / "b.sdx")
    result = CliRunner().invoke(diff_command, [a, b])
    assert result.exit_code == 0
    assert result.stdout.startswith("resume-breaking (1)")
    assert "method.rank" in result.stdout and "8 → 16" in result.stdout
    result = CliRunner().invoke(diff_command, [a, b, "--json"])
    body = json.loads(result.stdout)
    assert result.exit_code == 0 and body["kinds"]["resume-breaking"] == 1
    assert {"path": "method.rank", "old": 8, "new": 16, "kind": "resume-breaking"} in body["changes"]


def test_cli_exits_1_when_a_side_does_not_compile(tmp_path: Path) -> None:
    _plan(tmp_path, "a")
    (tmp_path / "bad.sdx").write_text("sdx 1\nlora rank eight\n", encoding="utf-8")
    result = CliRunner().invoke(diff_command, [str(tmp_path / "a.sdx"), str(tmp_path / "bad.sdx")])
    assert result.exit_code == 1
    assert "error[SDX0203]" in result.stderr


def test_the_language_tools_load_no_ml_stack(tmp_path: Path) -> None:
    _plan(tmp_path, "a")
    recipe = str(tmp_path / "a.sdx")
    code = (
        "import sys\nfrom click.testing import CliRunner\n"
        "from sdxlc.cli.lang import diff_command, explain_command, fmt_command\n"
        f"assert CliRunner().invoke(diff_command, [{recipe!r}, {recipe!r}]).exit_code == 0\n"
        "assert CliRunner().invoke(explain_command, ['lion']).exit_code == 0\n"
        f"assert CliRunner().invoke(fmt_command, ['--check', {recipe!r}]).exit_code in (0, 1)\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'peft', 'bitsandbytes', 'accelerate')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def _written(tmp_path: Path, name: str, data: Path, repeat: int) -> str:
    """A plan file with its manifest beside it, for the quickstart recipe on `data` with `repeat`."""
    text = BASE.format(data=data).replace("repeat 2", f"repeat {repeat}")
    (tmp_path / f"{name}.sdx").write_text(text, encoding="utf-8")
    compiled = compile_recipe(tmp_path / f"{name}.sdx")
    assert compiled.plan is not None and compiled.manifest is not None, compiled.diagnostics
    from sdxlc.plan import contract

    contract.write(tmp_path / name / "plan.json", compiled.plan, compiled.manifest)
    return str(tmp_path / name / "plan.json")


def _kinds(a: str, b: str) -> dict[str, str]:
    result = CliRunner().invoke(diff_command, [a, b, "--json"])
    assert result.exit_code == 0, result.output
    return {change["path"]: change["kind"] for change in json.loads(result.stdout)["changes"]}


def test_repeats_change_the_counts_not_the_cached_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    a, b = _written(tmp_path, "a", data, 2), _written(tmp_path, "b", data, 4)
    kinds = _kinds(a, b)
    assert "cache-invalidating" not in kinds.values()
    for path in ("data.datasets.0.repeat", "data.datasets.0.samples", "data.buckets.table.0.batches",
                 "data.manifest.samples", "data.manifest.sha256", "data.manifest.file"):
        assert kinds[path] == "schedule", path
    # without the manifests, a changed manifest may list other images: the caches count as invalid
    plans = [json.loads(Path(side).read_text(encoding="utf-8")) for side in (a, b)]
    loose = {c.path for c in diff_plans(*plans) if c.kind == "cache-invalidating"}
    assert loose == {"data.manifest.file", "data.manifest.sha256"}
    # a caption changed along with the repeats: the text-encoder cache is invalid
    caption = next(data.glob("*.txt"))
    caption.write_text(caption.read_text(encoding="utf-8") + " again", encoding="utf-8")
    c = _written(tmp_path, "c", data, 4)
    assert _kinds(a, c)["data.manifest.sha256"] == "cache-invalidating"
