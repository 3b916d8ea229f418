"""Parse recipe text into a lark tree with positions, turning syntax errors into diagnostics.

The grammar lives in `grammar/sdx.lark`; the LALR parser is built once per grammar and lark version and
kept in the user's cache folder (`$XDG_CACHE_HOME/sdxlc`, else `~/.cache/sdxlc`; lark checks the file
against the grammar's hash and rebuilds it when they differ, and a folder that cannot be written only
means no cache). `SDXLC_NO_PARSER_CACHE=1` builds the parser every time. `parse_recovering` reports
every syntax error of a file: it parses the text one statement group at a time (a line, with the lines
a trailing `,` continues it onto), and after an error it blanks the offending line of that group
(keeping every other line and column where it was) and parses the group again, so the statements
around a bad line are still read. Re-parsing is bounded: a group whose errors would cost more than the
file's parse budget is dropped after its first error, so no text takes long to read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import cache
from pathlib import Path

# isort: off
import sdxlc.lang.lark_import  # noqa: F401  (first: lark without the `regex` module)
from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
# isort: on

from sdxlc.lang import ast
from sdxlc.lang.cache_folder import cache_folder
from sdxlc.lang.diagnostics import Diagnostic, Span, make

GRAMMAR = Path(__file__).resolve().parent / "grammar" / "sdx.lark"
_MAX_ERRORS = 50
_BUDGET_FLOOR = 32 * 1024  # characters any file may re-parse while recovering; a long one, half its size
_CODE = re.compile(r'"(?:[^"\\]|\\.)*"?|#.*|[^"#]+')

_TOKEN_NAMES = {
    "NUMBER": "a number",
    "PERCENT": "a percentage",
    "SIZE": "a size",
    "RANGE": "a range",
    "STRING": "a string",
    "WORD": "a word",
    "BAD": "a value",
    "REPEAT": "a repetition like `x9`",
    "EQUAL": "`=`",
    "COMMA": "`,`",
    "_SEP": "the end of the statement",
    "_NL": "a new line",
    "$END": "the end of the file",
}


class RecipeSyntaxError(Exception):
    """Raised by `parse` when the text has syntax errors; carries every one of them."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("; ".join(f"{d.code}: {d.message}" for d in diagnostics))
        self.diagnostics = diagnostics


@cache
def parser() -> Lark:
    """The recipe parser (built once, then loaded from the cache file)."""
    grammar = GRAMMAR.read_text(encoding="utf-8")
    cache_file = _cache_file(grammar)
    return Lark(
        grammar,
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=str(cache_file) if cache_file is not None else False,
    )


def _cache_file(grammar: str) -> Path | None:
    """Where the built parser is kept, named by the grammar and lark version; None for no cache."""
    folder = cache_folder()
    if folder is None:
        return None
    from lark import __version__ as lark_version

    digest = hashlib.sha256(f"{grammar}\0{lark_version}".encode()).hexdigest()[:16]
    return folder / f"sdx-parser-{digest}.lark-cache"


def parse(text: str, file: str) -> Tree[Token]:
    """Parse recipe text; raise RecipeSyntaxError with every syntax error found."""
    tree, diags = parse_recovering(text, file)
    if diags:
        raise RecipeSyntaxError(diags)
    return tree


