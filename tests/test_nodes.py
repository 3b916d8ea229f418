"""`sdxlc.lang.nodes.node`: the syntax tree's record classes behave as frozen dataclasses."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, dataclass

import pytest

from sdxlc.lang import ast, nodes
from sdxlc.lang.diagnostics import Span

SPAN = Span("r.sdx", 2, 5, 2, 9)


@dataclass(frozen=True)
class _Reference:  # what the syntax tree's classes were, for comparison
    text: str
    span: Span
    note: str = ""


def test_construction_positional_keyword_and_default() -> None:
    assert ast.Bad("8x", SPAN).note == ""
    assert ast.Bad("8x", SPAN, "too long") == ast.Bad(text="8x", span=SPAN, note="too long")
    assert ast.Number(8, "8", SPAN).value == 8
    with pytest.raises(TypeError, match="missing argument 'span'"):
        ast.Word("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 3 arguments"):
        ast.Bad("8x", SPAN, "", "more")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected or repeated argument 'text'"):
        ast.Bad("8x", SPAN, text="9x")  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected or repeated argument 'colour'"):
        ast.Word("a", SPAN, colour="red")  # type: ignore[call-arg]


def test_equality_hash_and_repr_are_a_frozen_dataclasses() -> None:
    word, same, string = ast.Word("a", SPAN), ast.Word("a", SPAN), ast.String("a", SPAN)
    assert word == same and hash(word) == hash(same) and word != string
    assert len({word, same, string}) == 2
    nan = ast.Number(math.nan, "nan", SPAN)
    assert nan == nan  # noqa: PLR0124  (a tuple of fields compares identical objects as equal)
    ours, theirs = ast.Bad("8x", SPAN, "n"), _Reference("8x", SPAN, "n")
    assert repr(ours) == repr(theirs).replace("_Reference", "Bad")
    assert ast.Statement(word, (string,), SPAN).items == (word, string)


def test_fields_are_frozen_and_listed_in_order() -> None:
    word = ast.Word("a", SPAN)
    with pytest.raises(FrozenInstanceError):
        word.value = "b"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del word.value  # type: ignore[misc]
    assert nodes.fields(ast.Size) == ("value", "unit", "text", "span")
    assert ast.Range.__match_args__ == ("low", "high", "text", "span")
