"""What a recipe cannot say, reported where it says it: strings, numbers, files and `--set`.

Each test is one class of input that once ended in an internal error, a hang, or an error without a
place (docs/LANGUAGE.md, "Limits").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sdxlc.lang.diagnostics import Diagnostic, render_text
from sdxlc.lang.lower import load_recipe
from sdxlc.lang.parser import parse_recovering
from sdxlc.pipeline import Compiled, compile_recipe

ROOT = Path(__file__).resolve().parent.parent
BASE = 'model tiny\ndata "data/quickstart"\n'


def _compile(tmp_path: Path, text: str | bytes, sets: tuple[str, ...] = ()) -> Compiled:
    (tmp_path / "data").mkdir(exist_ok=True)
    if not (tmp_path / "data" / "quickstart").exists():
        (tmp_path / "data" / "quickstart").symlink_to(ROOT / "recipes" / "data" / "quickstart")
    recipe = tmp_path / "r.sdx"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return compile_recipe(recipe, sets)


def _errors(compiled: Compiled) -> list[tuple[str, int | None]]:
    return [(d.code, d.span.line if d.span else None) for d in compiled.errors]


def _only(compiled: Compiled, code: str) -> Diagnostic:
    found = [d for d in compiled.errors if d.code == code]
    assert found, [(d.code, d.message) for d in compiled.diagnostics]
    return found[0]


# --- strings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ['name "a\\u0001b"', 'output "o\x00x"', 'profile "cpu\x1b[2J"',
                                  'sample "a\x07cat"', 'data "data/quick\u202estart"',
                                  'data "data/quickstart" prefix "\x7fx"'])
def test_control_characters_in_strings_are_errors_at_the_string(tmp_path: Path, line: str) -> None:
    compiled = _compile(tmp_path, BASE + line.replace("\\u0001", "\x01") + "\n")
    diag = _only(compiled, "SDX0209")
    assert diag.span is not None and diag.span.line == 3
    assert "\x1b" not in render_text(compiled.ordered(), compiled.sources)


def test_free_text_may_hold_tabs_new_lines_and_joiners(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, BASE + 'sample "a cat\\tat dusk\\non a hill 👩\u200d🎨"\n')
    assert compiled.errors == [] and compiled.plan is not None
    assert compiled.plan["sample"]["prompts"] == ["a cat\tat dusk\non a hill 👩\u200d🎨"]


@pytest.mark.parametrize("line", ["name " + "a" * 5000, 'data "' + "a/" * 3000 + '"',
                                  'data "' + "b" * 300 + '"', 'sample "' + "x" * 3000 + '"'])
def test_long_strings_and_paths_are_errors(tmp_path: Path, line: str) -> None:
    compiled = _compile(tmp_path, BASE + line + "\n")
    diag = _only(compiled, "SDX0210")
    assert diag.span is not None and len(diag.message) < 200


def test_a_surrogate_from_the_command_line_is_an_error_not_a_crash(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, BASE, ("output.name=x\udcff",))
    diag = _only(compiled, "SDX0209")
    assert diag.span is not None and diag.span.file == "--set"
    render_text(compiled.ordered(), compiled.sources).encode("utf-8")


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["0" * 5000 + "1", "9" * 5000, "1e999", "1" * 41])
def test_numbers_past_int_and_float_limits_are_malformed_values(tmp_path: Path, literal: str) -> None:
    compiled = _compile(tmp_path, BASE + f"steps {literal}\n")
    assert _errors(compiled) == [("SDX0202", 3)]


def test_a_huge_repetition_count_is_a_malformed_value(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, BASE + "block_lr 1e-4 x" + "9" * 5000 + "\n")
    assert _errors(compiled) == [("SDX0202", 3)]


@pytest.mark.parametrize("line, path", [("seed 18446744073709551616", "training.seed"),
                                        ('sample "x" seed 4294967296', "sample.seed"),
                                        ("model tiny seed 4294967296", "model.tiny_seed")])
def test_seeds_the_runtime_cannot_take_are_refused(tmp_path: Path, line: str, path: str) -> None:
    compiled = _compile(tmp_path, 'data "data/quickstart"\n' + line + "\n")
    diag = _only(compiled, "SDX0404")
    assert path in diag.message and "4294967295" in diag.message and diag.help and "32-bit" in diag.help


def test_a_sample_size_the_vae_cannot_take_is_refused(tmp_path: Path) -> None:
    diag = _only(_compile(tmp_path, BASE + 'sample "x" size 100\n'), "SDX0405")
    assert diag.help == "use 96 or 104"


# --- files --------------------------------------------------------------------------------------


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    with_bom = _compile(tmp_path, b"\xef\xbb\xbf" + (BASE + "seed 3\n").encode())
    assert with_bom.errors == [] and with_bom.plan is not None
    assert with_bom.plan["training"]["seed"] == 3
    assert with_bom.plan["provenance"]["training.seed"]["at"].endswith("r.sdx:3:1")


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "/proc/self/status", ".", "pipe.sdx",
                                    "big.sdx"])
def test_use_reads_only_small_regular_files(tmp_path: Path, target: str) -> None:
    os.mkfifo(tmp_path / "pipe.sdx")
    (tmp_path / "big.sdx").write_bytes(b"seed 1\n" * 10_000)
    start = time.perf_counter()
    compiled = _compile(tmp_path, f'use "{target}"\n' + BASE)
    assert time.perf_counter() - start < 2
    assert _errors(compiled) == [("SDX0307", 1)]


def test_the_recipe_itself_must_be_a_small_regular_file(tmp_path: Path) -> None:
    compiled = compile_recipe(Path("/dev/zero"))
    assert [d.code for d in compiled.errors] == ["SDX0307"] and compiled.errors[0].span is not None


def test_the_files_a_recipe_uses_share_one_size_limit(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / f"{name}.sdx").write_text("# padding\n" * 3000)  # 30 KB each, under the file limit
    compiled = _compile(tmp_path, 'use "a.sdx"\nuse "b.sdx"\nuse "c.sdx"\n' + BASE)
    assert _errors(compiled) == [("SDX0307", 3)]


def test_use_chains_have_a_depth_limit(tmp_path: Path) -> None:
    for depth in range(20):
        (tmp_path / f"u{depth}.sdx").write_text(f'use "u{depth + 1}.sdx"\nseed {depth}\n')
    (tmp_path / "u20.sdx").write_text("seed 99\n")
    compiled = _compile(tmp_path, 'use "u0.sdx"\n' + BASE)
    diag = _only(compiled, "SDX0308")
    assert diag.span is not None and diag.span.file.endswith("u6.sdx")


def test_a_file_that_is_not_utf8_is_reported_at_its_bad_byte(tmp_path: Path) -> None:
    (tmp_path / "bad.sdx").write_bytes(b"seed 1\nlr \xff\n")
    compiled = _compile(tmp_path, 'use "bad.sdx"\n' + BASE)
    diag = _only(compiled, "SDX0305")
    assert diag.span is not None and (diag.span.line, diag.span.column) == (2, 4)
    assert diag.related and diag.related[0][0].file.endswith("r.sdx")


def test_a_use_link_that_loops_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "loop.sdx").symlink_to("loop.sdx")
    assert _errors(_compile(tmp_path, 'use "loop.sdx"\n' + BASE)) == [("SDX0305", 1)]


# --- parsing and lowering stay fast ---------------------------------------------------------------


def test_recovery_from_many_syntax_errors_is_bounded(tmp_path: Path) -> None:
    text = "block_lr " + "1,\n" * 9000 + "=,\n" * 60 + "1\n"
    start = time.perf_counter()
    tree, diags = parse_recovering(text, "x.sdx")
    assert time.perf_counter() - start < 3
    assert diags and all(d.span is not None and d.span.line > 9000 for d in diags)


def test_statements_after_an_error_keep_their_lines(tmp_path: Path) -> None:
    text = "seed 1\nlr =\nblock_lr 0, 1e-4 x11, # a comment, and a blank line\n\n  1e-4 x11\nsteps 5 5\n"
    low = load_recipe(_write(tmp_path, text))
    assert [(d.code, d.span.line if d.span else None) for d in low.diagnostics] == [("SDX0103", 2),
                                                                                     ("SDX0203", 6)]
    assert low.doc["block_lr"] == [0.0] + [1e-4] * 22 and low.doc["training"] == {"seed": 1, "steps": 5}


def test_a_file_with_hundreds_of_errors_stops_being_checked(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, BASE + "".join(f"zz{i}\n" for i in range(3000)))
    codes = [d.code for d in compiled.errors]
    assert codes.count("SDX0201") == 200 and codes[-1] == "SDX0310"


def _write(folder: Path, text: str) -> Path:
    path = folder / "x.sdx"
    path.write_text(text, encoding="utf-8")
    return path


# --- `--set` ------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["data.99999999999.repeat=2", "data.1.repeat=2", "data.2.path=x",
                                    "data." + "9" * 5000 + ".flip=true"])
def test_set_of_a_dataset_the_recipe_lacks_is_an_error(tmp_path: Path, option: str) -> None:
    compiled = _compile(tmp_path, BASE, (option,))
    diag = _only(compiled, "SDX0309")
    assert diag.span is not None and diag.span.at() == "--set:1:1"


def test_a_digit_key_is_no_list_index(tmp_path: Path) -> None:
    digits = "9" * 20000
    compiled = _compile(tmp_path, BASE + f"set optimizer.args.{digits} 1\n", ("optimizer.args.7=1",))
    assert {d.code for d in compiled.errors} == {"SDX0540"}


def test_set_errors_point_into_the_option(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, BASE, ("seed=1", "optimizer.name = loin"))
    diag = _only(compiled, "SDX0403")
    assert diag.span is not None and (diag.span.file, diag.span.line, diag.span.column) == ("--set", 2, 18)
    text = render_text(compiled.ordered(), compiled.sources)
    assert "2 | optimizer.name = loin" in text


def test_set_options_are_no_source_file_of_the_plan(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, BASE, ("training.seed=5",))
    assert compiled.plan is not None and compiled.plan["training"]["seed"] == 5
    assert [s["file"] for s in compiled.plan["sources"]] == [str(tmp_path / "r.sdx")]
    assert compiled.plan["provenance"]["training.seed"] == {"source": "set", "at": "--set:1:1"}


# --- follow-on errors ---------------------------------------------------------------------------


def test_a_follow_on_error_that_echoes_an_earlier_one_is_left_out(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, 'model tiny\ndata 5% repeat 2\ndata "data/quickstart" repeat 3\n')
    assert _errors(compiled) == [("SDX0203", 2)]  # not "data.0: 'path' is a required property"
    low = load_recipe(tmp_path / "r.sdx")
    assert low.doc["data"] == [{"path": "data/quickstart", "repeat": 3}]


@pytest.mark.parametrize("text, expected", [
    ("", ("SDX0501", 1)),  # nothing names data: the start of the recipe
    ("model tiny\nlora\nfinetune unet\n" + 'data "data/quickstart"\n', ("SDX0570", 3)),
    ('model tiny\ndata "data/quickstart"\nschedule warmup 10\n', ("SDX0506", 3)),
    ('model tiny\ndata "data/quickstart"\nresolution 4096\nbatch 4096\n', ("SDX0610", 1)),
])
def test_errors_about_what_a_recipe_lacks_have_a_place(tmp_path: Path, text: str,
                                                       expected: tuple[str, int]) -> None:
    compiled = _compile(tmp_path, text)
    assert expected in _errors(compiled)
    assert all(d.span is not None for d in compiled.errors)