def parse_recovering(text: str, file: str) -> tuple[Tree[Token], list[Diagnostic]]:
    """Parse recipe text, skipping bad lines; return the tree of what could be read and the errors."""
    lines = text.split("\n")
    recovery = _Recovery(len(text) + max(len(text) // 2, _BUDGET_FLOOR))
    statements: list[Tree[Token] | Token] = []
    for start, end in _groups(lines):
        group = lines[start:end] + ([""] if end < len(lines) else [])  # keeps the group's line end
        tree = recovery.parse(group, file, start)
        if tree is not None:
            statements.extend(tree.children)
        if len(recovery.diags) >= _MAX_ERRORS:
            break
    return Tree("start", statements), recovery.diags


class _Recovery:
    """Parses statement groups, blanking bad lines and parsing again while its budget lasts."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.diags: list[Diagnostic] = []

    def parse(self, lines: list[str], file: str, offset: int) -> Tree[Token] | None:
        """The tree of one group (its positions moved down by `offset` lines); None when unreadable."""
        while len(self.diags) < _MAX_ERRORS:
            text = "\n".join(lines)
            self.budget -= len(text)
            try:
                return _shift(parser().parse(text), offset)
            except UnexpectedInput as error:
                diag, line = _diagnose(error, lines, file)
                self.diags.append(_moved(diag, offset))
                if self.budget < 0 or not _blank(lines, line):
                    return None
        return None


def _groups(lines: list[str]) -> list[tuple[int, int]]:
    """The line ranges [start, end) of the statement groups: a line ending in `,` (outside strings and
    comments) continues onto the next line that has code."""
    groups, start = [], 0
    for index, line in enumerate(lines):
        code = "".join(part for part in _CODE.findall(line) if not part.startswith("#")).strip()
        if code and not code.endswith(","):
            groups.append((start, index + 1))
            start = index + 1
    if start < len(lines):
        groups.append((start, len(lines)))
    return groups


def _shift(tree: Tree[Token], offset: int) -> Tree[Token]:
    """Move every position of a parsed group down by `offset` lines, to where the group is in its file."""
    if offset == 0:
        return tree
    for node in tree.iter_subtrees():
        meta = node.meta
        if not meta.empty:
            meta.line += offset
            meta.end_line += offset
        for child in node.children:
            if isinstance(child, Token) and child.line is not None:
                child.line += offset
                if child.end_line is not None:
                    child.end_line += offset
    return tree


def _moved(diag: Diagnostic, offset: int) -> Diagnostic:
    span = diag.span
    if span is None or offset == 0:
        return diag
    return dataclasses.replace(diag, span=Span(span.file, span.line + offset, span.column,
                                               span.end_line + offset, span.end_column))


def parse_value(text: str, file: str) -> tuple[ast.Item, ...]:
    """The items of a one-statement text such as a `--set` value; () when it is not that."""
    tree, diags = parse_recovering(text, file)
    statements = ast.build(tree, file)
    return statements[0].items if len(statements) == 1 and not diags else ()


def _blank(lines: list[str], line: int) -> bool:
    """Replace a 1-based line by spaces; False when there was nothing left to blank."""
    index = min(max(line, 1), len(lines)) - 1
    while index >= 0 and not lines[index].strip():
        index -= 1
    if index < 0:
        return False
    lines[index] = " " * len(lines[index])
    return True


def _diagnose(error: UnexpectedInput, lines: list[str], file: str) -> tuple[Diagnostic, int]:
    line, column = max(error.line, 1), max(error.column, 1)
    if isinstance(error, UnexpectedCharacters):
        return _bad_character(lines, file, line, column), line
    if isinstance(error, UnexpectedToken) and error.token.type != "$END":
        return _bad_token(error, file), line
    if isinstance(error, UnexpectedToken | UnexpectedEOF):
        return _bad_end(lines, file), len(lines)
    return make("SDX0103", "cannot read this", Span(file, line, column, line, column + 1)), line


def _bad_character(lines: list[str], file: str, line: int, column: int) -> Diagnostic:
    text = lines[line - 1] if line <= len(lines) else ""
    char = text[column - 1] if column <= len(text) else ""
    if char == '"':
        span = Span(file, line, column, line, len(text) + 1)
        return make("SDX0102", "unterminated string", span, 'add the closing `"` on the same line')
    span = Span(file, line, column, line, column + 1)
    if char == "=":
        return make("SDX0101", "unexpected `=`", span, "write `name=value` with a word before `=`")
    return make("SDX0101", f"unexpected character `{char}`", span)


def _bad_token(error: UnexpectedToken, file: str) -> Diagnostic:
    token = error.token
    end_line = token.end_line if token.end_line is not None else token.line
    end_column = token.end_column if token.end_column is not None else token.column + 1
    if token.type in ("_SEP", "_NL"):
        end_line, end_column = token.line, token.column + 1
    span = Span(file, token.line, token.column, end_line, end_column)
    found = _TOKEN_NAMES.get(token.type, f"`{token}`")
    if token.type == "EQUAL":
        found = "`=`"
        help_text = "`=` joins a name to its value, as in `args weight_decay=0.01`"
    elif token.type in ("_SEP", "_NL"):
        help_text = "a `,` or `=` must be followed by a value"
    else:
        help_text = None
    return make("SDX0103", f"unexpected {found}", span, help_text)


def _bad_end(lines: list[str], file: str) -> Diagnostic:
    last = len(lines)
    while last > 1 and not lines[last - 1].strip():
        last -= 1
    text = lines[last - 1] if lines else ""
    column = len(text.rstrip()) + 1
    span = Span(file, last, max(column - 1, 1), last, column)
    return make(
        "SDX0104",
        "the recipe ends in the middle of a statement",
        span,
        "a trailing `,` or `=` must be followed by a value",
    )
