"""The language-version hook: older recipe documents are upgraded before any later stage sees them."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from sdxlc.lang import migrate
from sdxlc.pipeline import compile_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_current_documents_pass_unchanged() -> None:
    doc = {"sdx": 1, "lora": {"rank": 8}}
    assert migrate.migrate(doc) == (doc, [])
    assert migrate.migrate({"lora": {"rank": 8}}) == ({"lora": {"rank": 8}}, [])


def test_an_older_version_is_upgraded_in_order_with_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    def one_to_two(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        doc["lora"] = {**doc.get("lora", {}), "rank": doc["lora"]["rank"] * 2}
        return doc, ["`rank` now counts both factors"]

    def two_to_three(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        return doc, []

    monkeypatch.setattr(migrate, "CURRENT", 3)
    monkeypatch.setattr(migrate, "MIGRATIONS", {1: one_to_two, 2: two_to_three})
    doc, notes = migrate.migrate({"sdx": 1, "lora": {"rank": 4}})
    assert doc == {"sdx": 3, "lora": {"rank": 8}}
    assert notes == ["sdx 1 → 2: `rank` now counts both factors"]


def test_migration_notes_reach_the_plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A compiler at version 2 reads a version-1 recipe through its migration."""
    import copy

    from sdxlc.plan import schemas

    def one_to_two(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        return doc, ["nothing to change"]

    real = schemas.load_schema

    def newer(name: str) -> dict[str, Any]:
        schema = copy.deepcopy(real(name))
        if name == "recipe":
            schema["properties"]["sdx"]["enum"] = [1, 2]
        return schema

    monkeypatch.setattr(migrate, "CURRENT", 2)
    monkeypatch.setattr(migrate, "MIGRATIONS", {1: one_to_two})
    monkeypatch.setattr(schemas, "load_schema", newer)
    # validators built from the real schema by earlier tests are cached: build them again from this one
    for cached in (schemas.named_validator, schemas._surely_valid):
        cached.cache_clear()
        monkeypatch.setattr(schemas, cached.__wrapped__.__name__, functools.cache(cached.__wrapped__))
    (tmp_path / "data").symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = tmp_path / "r.sdx"
    recipe.write_text('sdx 1\nmodel tiny\ndata "data"\nsteps 4\n', encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    assert "sdx 1 → 2: nothing to change" in json.dumps(compiled.plan["warnings"], ensure_ascii=False)


def test_a_newer_version_than_the_compiler_is_an_error(tmp_path: Path) -> None:
    recipe = tmp_path / "r.sdx"
    recipe.write_text("sdx 2\nmodel tiny\n", encoding="utf-8")
    codes = {d.code for d in compile_recipe(recipe).errors}
    assert codes & {"SDX0403", "SDX0404", "SDX0401"}
