"""Golden cases: each `tests/cases/NAME.sdx` compiles to `NAME.plan.json` or fails with `NAME.stderr`.

Regenerate the expected files after an intended change with `pytest tests/test_cases.py --regen`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdxlc.lang.diagnostics import render_text
from sdxlc.pipeline import compile_recipe
from sdxlc.plan.contract import to_text

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((ROOT / "tests" / "cases").glob("*.sdx"))


def _actual(case: Path) -> tuple[str, str]:
    compiled = compile_recipe(case.relative_to(ROOT))
    if compiled.plan is not None:
        text = to_text(compiled.plan).replace(str(ROOT), "<root>")
        return ".plan.json", text
    return ".stderr", render_text(compiled.ordered(), compiled.sources, color=False).replace(
        str(ROOT), "<root>"
    ) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_case(case: Path, regen: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    suffix, text = _actual(case)
    expected = case.with_suffix(suffix)
    other = case.with_suffix(".stderr" if suffix == ".plan.json" else ".plan.json")
    if regen:
        other.unlink(missing_ok=True)
        expected.write_text(text, encoding="utf-8")
    assert not other.exists(), (
        f"{case.name} was expected to {'fail' if suffix == '.plan.json' else 'compile'}"
    )
    assert expected.exists(), f"no {expected.name}: run pytest {Path(__file__).name} --regen"
    if suffix == ".plan.json":
        # The hash and the manifest's hash cover absolute paths, and sources name the git commit: they
        # differ between checkouts, so compare everything else.
        actual, golden = json.loads(text), json.loads(expected.read_text(encoding="utf-8"))
        for key in ("plan_hash", "sources"):
            assert actual.pop(key) and golden.pop(key)
        for key in ("file", "sha256"):  # the manifest lists absolute image paths
            assert actual["data"]["manifest"].pop(key) and golden["data"]["manifest"].pop(key)
        assert actual == golden
    else:
        assert text == expected.read_text(encoding="utf-8")


def test_every_shipped_recipe_checks_against_its_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for recipe in sorted((ROOT / "recipes").glob("*.sdx")):
        compiled = compile_recipe(recipe.relative_to(ROOT))
        assert not compiled.errors, render_text(compiled.errors, compiled.sources)
