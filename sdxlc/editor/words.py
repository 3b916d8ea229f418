"""The words an editor knows, read from the compiler's tables: statement keywords, the clauses of each
statement, flags, and the values the recipe schema allows (optimizers, schedules, dtypes, units, …) with
the hardware profile names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from sdxlc.lang import vocabulary as vocab
from sdxlc.resolve.profiles import list_profiles


@dataclass(frozen=True)
class Word:
    """A word or phrase of the language, where it belongs and what it does."""

    words: str
    kind: str  # "statement", "clause", "flag" or "value"
    context: str  # the statement it belongs to, `any`, or (for a statement or value) ""
    doc: str


def statements() -> list[Word]:
    """Every statement keyword, in vocabulary order."""
    return [Word(e.words, "statement", "", e.doc) for e in vocab.VOCABULARY if e.context == vocab.STATEMENT]


def clauses(context: str) -> list[Word]:
    """The clauses of a statement (its own first, then those of any statement); flags are clauses
    without an argument."""
    context = vocab.clause_context(context)  # `loha` and `lokr` take the clauses of `lora`
    own = [e for e in vocab.VOCABULARY if e.words and e.context == context != vocab.ANY]
    shared = [e for e in vocab.VOCABULARY if e.words and e.context == vocab.ANY]
    return [Word(e.words, "flag" if e.arg == "flag" else "clause", e.context, e.doc) for e in own + shared]


def contexts() -> list[str]:
    """The statements that have clauses of their own, in vocabulary order."""
    keywords = {e.words for e in vocab.VOCABULARY if e.context == vocab.STATEMENT}
    found = (e.context for e in vocab.VOCABULARY if e.words and e.context in keywords)
    return list(dict.fromkeys(found))


@cache
def enum_values() -> dict[str, tuple[str, ...]]:
    """The allowed text values of every recipe-schema path that has a fixed set of them."""
    out: dict[str, tuple[str, ...]] = {}
    for path in vocab.leaf_paths():
        node = vocab.schema_node(path.replace("*", "0")) or {}
        choices = node.get("enum") or node.get("items", {}).get("enum") or []
        texts = tuple(choice for choice in choices if isinstance(choice, str))
        if texts:
            out[path] = texts
    return out


def values_for(entry: vocab.Entry) -> list[str]:
    """The values an entry's argument may take, where the schema or the tables fix them."""
    if entry.arg == "cadence":
        return list(vocab.UNITS)
    found: list[str] = []
    for path in entry.paths:
        found += enum_values().get(path, ())
    if entry.paths == ("profile",):
        found += ["auto", *list_profiles()]
    if entry.paths == ("model.source",):
        found.append("tiny")
    return list(dict.fromkeys(found))


def values() -> list[str]:
    """Every fixed value of the language: the schema's allowed values, units, profile names."""
    found = [value for choices in enum_values().values() for value in choices]
    found += list(vocab.UNITS) + ["auto", "tiny", "true", "false"] + list_profiles()
    return list(dict.fromkeys(found))
