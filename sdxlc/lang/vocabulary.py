"""The words of the recipe language: lookups over the table in `sdxlc/lang/words.py`, the recipe
schema walked by path, and how a clause's argument is read.

`sdxlc/lang/lower.py` reads this to lower statements, `sdxlc explain` and the language reference
(docs/LANGUAGE.md, see `reference_markdown`) read it to describe words.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

from sdxlc.lang import ast, limits
from sdxlc.lang.ast import LowerError
from sdxlc.lang.diagnostics import Diagnostic, Span, did_you_mean, make, suggestion
from sdxlc.lang.words import ANY, ARG_KINDS, STATEMENT, UNITS, VOCABULARY, Entry
from sdxlc.plan.quick_valid import Check, surely_valid
from sdxlc.plan.schemas import load_schema, validator

__all__ = ["ANY", "ARG_KINDS", "STATEMENT", "UNITS", "VOCABULARY", "Entry"]


@cache
def _index() -> dict[tuple[str, str], Entry]:
    return {(entry.context, entry.words): entry for entry in VOCABULARY if entry.words}


def lookup(words: Sequence[str], context: str) -> tuple[Entry, int] | None:
    """The longest entry matching the leading `words` in `context` (or among `any` clauses), and its
    length in words. Entries of the context win over `any` clauses of the same length."""
    index = _index()
    for size in range(min(len(words), 3), 0, -1):
        phrase = " ".join(words[:size])
        for ctx in (context, ANY):
            entry = index.get((ctx, phrase))
            if entry is not None:
                return entry, size
    return None


def positional(context: str) -> list[Entry]:
    """The positional entries of a context (entries without words)."""
    return [entry for entry in VOCABULARY if entry.context == context and not entry.words]


def words_in(context: str) -> list[str]:
    """Every word or phrase usable in a context: its clauses and the `any` clauses."""
    return [entry.words for entry in VOCABULARY if entry.words and entry.context in (context, ANY)]


def is_statement_keyword(word: str) -> bool:
    """Whether a word starts a statement (and so cannot be a clause)."""
    return any(entry.context == STATEMENT and entry.words.split()[0] == word for entry in VOCABULARY)


def clause_context(keyword: str) -> str:
    """The context of a statement's clauses: a section statement's section (`loha` takes the clauses of
    `lora`), else the keyword itself."""
    entry = _index().get((STATEMENT, keyword))
    return entry.paths[0] if entry is not None and entry.arg == "section" else keyword


# --- the recipe schema, walked by dotted path ---------------------------------------------------


def schema_node(path: str) -> dict[str, Any] | None:
    """The schema of a dotted recipe path; `*` or a number selects an item of an array of objects,
    any name selects a free-form key (`optimizer.args.weight_decay`)."""
    node: dict[str, Any] = load_schema("recipe")
    for part in path.split("."):
        if node.get("type") == "array" and node.get("items", {}).get("type") == "object":
            if not (part == "*" or is_index(part)):
                return None
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict) and part:
            node = node["additionalProperties"]
        else:
            return None
    return node


def leaf_paths() -> list[str]:
    """Every settable path of the recipe schema (`data.*.repeat`, `optimizer.args.*`)."""
    return list(_leaves(load_schema("recipe"), ""))


def _leaves(node: dict[str, Any], prefix: str) -> Iterator[str]:
    if node.get("type") == "array" and node.get("items", {}).get("type") == "object":
        yield from _leaves(node["items"], prefix + ".*")
    elif "properties" in node:
        for name, child in node["properties"].items():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    elif isinstance(node.get("additionalProperties"), dict):
        yield prefix + ".*"
    else:
        yield prefix


def nest(values: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """The document of flat dotted-path values, its top-level keys in schema order."""
    doc: dict[str, Any] = {name: {} for name in sections}
    for path, value in values.items():
        _put(doc, path.split("."), list(value) if isinstance(value, list) else value)
    order = list(load_schema("recipe")["properties"])
    return {key: doc[key] for key in sorted(doc, key=order.index)}


def _put(node: Any, parts: list[str], value: Any) -> None:
    """Put a value at its path; only `data` holds a list (whose indices lowering has checked): any
    other all-digit part is a key (`optimizer.args.9`)."""
    for depth, part in enumerate(parts[:-1]):
        empty: Any = [] if depth == 0 and part == "data" else {}
        if isinstance(node, list):
            index = int(part)
            node.extend({} for _ in range(index + 1 - len(node)))
            node = node[index]
        else:
            node = node.setdefault(part, empty)
    if isinstance(node, list):
        node.extend({} for _ in range(int(parts[-1]) + 1 - len(node)))
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def type_text(node: dict[str, Any]) -> str:
    """A short description of what a schema field accepts, for the reference."""
    if "enum" in node:
        return "one of " + ", ".join(f"`{value}`" for value in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        item = type_text(node.get("items", {}))
        fixed = "minItems" in node and node.get("minItems") == node.get("maxItems")
        count = f"{node['minItems']} × " if fixed else ""
        return f"list of {count}{item}"
    if isinstance(kind, list):
        return " or ".join(kind)
    marks = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
    bounds = [f"{mark} {node[key]}" for key, mark in marks if key in node]
    bounds += [f"a multiple of {node['multipleOf']}"] if "multipleOf" in node else []
    usual = node.get("x-usual", {})
    range_ = " to ".join(str(usual[key]) for key in ("minimum", "maximum") if key in usual)
    note = f"; usually {'≤ ' if 'minimum' not in usual else ''}{range_}" if usual else ""
    return f"{kind} ({', '.join(bounds)}{note})" if bounds else str(kind)


# --- reading values by the schema type of their path -----------------------------------------


def coerce(item: ast.Item, path: str) -> Any:
    """The value of `item` for a schema path, read by the path's type and checked against the schema."""
    node = schema_node(path)
    assert node is not None, path
    spans: list[Span] = []
    value = ast.read_value(item, node, spans)
    _check(value, node, path, item.span, spans)
    return value


