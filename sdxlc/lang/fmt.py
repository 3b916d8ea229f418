"""`sdxlc fmt`: one canonical layout of a recipe, comments kept.

The layout is computed from the token stream of the recipe grammar (a basic lexer over
`grammar/sdx.lark` that keeps comments and whitespace), never from patterns over the raw text:

- one statement per line; statements joined by `;` are split onto lines of their own;
- single spaces between items; `,` sticks to the value before it; `name=value` has no spaces;
- a line break after a `,` (a list continued on the next line) is kept, the continuation indented
  by four spaces; blank lines inside a list are dropped;
- own-line comments start the line (or the continuation indent); a trailing comment follows its line
  after one space; a comment after `;` stays on the line of the statement before it;
- at most one blank line in a row; none at the start or the end; the file ends with one new line.

Formatting never changes what a recipe says: the statements of the result are checked against those
of the input, item by item. Text with syntax errors is refused with `RecipeSyntaxError`, whose
diagnostics `render_text` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

# isort: off
import sdxlc.lang.lark_import  # noqa: F401  (first: lark without the `regex` module)
from lark import Lark, Token
# isort: on

from sdxlc.lang import ast
from sdxlc.lang.parser import GRAMMAR, RecipeSyntaxError, parse

INDENT = "    "


class FormatError(Exception):
    """The formatter would have changed the meaning of a recipe (a bug in the formatter)."""


@cache
def _lexer() -> Lark:
    """A lexer of the recipe grammar that can return the ignored tokens too (built once)."""
    return Lark(GRAMMAR.read_text(encoding="utf-8"), parser="lalr", lexer="basic")


@dataclass
class _Line:
    words: list[str] = field(default_factory=list)
    comment: str | None = None
    continued: bool = False

    def render(self) -> str:
        indent = INDENT if self.continued else ""
        parts = [" ".join(self.words)] if self.words else []
        if self.comment is not None:
            parts.append(self.comment)
        return indent + " ".join(parts) if parts else ""


@dataclass
class _Layout:
    """Builds output lines from the significant tokens, one at a time."""

    lines: list[_Line] = field(default_factory=list)
    current: _Line = field(default_factory=_Line)
    after_comma: bool = False  # the last significant token was `,`: a new line continues the list
    after_semicolon: bool = False  # a `;` ended a statement on this physical line
    glue: bool = False  # the next word attaches to the previous one (after `=`)

    def word(self, text: str) -> None:
        if self.after_semicolon:
            self._flush()
            self.after_semicolon = False
        if self.glue and self.current.words:
            self.current.words[-1] += text
        else:
            self.current.words.append(text)
        self.glue = False
        self.after_comma = False

    def comma(self) -> None:
        self.current.words[-1] += ","
        self.after_comma = True

    def equal(self) -> None:
        self.current.words[-1] += "="
        self.glue = True

    def comment(self, text: str) -> None:
        self.current.comment = text.rstrip()

    def semicolon(self) -> None:
        if self.current.words:
            self.after_semicolon = True

    def newline(self) -> None:
        self.after_semicolon = False
        if self.current.words or self.current.comment is not None:
            self.lines.append(self.current)
        elif not self.after_comma:
            self.lines.append(_Line())  # a blank line; runs of them are collapsed by `text`
        self.current = _Line(continued=self.after_comma)

    def _flush(self) -> None:
        self.lines.append(self.current)
        self.current = _Line()

    def text(self) -> str:
        if self.current.words or self.current.comment is not None:
            self._flush()
        out: list[str] = []
        for line in self.lines:
            rendered = line.render()
            if rendered or (out and out[-1]):
                out.append(rendered)
        while out and not out[-1]:
            out.pop()
        return "\n".join(out) + "\n" if out else ""


def format_recipe(text: str, file: str) -> str:
    """The canonical layout of a recipe; RecipeSyntaxError (with every syntax error) when it has any.
    A UTF-8 byte-order mark at the start is kept, and the rest formatted."""
    if text.startswith("\ufeff"):
        return "\ufeff" + format_recipe(text[1:], file)
    before = _statements(text, file)
    layout = _Layout()
    for token in _lexer().lex(text, dont_ignore=True):
        _feed(layout, token)
    result = layout.text()
    if _statements(result, file) != before:
        raise FormatError(f"{file}: formatting would change the statements of the recipe")
    return result


def is_formatted(text: str, file: str) -> bool:
    """Whether a recipe is already in its canonical layout (RecipeSyntaxError on syntax errors)."""
    return format_recipe(text, file) == text


def _feed(layout: _Layout, token: Token) -> None:
    kind, value = token.type, str(token)
    if kind == "COMMENT":
        layout.comment(value)
    elif "\n" in value:
        layout.newline()
    elif value == ";":
        layout.semicolon()
    elif kind == "COMMA":
        layout.comma()
    elif kind == "EQUAL":
        layout.equal()
    elif value.strip():
        layout.word(value)


def _statements(text: str, file: str) -> list[tuple[str, ...]]:
    """What a recipe says, without its layout: each statement as the text of its items."""
    tree = parse(text, file)
    return [tuple(ast.source_text(item) for item in stmt.items) for stmt in ast.build(tree, file)]


__all__ = ["FormatError", "RecipeSyntaxError", "format_recipe", "is_formatted"]
