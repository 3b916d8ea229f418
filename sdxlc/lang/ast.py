"""Typed syntax nodes of a recipe, built from the lark tree; every node carries its source span.

A statement is its first item (the keyword) followed by its other items; how those items group into
clauses is the vocabulary's business (see sdxlc/lang/vocabulary.py and sdxlc/lang/lower.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from sdxlc.lang import nodes
from sdxlc.lang.diagnostics import Diagnostic, Span, make

if TYPE_CHECKING:  # lark loads with the parser, when a text is parsed
    from lark import Token, Tree


@nodes.node
class Number:
    value: int | float
    text: str
    span: Span


@nodes.node
class Percent:
    value: float
    text: str
    span: Span


@nodes.node
class Size:
    value: float
    unit: str
    text: str
    span: Span


@nodes.node
class Range:
    low: int | float
    high: int | float
    text: str
    span: Span


@nodes.node
class String:
    value: str
    span: Span


@nodes.node
class Word:
    value: str
    span: Span


@nodes.node
class Bad:
    """A bare token of no known shape (`8x`, `1e-`), or a number too long to read: reported when used."""

    text: str
    span: Span
    note: str = ""  # why it cannot be read, when the shape is right

    def message(self) -> str:
        return f"malformed value `{self.text}`" + (f": {self.note}" if self.note else "")


@nodes.node
class Repeat:
    """`1e-4 x9`: nine copies of a value."""

    value: Value
    count: int
    span: Span


@nodes.node
class List:
    """`0, 1e-4 x9, 5e-5`: values separated by commas."""

    items: tuple[Value, ...]
    span: Span


@nodes.node
class Assign:
    """`name=value`, as in `args weight_decay=0.01`."""

    name: Word
    value: Value
    span: Span


Value = Number | Percent | Size | Range | String | Word | Bad | Repeat | List
Item = Value | Assign


@nodes.node
class Statement:
    keyword: Item
    args: tuple[Item, ...]
    span: Span

    @property
    def items(self) -> tuple[Item, ...]:
        return (self.keyword, *self.args)


def build(tree: Tree[Token], file: str) -> list[Statement]:
    """The statements of a parsed recipe."""
    from lark import Tree

    statements = []
    for node in tree.children:
        if isinstance(node, Tree) and node.data == "statement":
            items = [_item(child, file) for child in node.children if isinstance(child, Tree)]
            if items:
                statements.append(Statement(items[0], tuple(items[1:]), _tree_span(node, file)))
    return statements


def _tree_span(node: Tree[Token], file: str) -> Span:
    meta = node.meta
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token, file: str) -> Span:
    line = token.line if token.line is not None else 1
    column = token.column if token.column is not None else 1
    end_line = token.end_line if token.end_line is not None else line
    end_column = token.end_column if token.end_column is not None else column + len(token)
    return Span(file, line, column, end_line, end_column)


def _item(node: Tree[Token], file: str) -> Item:
    from lark import Token, Tree

    if node.data == "assign":
        name, value = node.children
        assert isinstance(name, Token) and isinstance(value, Tree)
        return Assign(Word(str(name), _token_span(name, file)), _seq(value, file), _tree_span(node, file))
    return _seq(node, file)


def _seq(node: Tree[Token], file: str) -> Value:
    from lark import Tree

    values = [_elem(child, file) for child in node.children if isinstance(child, Tree)]
    if len(values) == 1:
        return values[0]
    return List(tuple(values), _tree_span(node, file))


def _elem(node: Tree[Token], file: str) -> Value:
    from lark import Token

    tokens = [child for child in node.children if isinstance(child, Token)]
    value = _scalar(tokens[0], file)
    if len(tokens) == 1:
        return value
    digits = str(tokens[1])[1:]
    if len(digits) > len(str(MAX_REPEAT)) or int(digits) > MAX_REPEAT:
        note = f"at most {MAX_REPEAT} repetitions"
        return Bad(f"{tokens[0]} {tokens[1]}", _tree_span(node, file), note)
    return Repeat(value, int(digits), _tree_span(node, file))


MAX_REPEAT = 10_000  # `x` repetitions: far above any real list (block_lr has 23 values)
MAX_NUMBER_CHARS = 40  # a number literal longer than this is a mistake (and past what a value may hold)


def _scalar(token: Token, file: str) -> Value:
    span = _token_span(token, file)
    text = str(token)
    kind = token.type
    if kind in ("NUMBER", "PERCENT", "SIZE", "RANGE"):
        if len(text) > MAX_NUMBER_CHARS:
            return Bad(text, span, f"{len(text)} characters; a number has at most {MAX_NUMBER_CHARS}")
        if not _finite(text):
            return Bad(text, span, "beyond the range of a number")
    if kind == "NUMBER":
        return Number(number(text), text, span)
    if kind == "PERCENT":
        return Percent(float(text[:-1]), text, span)
    if kind == "SIZE":
        match = re.fullmatch(r"([\d.]+)([A-Za-z]+)", text)
        assert match is not None
        return Size(float(match.group(1)), match.group(2), text, span)
    if kind == "RANGE":
        low, high = text.split("..")
        return Range(number(low), number(high), text, span)
    if kind == "STRING":
        return String(unquote(text), span)
    if kind == "WORD":
        return Word(text, span)
    return Bad(text, span)


def leading_words(items: Sequence[Item], pos: int) -> list[str]:
    """The values of the words starting at `pos` (at most three)."""
    words = []
    for item in items[pos : pos + 3]:
        if not isinstance(item, Word):
            break
        words.append(item.value)
    return words


def skip_arguments(items: Sequence[Item], pos: int) -> int:
    """The position of the next word at or after `pos`."""
    while pos < len(items) and not isinstance(items[pos], Word):
        pos += 1
    return pos


def _finite(text: str) -> bool:
    """Whether every number in a literal is finite (`1e999` is not)."""
    return all(
        math.isfinite(float(part)) for part in re.findall(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", text)
    )


def number(text: str) -> int | float:
    """`8` is an int; `8.0`, `1e-4` and `5E-5` are floats."""
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text)


_ESCAPES = {"n": "\n", "t": "\t"}


def unquote(text: str) -> str:
    """The value of a string literal: quotes removed, `\\"`, `\\\\`, `\\n` and `\\t` unescaped."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def describe(item: Item) -> str:
    """How an item reads in a message: "the number `8`", "the string `\"eight\"`"."""
    names = {
        Number: "number",
        Percent: "percentage",
        Size: "size",
        Range: "range",
        String: "string",
        Word: "word",
        Bad: "value",
        Repeat: "repetition",
        List: "list",
        Assign: "`name=value` pair",
    }
    return f"the {names[type(item)]} `{source_text(item)}`"