BLOCK_LR_HELP = (
    "give 23 values (`x9` repeats one): 0 time/label embed, 1-9 input blocks 0-8, 10-12 mid 0-2, "
    "13-21 output blocks 0-8, 22 out"
)
_RANGE_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


@cache
def _validator(path: str) -> Any:
    """The validator of a path's schema (`coerce`'s node), built once per path."""
    return validator(schema_node(path) or {})


@cache
def _surely_valid(path: str) -> Check:
    return surely_valid(schema_node(path) or {})


def _check(value: Any, node: dict[str, Any], path: str, span: Span, spans: list[Span]) -> None:
    limits.check_strings(value, node, path, span, spans)
    if _surely_valid(path)(value):
        return
    errors = sorted(_validator(path).iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return
    error = errors[0]
    where = spans[error.path[0]] if error.path and isinstance(error.path[0], int) else span
    if error.validator in _RANGE_KEYWORDS:
        message = limits.beyond(path, error.instance, error.validator, error.validator_value)
        keys = ("x-why-min", "x-why") if error.validator in ("minimum", "exclusiveMinimum") else ("x-why",)
        why = next((source[key] for key in keys for source in (error.schema, node) if source.get(key)), None)
        raise LowerError(make("SDX0404", message, where, why))
    if error.validator == "enum":
        choices = [str(choice) for choice in error.validator_value]
        noun = path.rsplit(".", 1)[0] if path.endswith(".name") else f"`{path}` value"
        hint = suggestion(str(error.instance), choices) or "use one of: " + ", ".join(choices)
        raise LowerError(make("SDX0403", f"unknown {noun} `{error.instance}`", where, hint))
    if path == "block_lr" and error.validator in ("minItems", "maxItems"):
        message = f"`block_lr` has {len(value)} values; it needs 23"
        raise LowerError(make("SDX0207", message, span, BLOCK_LR_HELP))
    if error.validator == "multipleOf":
        message, hint = limits.not_a_multiple(path, error.instance, error.validator_value)
        raise LowerError(make("SDX0405", message, where, hint))
    raise LowerError(make("SDX0405", f"`{path}`: {error.message}", where))


def unknown_word(word: ast.Word, context: str, statement: bool = False) -> Diagnostic:
    """An unknown word, with the closest word of its context (or a clause of another statement)."""
    hint = suggestion(word.value, words_in(context))
    if hint is None and statement:
        clauses = {f"{e.context} {e.words}": e.words for e in VOCABULARY if e.words and e.context != ANY}
        owner = next((phrase for phrase, words in clauses.items() if words == word.value), None)
        close = did_you_mean(word.value, clauses.values())
        owner = owner or next((phrase for phrase, words in clauses.items() if words == close), None)
        hint = f"did you mean `{owner} …`?" if owner else None
    if hint is None and not statement:
        hint = f"`{context}` understands: " + ", ".join(f"`{w}`" for w in words_in(context)[:12])
    where = "statement" if statement else "word"
    return make("SDX0201", f"unknown {where} `{word.value}`", word.span, hint)


def is_index(part: str) -> bool:
    """Whether a part of a dotted path is a list index (ASCII digits: `²` is no index)."""
    return part.isascii() and part.isdigit()


def check_path(path: str, span: Span | None) -> str:
    """A `set` path, checked against the recipe schema; a list index comes back without leading zeros."""
    parts = path.split(".")
    if len(parts) > 1 and parts[0] == "data" and is_index(parts[1]):  # `data.01.repeat` is `data.1.repeat`
        path = ".".join([parts[0], parts[1].lstrip("0") or "0", *parts[2:]])
    node = schema_node(path) if "*" not in path else None
    if node is None:
        index = next((part for part in path.split(".") if is_index(part)), "0")[:6]
        choices = [leaf.replace("*", index) for leaf in leaf_paths()]
        raise LowerError(make("SDX0402", f"unknown recipe path `{path}`", span, suggestion(path, choices)))
    if "properties" in node or node.get("items", {}).get("type") == "object":
        raise LowerError(make("SDX0406", f"`{path}` is a section: set its fields one by one", span))
    return path


# --- the reference ----------------------------------------------------------------------------


def _argument(entry: Entry) -> str:
    if entry.arg == "flag":
        const = str(entry.const).lower() if isinstance(entry.const, bool) else entry.const
        return f"sets `{const}`"
    if entry.arg == "value":
        node = schema_node(entry.paths[0].replace("*", "0"))
        return type_text(node) if node is not None else "value"
    return ARG_KINDS[entry.arg]


def reference_markdown() -> str:
    """The word tables of docs/LANGUAGE.md, generated from VOCABULARY."""
    contexts = list(dict.fromkeys(entry.context for entry in VOCABULARY))
    out: list[str] = []
    for context in contexts:
        title = {STATEMENT: "Statements", ANY: "Clauses for any statement"}.get(
            context, f"Clauses of `{context}`"
        )
        out += [f"### {title}", "", "| words | sets | argument | meaning |", "|---|---|---|---|"]
        for entry in (e for e in VOCABULARY if e.context == context):
            words = f"`{entry.words}`" if entry.words else "*(positional)*"
            paths = ", ".join(f"`{path}`" for path in entry.paths) or "—"
            out.append(f"| {words} | {paths} | {_argument(entry)} | {entry.doc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
