"""`sdxlc fmt`: one layout, comments kept, idempotent, and the lowered recipe never changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sdxlc.cli.lang import fmt_command
from sdxlc.lang.fmt import RecipeSyntaxError, format_recipe, is_formatted
from sdxlc.lang.lower import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.sdx"))

MESSY = """

# header comment
sdx   1 ;model tiny   # trailing
   profile cpu;  ;data "data/q" repeat 2 caption .txt



lr 1e-3 adamw; schedule cosine warmup 10%  # after
  # indented comment
block_lr 0, 1e-4 x9,
   # inside the list

      5e-5 x3,1e-4 x9 , 1e-4
optimizer adamw args  eps = 1e-8  weight_decay=0.01; # after semicolon
sample "a ; # \\" b"   steps 8\t cfg 5
log every 10\r
\r
seed 1;;steps 60;


"""

MESSY_FORMATTED = """# header comment
sdx 1
model tiny # trailing
profile cpu
data "data/q" repeat 2 caption .txt

lr 1e-3 adamw
schedule cosine warmup 10% # after
# indented comment
block_lr 0, 1e-4 x9,
    # inside the list
    5e-5 x3, 1e-4 x9, 1e-4
optimizer adamw args eps=1e-8 weight_decay=0.01 # after semicolon
sample "a ; # \\" b" steps 8 cfg 5
log every 10

seed 1
steps 60
"""

MORE_INPUTS = [
    "",
    "\n\n\n",
    "# only a comment",
    "sdx 1",
    "  sdx 1 ;;; ",
    ";model tiny",
    "lora rank 8 alpha 8 on unet bf16 cache te; lr 1e-4 lion; block_lr 0, 1e-4 x9, 5e-5 x3, 1e-4 x9, 1e-4",
    "batch 2 accumulate 2 # a\n# b\n\n\n\n# c\nsteps 10 # d",
    'sample "x" "y"  "z" every 5 steps',
    "block_lr 0,\n\n\n  1e-4 x9,   # c\n 5e-5 x3,\n1e-4 x9, 1e-4\n",
    'data "a"  repeat 2\r\ndata "b" flip\r\n',
]


def _lowered_doc(tmp_path: Path, name: str, text: str) -> dict[str, object]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_recipe(path).doc


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_idempotent_and_keep_their_meaning(recipe: Path, tmp_path: Path) -> None:
    text = recipe.read_text(encoding="utf-8")
    once = format_recipe(text, str(recipe))
    assert format_recipe(once, str(recipe)) == once
    assert _lowered_doc(tmp_path, "a.sdx", text) == _lowered_doc(tmp_path, "b.sdx", once)
    assert once.count("#") == text.count("#")


def test_messy_input_gets_the_canonical_layout() -> None:
    assert format_recipe(MESSY, "m.sdx") == MESSY_FORMATTED
    assert is_formatted(MESSY_FORMATTED, "m.sdx")


@pytest.mark.parametrize("text", [MESSY, *MORE_INPUTS])
def test_messy_inputs_are_idempotent_and_keep_their_meaning(text: str, tmp_path: Path) -> None:
    once = format_recipe(text, "m.sdx")
    assert format_recipe(once, "m.sdx") == once
    assert _lowered_doc(tmp_path, "a.sdx", text) == _lowered_doc(tmp_path, "b.sdx", once)
    assert "\n\n\n" not in once and not once.startswith("\n")
    assert once == "" or (once.endswith("\n") and not once.endswith("\n\n"))


def test_blank_runs_collapse_to_one() -> None:
    assert format_recipe("sdx 1\n\n\n\nmodel tiny\n", "f.sdx") == "sdx 1\n\nmodel tiny\n"


def test_a_comment_after_a_semicolon_stays_with_its_statement() -> None:
    assert format_recipe("lr 1e-4; # fast\nbatch 2", "f.sdx") == "lr 1e-4 # fast\nbatch 2\n"


def test_syntax_errors_are_refused_with_their_codes() -> None:
    with pytest.raises(RecipeSyntaxError) as caught:
        format_recipe('lr 1e-4 "abc\nbatch 2,\n', "bad.sdx")
    assert [d.code for d in caught.value.diagnostics] == ["SDX0102", "SDX0104"]


def test_check_reports_and_does_not_modify(tmp_path: Path) -> None:
    path = tmp_path / "x.sdx"
    path.write_bytes(MESSY.encode("utf-8"))
    result = CliRunner().invoke(fmt_command, ["--check", str(path)])
    assert result.exit_code == 1
    assert f"would reformat {path}" in result.stderr
    assert path.read_bytes() == MESSY.encode("utf-8")


def test_check_flags_windows_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "x.sdx"
    path.write_bytes(b"sdx 1\r\nmodel tiny\r\n")
    assert CliRunner().invoke(fmt_command, ["--check", str(path)]).exit_code == 1
    assert CliRunner().invoke(fmt_command, [str(path)]).exit_code == 0
    assert path.read_bytes() == b"sdx 1\nmodel tiny\n"


def test_check_passes_on_a_formatted_file(tmp_path: Path) -> None:
    path = tmp_path / "x.sdx"
    path.write_text(MESSY_FORMATTED, encoding="utf-8")
    assert CliRunner().invoke(fmt_command, ["--check", str(path)]).exit_code == 0


def test_fmt_rewrites_in_place(tmp_path: Path) -> None:
    path = tmp_path / "x.sdx"
    path.write_text(MESSY, encoding="utf-8")
    result = CliRunner().invoke(fmt_command, [str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text(encoding="utf-8") == MESSY_FORMATTED


def test_diff_prints_the_change_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "x.sdx"
    path.write_text("sdx 1;model tiny\n", encoding="utf-8")
    result = CliRunner().invoke(fmt_command, ["--diff", str(path)])
    assert result.exit_code == 0
    assert "-sdx 1;model tiny" in result.stdout and "+model tiny" in result.stdout
    assert path.read_text(encoding="utf-8") == "sdx 1;model tiny\n"


def test_a_file_with_a_syntax_error_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bad.sdx"
    good = tmp_path / "good.sdx"
    text = "sdx 1\nlr 1e-4 \"abc\n"
    path.write_text(text, encoding="utf-8")
    good.write_text("sdx  1\n", encoding="utf-8")
    result = CliRunner().invoke(fmt_command, [str(path), str(good)])
    assert result.exit_code == 1
    assert "error[SDX0102]" in result.stderr
    assert path.read_text(encoding="utf-8") == text
    assert good.read_text(encoding="utf-8") == "sdx 1\n"
