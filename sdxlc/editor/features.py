"""What the language server answers, as LSP types: the compiler's diagnostics of a document, word
completion and hover text. Pure functions of the text (and the compiler's result); `server` wires them
to the protocol.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from lsprotocol import types as lsp
from pygls.uris import from_fs_path
from pygls.workspace.position_codec import PositionCodec

from sdxlc.editor import text, words
from sdxlc.lang import vocabulary as vocab
from sdxlc.lang.diagnostics import Diagnostic, Span
from sdxlc.pipeline import compile_recipe
from sdxlc.tools.explain import explain

SOURCE = "sdxlc"
_SEVERITY = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning}
_CODE = re.compile(r"SDX\d{4}", re.IGNORECASE)


# --- diagnostics -------------------------------------------------------------------------------------


def check(path: Path, uri: str, unsaved: Mapping[Path, str], codec: PositionCodec) -> list[lsp.Diagnostic]:
    """The compiler's diagnostics of the recipe at `path` (read from `unsaved` where an editor holds
    it), as the document `uri` shows them."""
    compiled = compile_recipe(path, unsaved=unsaved)
    return convert(compiled.ordered(), str(path), uri, compiled.sources, codec)


def convert(
    diags: Iterable[Diagnostic], top: str, uri: str, sources: Mapping[str, str], codec: PositionCodec
) -> list[lsp.Diagnostic]:
    """Compiler diagnostics as LSP diagnostics of the file `top` (shown as `uri`). One in a file that
    `top` uses sits on the `use` line that leads to it, naming its place, with the exact place as
    related information; one without a place sits at the start of the file."""
    out = []
    for diag in diags:
        related = [_related(span, label, top, uri, sources, codec) for span, label in diag.related]
        message = diag.message + (f"\nhelp: {diag.help}" if diag.help else "")
        where = lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0))
        if diag.span is not None and diag.span.file == top:
            where = span_range(diag.span, sources.get(top), codec)
        elif diag.span is not None:
            where = _use_range(top, diag.span.file, sources, codec)
            shown = os.path.relpath(diag.span.file, os.path.dirname(top) or ".")
            message = f"{shown}:{diag.span.line}:{diag.span.column}: {message}"
            related.insert(0, _related(diag.span, "here", top, uri, sources, codec))
        out.append(lsp.Diagnostic(
            range=where, message=message, severity=_SEVERITY[diag.severity], code=diag.code, source=SOURCE,
            related_information=related or None,
        ))
    return out


def span_range(span: Span, source: str | None, codec: PositionCodec) -> lsp.Range:
    """A compiler span (1-based, end exclusive, columns in characters) as an LSP range."""
    lines = text.lines_of(source) if source is not None else []
    start = _position(lines, span.line, span.column, codec)
    end = _position(lines, span.end_line, span.end_column, codec)
    if (end.line, end.character) < (start.line, start.character):
        end = start
    return lsp.Range(start, end)


def _position(lines: list[str], line: int, column: int, codec: PositionCodec) -> lsp.Position:
    row = max(line - 1, 0)
    content = lines[row] if row < len(lines) else ""
    return lsp.Position(row, codec.client_num_units(content[: max(column - 1, 0)]))


def _related(
    span: Span, label: str, top: str, uri: str, sources: Mapping[str, str], codec: PositionCodec
) -> lsp.DiagnosticRelatedInformation:
    place = uri if span.file == top else from_fs_path(os.path.abspath(span.file)) or span.file
    where = span_range(span, sources.get(span.file), codec)
    return lsp.DiagnosticRelatedInformation(lsp.Location(place, where), label)


def _use_range(top: str, file: str, sources: Mapping[str, str], codec: PositionCodec) -> lsp.Range:
    line = text.use_line_towards(top, file, dict(sources))
    if line is None:
        return lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0))
    content = text.lines_of(sources.get(top, ""))[line]
    return lsp.Range(lsp.Position(line, 0), lsp.Position(line, codec.client_num_units(content)))


# --- completion -----------------------------------------------------------------------------------


_KINDS = {
    "statement": lsp.CompletionItemKind.Keyword,
    "clause": lsp.CompletionItemKind.Property,
    "flag": lsp.CompletionItemKind.Constant,
    "value": lsp.CompletionItemKind.EnumMember,
}


def completions(lines: list[str], line: int, column: int) -> list[lsp.CompletionItem]:
    """Words that fit at a position: statement keywords at the start of a statement, then the values its
    last clause takes and the clauses of the statement."""
    writing = text.writing_at(lines, line, column)
    if writing is None:
        return []
    if not writing.before:
        return [_item(w, ()) for w in words.statements()]
    keyword = text.statement_keyword(writing.before)
    if keyword is None:
        return []
    rest = writing.before[len(keyword.split()) :]
    values = [words.Word(v, "value", keyword, "") for v in _values_after(keyword, rest)]
    items = [_item(w, rest) for w in values + words.clauses(keyword)]
    return list({item.label: item for item in items}.values())


def _values_after(keyword: str, rest: tuple[str, ...]) -> list[str]:
    """The fixed values that may follow: the statement's own argument right after its keyword, a
    clause's argument after the clause (a cadence's unit after its count), any positional argument."""
    found: list[str] = []
    if not rest:
        found += [v for e in vocab.VOCABULARY if e.context == vocab.STATEMENT and e.words == keyword
                  for v in words.values_for(e)]
    for size in range(min(len(rest), text.MAX_PHRASE), 0, -1):
        hit = vocab.lookup(rest[-size:], keyword)
        if hit is not None and hit[1] == size and hit[0].arg in ("value", "cadence"):
            found += words.values_for(hit[0])
    if len(rest) >= 2:
        hit = vocab.lookup(rest[-2:-1], keyword)
        if hit is not None and hit[0].arg == "cadence":
            found += list(vocab.UNITS)
    for entry in vocab.positional(keyword):
        found += words.values_for(entry)
    return list(dict.fromkeys(found))


def _item(word: words.Word, before: tuple[str, ...]) -> lsp.CompletionItem:
    """A completion item; a phrase whose first words are already written inserts the rest."""
    parts = word.words.split()
    insert = None
    for size in range(len(parts) - 1, 0, -1):
        if tuple(before[-size:]) == tuple(parts[:size]):
            insert = " ".join(parts[size:])
            break
    where = {"statement": "statement", "value": "value"}.get(word.kind, f"clause of `{word.context}`")
    return lsp.CompletionItem(
        label=word.words,
        kind=_KINDS[word.kind],
        detail=where,
        documentation=word.doc or None,
        insert_text=insert,
        filter_text=insert,
    )


# --- hover ------------------------------------------------------------------------------------------


def hover(
    lines: list[str], position: lsp.Position, column: int, diagnostics: Iterable[lsp.Diagnostic]
) -> lsp.Hover | None:
    """`sdxlc explain` of the word or phrase under the cursor (`column`, in characters), and of the code
    of each diagnostic at the position (in the client's units)."""
    if not 0 <= position.line < len(lines):
        return None
    parts: list[str] = []
    for phrase in text.phrases_at(lines[position.line], column):
        found = explain(phrase) or _code_in(phrase)
        if found:
            parts.append(found.rstrip("\n"))
            break
    for diag in diagnostics:
        if isinstance(diag.code, str) and _covers(diag.range, position):
            found = explain(diag.code)
            if found and not any(part.startswith(diag.code) for part in parts):
                parts.append(found.rstrip("\n"))
    if not parts:
        return None
    return lsp.Hover(lsp.MarkupContent(lsp.MarkupKind.PlainText, "\n\n".join(parts)))


def _code_in(phrase: str) -> str | None:
    match = _CODE.search(phrase)
    return explain(match.group(0)) if match else None


def _covers(where: lsp.Range, position: lsp.Position) -> bool:
    at = (position.line, position.character)
    return (where.start.line, where.start.character) <= at <= (where.end.line, where.end.character)
