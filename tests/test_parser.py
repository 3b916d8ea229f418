"""The grammar and the syntax tree: lexical pieces, spans, syntax errors and recovery."""

from __future__ import annotations

import pytest

from sdxlc.lang import ast
from sdxlc.lang.parser import RecipeSyntaxError, parse, parse_recovering, parser

MUST_PARSE = "lora rank 8 on unet bf16 cache te; lr 1e-4 lion; block_lr 0, 1e-4 x9, 5e-5 x3, 1e-4 x9, 1e-4"


def statements(text: str) -> list[ast.Statement]:
    return ast.build(parse(text, "t.sdx"), "t.sdx")


def test_must_parse_line_is_three_statements() -> None:
    found = statements(MUST_PARSE)
    assert [s.keyword for s in found] == [
        ast.Word("lora", found[0].keyword.span),
        ast.Word("lr", found[1].keyword.span),
        ast.Word("block_lr", found[2].keyword.span),
    ]
    assert [type(item).__name__ for item in found[0].args] == [
        "Word",
        "Number",
        "Word",
        "Word",
        "Word",
        "Word",
        "Word",
    ]
    block = found[2].args[0]
    assert isinstance(block, ast.List)
    repeats = [item for item in block.items if isinstance(item, ast.Repeat)]
    assert [r.count for r in repeats] == [9, 3, 9]


def test_spans_are_one_based_with_exclusive_end() -> None:
    lr = statements(MUST_PARSE)[1]
    assert lr.keyword.span.line == 1 and lr.keyword.span.column == 36
    name = lr.args[1]
    assert isinstance(name, ast.Word) and name.value == "lion"
    assert (name.span.column, name.span.end_column) == (44, 48)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("8", ast.Number, 8),
        ("1e-4", ast.Number, 1e-4),
        ("5E-5", ast.Number, 5e-5),
        ("0.0357", ast.Number, 0.0357),
        ("5%", ast.Percent, 5.0),
        ('"a \\"b\\" c"', ast.String, 'a "b" c'),
        ("lion", ast.Word, "lion"),
        ("unet+te1+te2", ast.Word, "unet+te1+te2"),
        ("rtx3060-12gb", ast.Word, "rtx3060-12gb"),
        (".txt", ast.Word, ".txt"),
        ("madebyollin/sdxl-vae-fp16-fix", ast.Word, "madebyollin/sdxl-vae-fp16-fix"),
        ("8x", ast.Bad, None),
        ("1e-", ast.Bad, None),
    ],
)
def test_lexical_pieces(text: str, kind: type, value: object) -> None:
    item = statements(f"k {text}")[0].args[0]
    assert isinstance(item, kind)
    if value is not None:
        assert item.value == value  # type: ignore[attr-defined]


def test_number_kinds() -> None:
    assert isinstance(ast.number("8"), int)
    assert isinstance(ast.number("8.0"), float)


def test_range_size_and_repeat() -> None:
    args = statements("k 512..2048 12GB 1e-4 x9")[0].args
    assert isinstance(args[0], ast.Range) and (args[0].low, args[0].high) == (512, 2048)
    assert isinstance(args[1], ast.Size) and (args[1].value, args[1].unit) == (12.0, "GB")
    assert isinstance(args[2], ast.Repeat) and args[2].count == 9


def test_assignments_and_lists_across_lines() -> None:
    found = statements("optimizer lion args weight_decay=0.01 betas=0.9,0.99\nblock_lr 0,\n  1e-4 x22\n")
    assign = found[0].args[2]
    assert isinstance(assign, ast.Assign) and assign.name.value == "weight_decay"
    betas = found[0].args[3]
    assert isinstance(betas, ast.Assign) and isinstance(betas.value, ast.List)
    assert len(found) == 2 and isinstance(found[1].args[0], ast.List)


def test_comments_blank_lines_and_semicolons() -> None:
    text = "# head\n\nsdx 1   # version\n;;\nlr 1e-4;seed 3\n"
    assert [s.keyword.value for s in statements(text)] == ["sdx", "lr", "seed"]  # type: ignore[union-attr]


def test_empty_text() -> None:
    assert statements("") == []
    assert statements("# only a comment") == []


def test_unclosed_string_points_at_the_quote() -> None:
    _, diags = parse_recovering('lr 1e-4\nmodel "stabilityai/sdxl\nseed 3\n', "t.sdx")
    assert [(d.code, d.span.line, d.span.column) for d in diags if d.span] == [("SDX0102", 2, 7)]


def test_parse_raises_with_every_error() -> None:
    with pytest.raises(RecipeSyntaxError) as caught:
        parse('model "x\nseed 1\nname "y\n', "t.sdx")
    assert [(d.code, d.span.line) for d in caught.value.diagnostics if d.span] == [
        ("SDX0102", 1),
        ("SDX0102", 3),
    ]


def test_recovery_keeps_the_good_statements() -> None:
    tree, diags = parse_recovering('lr 1e-4\nbad = = 3\nseed 3\nmodel "x\nepochs 2\n', "t.sdx")
    assert [d.code for d in diags] == ["SDX0103", "SDX0102"]
    assert diags[0].span is not None and (diags[0].span.line, diags[0].span.column) == (2, 7)
    keywords = [s.keyword.value for s in ast.build(tree, "t.sdx")]  # type: ignore[union-attr]
    assert keywords == ["lr", "seed", "epochs"]


def test_trailing_comma_at_end_of_file() -> None:
    _, diags = parse_recovering("block_lr 0, 1e-4,", "t.sdx")
    assert [d.code for d in diags] == ["SDX0104"]
    assert diags[0].span is not None and diags[0].span.line == 1


def test_stray_equals_sign() -> None:
    _, diags = parse_recovering("= 3", "t.sdx")
    assert [d.code for d in diags] == ["SDX0103"]


def test_parser_is_built_once() -> None:
    assert parser() is parser()
