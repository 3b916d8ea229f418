"""The language server's answers, in process: checking an editor's unsaved texts, converting spans,
completion and hover."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lsprotocol import types as lsp
from pygls.workspace.position_codec import PositionCodec

from sdxlc.editor import features
from sdxlc.editor.text import lines_of
from sdxlc.lang import limits
from sdxlc.lang.diagnostics import Span
from sdxlc.pipeline import compile_recipe

ROOT = Path(__file__).resolve().parents[1]
UTF16 = PositionCodec()


def _codes(path: Path, unsaved: dict[Path, str]) -> list[str]:
    return sorted(d.code for d in compile_recipe(path, unsaved=unsaved).diagnostics)


def test_unsaved_texts_are_read_instead_of_the_files(tmp_path: Path) -> None:
    recipe = tmp_path / "r.sdx"
    recipe.write_text('sdx 1\nuse "base.sdx"\nmodel tiny\n', encoding="utf-8")
    (tmp_path / "base.sdx").write_text("sdx 1\n", encoding="utf-8")
    assert _codes(recipe, {}) == ["SDX0501"]
    assert _codes(recipe, {recipe.resolve(): "sdx 1\nlora rank 8x\n"}) == ["SDX0202", "SDX0501"]
    assert _codes(recipe, {(tmp_path / "base.sdx").resolve(): "lr 1e-4 loin\n"}) == ["SDX0403", "SDX0501"]
    never_saved = tmp_path / "new.sdx"
    assert _codes(never_saved, {never_saved.resolve(): "sdx 1\n"}) == ["SDX0501"]


def test_an_unsaved_text_is_held_to_the_file_size_limit(tmp_path: Path) -> None:
    recipe = tmp_path / "big.sdx"
    big = "# " + "x" * limits.MAX_FILE_BYTES + "\n"
    assert _codes(recipe, {recipe.resolve(): big}) == ["SDX0307"]


def test_spans_become_ranges_in_utf16_units() -> None:
    source = 'sample "🐱 cat" sizes 512\n'
    where = features.span_range(Span("r.sdx", 1, 15, 1, 20), source, UTF16)
    assert (where.start.line, where.start.character, where.end.character) == (0, 15, 20)
    empty = features.span_range(Span("r.sdx", 3, 1, 1, 1), None, UTF16)  # past the text, end before start
    assert (empty.start, empty.end) == (lsp.Position(2, 0), lsp.Position(2, 0))


def _labels(text: str, line: int, column: int) -> list[str]:
    return [item.label for item in features.completions(lines_of(text), line, column)]


def test_completion_by_place() -> None:
    assert "rtx3060-12gb" in _labels("profile ", 0, 8)
    assert "cosine" in _labels("schedule ", 0, 9)
    assert _labels("sample every 500 ", 0, 17)[:2] == ["steps", "step"]
    assert "unet" in _labels("finetune ", 0, 9)
    assert _labels('sample "a cat', 0, 10) == []  # inside a string
    assert _labels("frobnicate ", 0, 11) == []  # no statement to complete


def test_a_phrase_begun_inserts_its_rest() -> None:
    items = {item.label: item for item in features.completions(["lora rank 8 cache t"], 0, 19)}
    assert items["cache te"].insert_text == "te"
    assert items["rank"].insert_text is None


def test_hover_on_nothing_and_on_a_code_in_a_rendered_diagnostic() -> None:
    assert features.hover(["   "], lsp.Position(0, 1), 1, []) is None
    found = features.hover(["# error[SDX0403]: unknown"], lsp.Position(0, 10), 10, [])
    assert found is not None and str(found.contents.value).startswith("SDX0403 (error)")  # type: ignore[union-attr]


def test_without_pygls_the_command_says_so() -> None:
    code = ("import sys; sys.modules['pygls'] = None\n"
            "from sdxlc.cli.main import main\nmain(['lsp'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert "`sdxlc lsp` needs pygls" in done.stderr