def source_text(item: Item) -> str:
    """The item written back as recipe text."""
    if isinstance(item, Number | Percent | Size | Range):
        return item.text
    if isinstance(item, String):
        escaped = item.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(item, Word):
        return item.value
    if isinstance(item, Bad):
        return item.text
    if isinstance(item, Repeat):
        return f"{source_text(item.value)} x{item.count}"
    if isinstance(item, List):
        return ", ".join(source_text(value) for value in item.items)
    return f"{item.name.value}={source_text(item.value)}"


# --- reading items as values of a schema type ------------------------------------------------

BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


class LowerError(Exception):
    """A problem with one clause: it is reported and the clause skipped."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def join(first: Span, last: Span) -> Span:
    """The span from the start of `first` to the end of `last`."""
    return Span(first.file, first.line, first.column, last.end_line, last.end_column)


def missing(words: str, span: Span, what: str = "a value") -> NoReturn:
    """Raise the error for a clause without its argument."""
    raise LowerError(make("SDX0204", f"`{words}` needs {what}", span))


NUMBER_HELP = "numbers are written like `8`, `0.5`, `1e-4`; quote text that has spaces"


def reject(item: Item, expected: str) -> NoReturn:
    """Raise the error for an item of the wrong kind (or a malformed one)."""
    if isinstance(item, Bad):
        raise LowerError(make("SDX0202", item.message(), item.span, NUMBER_HELP))
    raise LowerError(make("SDX0203", f"expected {expected}, found {describe(item)}", item.span))


def read_value(item: Item, node: dict[str, Any], spans: list[Span]) -> Any:
    """An item read as a JSON value of a schema type (`node`); `spans` gets one span per list element."""
    kind = node.get("type")
    if not node or isinstance(kind, list):
        return _read_free(item, spans)
    if kind == "array":
        return _read_list(item, node["items"], spans)
    if kind == "integer":
        if isinstance(item, Number) and float(item.value).is_integer():
            return int(item.value)
        reject(item, "a whole number")
    if kind == "number":
        if isinstance(item, Number):
            return float(item.value)
        reject(item, "a number")
    if kind == "boolean":
        if isinstance(item, Word) and item.value.lower() in BOOLEANS:
            return BOOLEANS[item.value.lower()]
        reject(item, "`true` or `false`")
    if isinstance(item, String | Word):
        return item.value
    if isinstance(item, Number) and kind == "string":
        return item.text
    choices = " | ".join(f"`{choice}`" for choice in node.get("enum", []))
    reject(item, f"one of {choices}" if choices else "a word or a string")


def _read_list(item: Item, node: dict[str, Any], spans: list[Span]) -> list[Any]:
    elements: list[Item] = list(item.items) if isinstance(item, List) else [item]
    out: list[Any] = []
    for element in elements:
        count = element.count if isinstance(element, Repeat) else 1
        if isinstance(element, Repeat):
            element = element.value
        parts: list[Item] = [element]
        if isinstance(element, Word) and "enum" in node and "+" in element.value:
            parts = [Word(word, element.span) for word in element.value.split("+")]
        for part in parts:
            value = read_value(part, node, [])
            out += [value] * count
            spans += [part.span] * count
    return out


def _read_free(item: Item, spans: list[Span]) -> Any:
    if isinstance(item, List | Repeat):
        return _read_list(item, {}, spans)
    if isinstance(item, Number):
        return item.value
    if isinstance(item, Word) and item.value.lower() in ("true", "false"):
        return item.value.lower() == "true"
    if isinstance(item, Word | String):
        return item.value
    reject(item, "a number, a word or a string")
