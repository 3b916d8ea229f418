"""The diagnostics catalog, its renderings, and the language reference kept in step with the vocabulary."""

from __future__ import annotations

import re
from pathlib import Path

from sdxlc.lang import vocabulary as vocab
from sdxlc.lang.diagnostics import CATALOG, Span, did_you_mean, make, render_text, to_json
from sdxlc.lang.lower import load_recipe

DOC = Path(__file__).resolve().parent.parent / "docs" / "LANGUAGE.md"


def test_catalog_codes_are_grouped_and_well_formed() -> None:
    for code, (severity, title) in CATALOG.items():
        assert re.fullmatch(r"SDX0[1-6]\d\d", code), code
        assert severity in ("error", "warning") and title


def test_make_takes_severity_from_the_catalog() -> None:
    assert make("SDX0302", "twice", None).severity == "warning"
    assert make("SDX0301", "clash", None).severity == "error"


def test_render_rustc_style() -> None:
    span = Span("recipes/x.sdx", 3, 9, 3, 13)
    diag = make("SDX0403", "unknown optimizer `loin`", span, "did you mean `lion`?")
    text = render_text([diag], {"recipes/x.sdx": "sdx 1\nmodel tiny\nlr 1e-4 loin\n"})
    assert text.splitlines() == [
        "error[SDX0403]: unknown optimizer `loin`",
        " --> recipes/x.sdx:3:9",
        "  |",
        "3 | lr 1e-4 loin",
        "  |         ^^^^",
        "  = help: did you mean `lion`?",
    ]


def test_render_related_spans_beneath() -> None:
    first, second = Span("r.sdx", 1, 6, 1, 12), Span("r.sdx", 12, 6, 12, 13)
    source = "lora rank 8\n" + "\n" * 10 + "lora rank 16\n"
    diag = make(
        "SDX0301",
        "`lora.rank` is set to `8` and to `16`",
        second,
        "keep one of them",
        [(first, "first set here")],
    )
    lines = render_text([diag], {"r.sdx": source}).splitlines()
    assert lines[1] == "  --> r.sdx:12:6"
    assert lines[4] == "   |      ^^^^^^^"
    assert lines[5] == "  --> r.sdx:1:6"
    assert lines[7] == " 1 | lora rank 8"
    assert lines[8] == "   |      ------ first set here"
    assert lines[9] == "   = help: keep one of them"


def test_render_without_span_or_source() -> None:
    plain = render_text([make("SDX0306", "`--set x` is not `path=value`", None)], {})
    assert plain == "error[SDX0306]: `--set x` is not `path=value`\n"
    missing = render_text([make("SDX0305", "cannot read", Span("gone.sdx", 2, 1, 2, 4))], {})
    assert " --> gone.sdx:2:1" in missing


def test_render_in_color() -> None:
    text = render_text([make("SDX0201", "unknown word `x`", None)], {}, color=True)
    assert "\x1b[1;31merror[SDX0201]\x1b[0m" in text


def test_to_json() -> None:
    span = Span("r.sdx", 1, 9, 1, 13)
    [found] = to_json([make("SDX0403", "unknown optimizer `loin`", span, "did you mean `lion`?")])
    assert found == {
        "code": "SDX0403",
        "severity": "error",
        "message": "unknown optimizer `loin`",
        "file": "r.sdx",
        "line": 1,
        "column": 9,
        "end_line": 1,
        "end_column": 13,
        "help": "did you mean `lion`?",
        "related": [],
    }


def test_did_you_mean() -> None:
    assert did_you_mean("loin", ["adamw", "lion", "lion8bit"]) == "lion"
    assert did_you_mean("LION", ["lion"]) == "lion"
    assert did_you_mean("zzzz", ["lion"]) is None


def test_all_codes_of_the_front_end_are_catalogued(tmp_path: Path) -> None:
    path = tmp_path / "r.sdx"
    path.write_text('lora rank 8x\nlr 1e-4 loin\nmodel "x\nlora rank 9\nlora rank 10\n', encoding="utf-8")
    for diag in load_recipe(path).diagnostics:
        assert diag.code in CATALOG


# --- the language reference ----------------------------------------------------------------------


def test_reference_section_is_generated_from_the_vocabulary() -> None:
    text = DOC.read_text(encoding="utf-8")
    generated = text.split("<!-- vocabulary:begin -->\n", 1)[1].split("<!-- vocabulary:end -->", 1)[0]
    assert generated == vocab.reference_markdown()


def test_every_vocabulary_entry_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for entry in vocab.VOCABULARY:
        if entry.words:
            assert f"`{entry.words}`" in text, entry.words
        for path in entry.paths:
            assert f"`{path}`" in text, path


def test_every_schema_leaf_is_reachable() -> None:
    reachable = {path for entry in vocab.VOCABULARY for path in entry.paths}
    reachable |= {path + ".*" for path in reachable}
    missing = [leaf for leaf in vocab.leaf_paths() if leaf not in reachable]
    assert missing == []
    assert all(vocab.schema_node(leaf.replace("*", "0")) is not None for leaf in vocab.leaf_paths())


def test_vocabulary_is_well_formed() -> None:
    keys = [(entry.context, entry.words) for entry in vocab.VOCABULARY if entry.words]
    assert len(keys) == len(set(keys))
    for entry in vocab.VOCABULARY:
        assert entry.arg in vocab.ARG_KINDS and entry.doc
        if entry.arg not in ("file", "setting", "unsupported"):
            assert entry.paths, entry
        for path in entry.paths:
            assert vocab.schema_node(path.replace("*", "0")) is not None, path
