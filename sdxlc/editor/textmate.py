"""The TextMate grammar of `.sdx` recipes (scope `source.sdx`), generated so that it never goes stale.

The words come from the vocabulary table (sdxlc/lang/vocabulary.py) through `sdxlc.editor.words`, the
lexical shapes (numbers, percentages, sizes, ranges, repeats, strings, comments) from the terminals of
sdxlc/lang/grammar/sdx.lark. A statement keyword starts a line or follows `;`; inside the statement
only its own clauses and those of any statement are marked as clauses. A bare token that is none of the
shapes is marked invalid, as the compiler reports it (SDX0202).

    python -m sdxlc.editor.textmate            # print the grammar
    python -m sdxlc.editor.textmate PATH       # write it (atomically)
    python -m sdxlc.editor.textmate --check PATH   # exit 1 when PATH is not what would be written

The committed copy is docs/editors/vscode/syntaxes/sdx.tmLanguage.json; a test keeps it in step.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sdxlc.editor import words
from sdxlc.lang.parser import parser
from sdxlc.plan.files import write_atomic

SCOPE = "source.sdx"
COMMITTED = Path("docs/editors/vscode/syntaxes/sdx.tmLanguage.json")  # relative to the repository
TOKEN_CHAR = r'[^\s,;#"=]'  # what a bare token is made of (sdx.lark)
BEFORE = rf"(?<!{TOKEN_CHAR})"  # a token starts here
AFTER = rf"(?!{TOKEN_CHAR})"  # and ends here
LINE_START = r"(?:^|(?<=;))\s*"


def terminal(name: str) -> str:
    """The regular expression of a terminal of sdx.lark."""
    found = {t.name: t.pattern.value for t in parser().terminals}
    return str(found[name])


def alternation(phrases: Iterable[str]) -> str:
    """A regex group matching any phrase (words separated by any blanks), longest first."""
    unique = sorted(set(phrases), key=lambda p: (-len(p), p))
    return "(?:" + "|".join(r"\s+".join(re.escape(w) for w in p.split()) for p in unique) + ")"


def _words_rule(phrases: Sequence[str], scope: str) -> dict[str, Any]:
    return {"match": BEFORE + alternation(phrases) + AFTER, "name": f"{scope}.sdx"}


def lexical() -> dict[str, Any]:
    """The repository entries of the lexical shapes, shared by every statement."""
    word = terminal("WORD")
    values = alternation(words.values())
    starts = word[: word.index("]") + 1]  # what a word starts with: any other token not a number is malformed
    return {
        "comment": {
            "match": "(#).*$",
            "name": "comment.line.number-sign.sdx",
            "captures": {"1": {"name": "punctuation.definition.comment.sdx"}},
        },
        "string": {
            "begin": '"',
            "end": '"|$',
            "name": "string.quoted.double.sdx",
            "patterns": [{"match": r"\\.", "name": "constant.character.escape.sdx"}],
        },
        "numbers": {
            "patterns": [
                {"match": BEFORE + terminal("RANGE"), "name": "constant.numeric.range.sdx"},
                {"match": BEFORE + terminal("SIZE"), "name": "constant.numeric.size.sdx"},
                {"match": BEFORE + terminal("PERCENT"), "name": "constant.numeric.percent.sdx"},
                {"match": BEFORE + terminal("NUMBER"), "name": "constant.numeric.sdx"},
                {"match": BEFORE + terminal("REPEAT"), "name": "keyword.operator.repeat.sdx"},
            ]
        },
        "values": {  # `unet+te1+te2` is a list of values
            "match": f"{BEFORE}{values}(?:\\+{values})*{AFTER}",
            "name": "support.constant.value.sdx",
        },
        "pair": {
            "match": f"{BEFORE}({word})(=)",
            "captures": {
                "1": {"name": "variable.parameter.sdx"},
                "2": {"name": "keyword.operator.assignment.sdx"},
            },
        },
        "word": {"match": BEFORE + word},
        "malformed": {
            "match": f"{BEFORE}(?!{starts}){terminal('BAD')}",
            "name": "invalid.illegal.malformed.sdx",
        },
        "separator": {"match": ",", "name": "punctuation.separator.sdx"},
    }


SHAPES = ("string", "pair", "numbers", "values", "word", "malformed", "separator")


def _statement_rule(keywords: Sequence[str], context: str | None) -> dict[str, Any]:
    """A statement: its keyword, then until `;`, `#` or the end of the line its clauses and values."""
    clauses = words.clauses(context or "any")
    flags = [w.words for w in clauses if w.kind == "flag"]
    other = [w.words for w in clauses if w.kind == "clause"]
    inner = [_words_rule(other, "keyword.other.clause")] if other else []
    inner += [_words_rule(flags, "constant.language.flag")] if flags else []
    return {
        "begin": LINE_START + "(" + alternation(keywords) + ")" + AFTER,
        "beginCaptures": {"1": {"name": "keyword.control.statement.sdx"}},
        "end": "(?=[;#])|$",
        "patterns": inner + [{"include": f"#{name}"} for name in SHAPES],
    }


def grammar() -> dict[str, Any]:
    """The grammar as a JSON-ready dict."""
    keywords = [w.words for w in words.statements()]
    own = words.contexts()
    repository = lexical()
    order = []
    for context in own:
        repository[f"statement-{context}"] = _statement_rule([context], context)
        order.append(f"statement-{context}")
    repository["statement-use"] = _statement_rule(["use"], None)
    repository["statement-use"]["beginCaptures"]["1"]["name"] = "keyword.control.import.sdx"
    repository["statement"] = _statement_rule([k for k in keywords if k not in own and k != "use"], None)
    order += ["statement-use", "statement"]
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "comment": "Generated by `python -m sdxlc.editor.textmate` from sdxlc/lang/vocabulary.py and "
        "sdxlc/lang/grammar/sdx.lark; do not edit by hand.",
        "name": "sdx",
        "scopeName": SCOPE,
        "fileTypes": ["sdx"],
        "patterns": [
            {"include": "#comment"},
            {"match": ";", "name": "punctuation.terminator.statement.sdx"},
            *({"include": f"#{name}"} for name in order),
            *({"include": f"#{name}"} for name in SHAPES),
        ],
        "repository": repository,
    }


def render() -> str:
    """The grammar file's text."""
    return json.dumps(grammar(), indent=2, ensure_ascii=False) + "\n"


USAGE = "usage: python -m sdxlc.editor.textmate [--check] [PATH]"


def main(argv: Sequence[str]) -> int:
    """Print the grammar, write it to PATH, or with --check say whether PATH is up to date."""
    args = list(argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    if len(paths) > 1 or any(a.startswith("-") for a in paths) or (check and not paths):
        print(USAGE, file=sys.stderr)
        return 2
    text = render()
    if not paths:
        sys.stdout.write(text)
        return 0
    path = Path(paths[0])
    if check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            print(f"{path} is out of date: run python -m sdxlc.editor.textmate {path}", file=sys.stderr)
            return 1
        return 0
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
