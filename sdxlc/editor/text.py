"""Reading a recipe document around a position, for completion and hover: the statement being written,
the phrase under the cursor, and the `use` lines of a file. Positions here are 0-based lines and
columns counted in characters (code points), as the compiler counts them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from sdxlc.lang import vocabulary as vocab

TOKEN = re.compile(r'[^\s,;#"=]+')
_PIECE = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#.*|[;,=]|[^\s,;#"=]+')
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_USE = re.compile(r'^\s*use\s+"((?:[^"\\\n]|\\.)*)"')
MAX_PHRASE = 3  # the longest vocabulary phrase has three words (`on bad image`)


def lines_of(text: str) -> list[str]:
    """The lines of a text as the compiler counts them (split at `\\n`, a `\\r` before it dropped)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


@dataclass(frozen=True)
class Writing:
    """The statement being written at the cursor: its complete words so far and the word being typed."""

    before: tuple[str, ...]
    typed: str


def writing_at(lines: list[str], line: int, column: int) -> Writing | None:
    """What is being written at a position; None inside a string or a comment."""
    if not 0 <= line < len(lines):
        return None
    prefix = lines[line][:column]
    pieces = _PIECE.findall(prefix)
    if pieces and (pieces[-1].startswith("#") or _open_string(pieces[-1])):
        return None
    typed = pieces.pop() if pieces and TOKEN.fullmatch(pieces[-1]) and prefix.endswith(pieces[-1]) else ""
    return Writing(tuple(_statement_words(lines, line, pieces)), typed)


def _open_string(piece: str) -> bool:
    return piece.startswith('"') and _STRING.fullmatch(piece) is None


def _statement_words(lines: list[str], line: int, pieces: list[str]) -> list[str]:
    """The words of the statement that the pieces (of `line`, before the cursor) end, strings left out;
    a line that follows one ending in `,` continues its statement."""
    if ";" in pieces:
        return _words(pieces[len(pieces) - pieces[::-1].index(";") :])
    if line > 0:
        previous = [p for p in _PIECE.findall(lines[line - 1]) if not p.startswith("#")]
        if previous and previous[-1] == ",":
            return _statement_words(lines, line - 1, previous) + _words(pieces)
    return _words(pieces)


def _words(pieces: list[str]) -> list[str]:
    return [piece for piece in pieces if TOKEN.fullmatch(piece)]


def tokens(line: str) -> list[tuple[int, int]]:
    """The (start, end) columns of every bare token of a line."""
    return [match.span() for match in TOKEN.finditer(line)]


def phrases_at(line: str, column: int) -> list[str]:
    """The phrases that could name the topic under the cursor, longest first: runs of up to three
    blank-separated tokens covering the token at `column` (`snr gamma`, `on bad image`), then the
    token itself."""
    spans = tokens(line)
    here = next((i for i, (start, end) in enumerate(spans) if start <= column <= end), None)
    if here is None:
        return []
    found: list[str] = []
    for size in range(MAX_PHRASE, 0, -1):
        for first in range(max(here - size + 1, 0), here + 1):
            run = spans[first : first + size]
            if len(run) == size and _blank_between(line, run):
                found.append(" ".join(line[start:end] for start, end in run))
    return list(dict.fromkeys(found))


def _blank_between(line: str, run: list[tuple[int, int]]) -> bool:
    return all(not line[a[1] : b[0]].strip() for a, b in zip(run, run[1:], strict=False))


def statement_keyword(words: tuple[str, ...]) -> str | None:
    """The statement keyword (a word or phrase) that a statement's words start with."""
    keywords = {e.words for e in vocab.VOCABULARY if e.context == vocab.STATEMENT}
    for size in range(min(len(words), MAX_PHRASE), 0, -1):
        phrase = " ".join(words[:size])
        if phrase in keywords:
            return phrase
    return None


def uses(text: str) -> Iterator[tuple[int, str]]:
    """The `use` lines of a recipe text: (0-based line, the file named, unescaped)."""
    for number, line in enumerate(lines_of(text)):
        match = _USE.match(line)
        if match is not None:
            yield number, re.sub(r"\\(.)", r"\1", match.group(1))


def use_line_towards(top: str, target: str, sources: dict[str, str]) -> int | None:
    """The line of the `use` in `top` through which `target` (another file read with it) is reached:
    `top` uses it directly, or uses a file that reaches it. File names are as the compiler wrote them
    (a `use` path joined to the folder of the file that says it)."""
    reached = {top}
    for number, name in uses(sources.get(top, "")):
        path = os.path.normpath(os.path.join(os.path.dirname(top), name))
        if path == target or _reaches(path, target, sources, reached):
            return number
    return None


def _reaches(file: str, target: str, sources: dict[str, str], seen: set[str]) -> bool:
    if file in seen:
        return False
    seen.add(file)
    for _, name in uses(sources.get(file, "")):
        path = os.path.normpath(os.path.join(os.path.dirname(file), name))
        if path == target or _reaches(path, target, sources, seen):
            return True
    return False
