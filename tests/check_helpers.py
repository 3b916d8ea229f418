"""Lower, resolve and check a small recipe on the quickstart images, and find its diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import QUICKSTART

from sdxlc.check.semantic import run_checks
from sdxlc.lang.diagnostics import Diagnostic
from sdxlc.lang.layers import Layers
from sdxlc.lang.lower import load_recipe
from sdxlc.resolve.core import resolve


def diagnose(tmp_path: Path, text: str) -> tuple[dict[str, Any], list[Diagnostic]]:
    """The plan and every diagnostic of `model tiny` + the quickstart data + `text` (from line 3)."""
    path = tmp_path / "r.sdx"
    path.write_text(f'model tiny\ndata "{QUICKSTART}"\n{text}\n', encoding="utf-8")
    lowered = load_recipe(path)
    resolution = resolve(lowered, path)
    assert resolution.plan is not None, resolution.diagnostics
    diags = [*lowered.diagnostics, *resolution.diagnostics]
    return resolution.plan, diags + run_checks(resolution.plan, Layers(lowered, "tiny"))


def only(diags: list[Diagnostic], code: str) -> Diagnostic:
    found = [d for d in diags if d.code == code]
    assert len(found) == 1, diags
    return found[0]


def at(d: Diagnostic) -> tuple[int, int, int]:
    assert d.span is not None
    return d.span.line, d.span.column, d.span.end_column
