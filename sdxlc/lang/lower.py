"""Lower recipe statements into the recipe document (schema/recipe.schema.json), with provenance.

Each statement is read against the vocabulary table (sdxlc/lang/vocabulary.py): its keyword, then its
clauses, each clause setting the schema path(s) its entry names. Values are read by the schema type
of their path and checked there, so an error points at the word that caused it. A bad statement or
clause is reported and skipped; the rest of the file is still lowered.

Layers, lowest first: `use`d files (in order; a `use` must come before every statement other than
`sdx`), the recipe itself, then `--set path=value`. Within one file a path may be set once; a higher
layer replaces a lower one's value, and a file with `data` statements replaces the lower layers'
whole `data` list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sdxlc.lang import ast, limits
from sdxlc.lang import vocabulary as vocab
from sdxlc.lang.ast import LowerError, join, missing, reject
from sdxlc.lang.diagnostics import Diagnostic, Span, make, shown
from sdxlc.lang.statement_cache import read_statements
from sdxlc.lang.vocabulary import check_path, coerce

Source = Literal["recipe", "use", "set"]
Related = Sequence[tuple[Span, str]]


@dataclass(frozen=True)
class Origin:
    """Which layer set a value, and where."""

    source: Source
    span: Span | None

    def at(self) -> str | None:
        return self.span.at() if self.span is not None else None


@dataclass
class Lowered:
    doc: dict[str, Any]
    provenance: dict[str, Origin]
    sources: dict[str, str]
    diagnostics: list[Diagnostic]
    top: str = ""  # the recipe file itself (the others are `use`d)
    sections: dict[str, Span] = field(default_factory=dict)  # where a statement opened each section


@dataclass
class _Layer:
    """The flat settings of one file with the files it uses folded underneath."""

    settings: dict[str, tuple[Any, Span | None]] = field(default_factory=dict)
    sections: dict[str, Span] = field(default_factory=dict)  # sections a statement opened, and where
    has_data: bool = False

    def under(self, upper: _Layer) -> _Layer:
        """This layer overridden by `upper`."""
        settings = dict(self.settings)
        if upper.has_data:
            settings = {k: v for k, v in settings.items() if not k.startswith("data.")}
        settings.update(upper.settings)
        return _Layer(settings, self.sections | upper.sections, self.has_data or upper.has_data)


class _FileLowering:
    """Lowers the statements of one file into flat settings."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.layer = _Layer()
        self.uses: list[tuple[str, Span]] = []
        self.diags: list[Diagnostic] = []
        self.data_items = 0
        self.started = False

    def statement(self, stmt: ast.Statement) -> None:
        items = list(stmt.items)
        head = items[0]
        if not isinstance(head, ast.Word):
            self._no_keyword(head)
            return
        found = vocab.lookup(ast.leading_words(items, 0), vocab.STATEMENT)
        if found is None:
            self.diags.append(vocab.unknown_word(head, vocab.STATEMENT, statement=True))
            return
        entry, size = found
        self._order(entry, head)
        context = vocab.clause_context(entry.words) if entry.context == vocab.STATEMENT else vocab.ANY
        index = self.data_items
        if entry.words == "data":
            self.data_items += 1
            self.layer.has_data = True
        pos = self._clause(entry, items, size, context, index)
        while pos < len(items):
            after = self._next_clause(items, pos, context, index)
            if after <= pos:  # a clause that took nothing: report the item and move past it
                self.diags.append(_unexpected(items[pos], context))
                after = pos + 1
            pos = after
        if entry.words == "data" and f"data.{index}.path" not in self.layer.settings:
            self._drop_dataset(index)

    def _drop_dataset(self, index: int) -> None:
        """A `data` statement whose folder was rejected is skipped whole: its other clauses would only
        describe a dataset that is not there, and the next `data` statement takes its index."""
        prefix = f"data.{index}."
        for key in [key for key in self.layer.settings if key.startswith(prefix)]:
            del self.layer.settings[key]
        self.data_items -= 1

    def _order(self, entry: vocab.Entry, head: ast.Word) -> None:
        if entry.arg == "file" and self.started:
            hint = "move it to the top of the file (only `sdx` may come before it)"
            self.report("SDX0304", "`use` must come before other statements", head.span, hint)
        if entry.words not in ("use", "sdx"):
            self.started = True

    def _no_keyword(self, head: ast.Item) -> None:
        if isinstance(head, ast.Assign):
            name = head.name.value
            hint = f"write `{name} {ast.source_text(head.value)}` without `=`"
            self.report("SDX0206", f"a statement cannot start with `{name}=`", head.span, hint)
        else:
            message = f"a statement must start with a keyword, not {ast.describe(head)}"
            self.report("SDX0206", message, head.span)

    def _next_clause(self, items: list[ast.Item], pos: int, context: str, index: int) -> int:
        item = items[pos]
        if isinstance(item, ast.Word):
            found = vocab.lookup(ast.leading_words(items, pos), context)
            if found is not None:
                return self._clause(found[0], items, pos + found[1], context, index)
        for entry in vocab.positional(context):
            if _fits_positional(entry, item):
                return self._clause(entry, items, pos, context, index)
        end = ast.skip_arguments(items, pos + 1)
        if isinstance(item, ast.Word) and vocab.is_statement_keyword(item.value):
            hint = f"put `;` or a new line before `{item.value}`"
            self.report("SDX0205", f"`{item.value}` starts a statement of its own", item.span, hint)
            return len(items)
        if isinstance(item, ast.Word):
            self.diags.append(vocab.unknown_word(item, context))
        else:
            self.diags.append(_unexpected(item, context))
        return end

    def _clause(self, entry: vocab.Entry, items: list[ast.Item], start: int, context: str, index: int) -> int:
        """Apply the clause whose words end before `start`; return the position after its arguments."""
        end = start + _arity(entry, items, start, context)
        words_begin = start - len(entry.words.split()) if entry.words else start
        span = join(items[words_begin].span, items[max(end - 1, words_begin)].span)
        paths = [p.replace("*", str(index)) for p in entry.paths]
        try:
            _APPLY[entry.arg](self, _Clause(entry, paths, items[start:end], span))
        except LowerError as error:
            self.diags.append(error.diagnostic)
        return end

    def put(self, path: str, value: Any, span: Span) -> None:
        """Record one setting; a second, different value for the same path is an error."""
        previous = self.layer.settings.get(path)
        if previous is None:
            self.layer.settings[path] = (value, span)
            return
        old, old_span = previous
        related = [(old_span, "first set here")] if old_span is not None else []
        if old == value and path in SHARED_SWITCHES:
            return
        if old == value:
            self.report("SDX0302", f"`{path}` is set twice", span, "remove one of them", related)
        else:
            message = f"`{path}` is set to `{old}` and to `{value}`"
            self.report("SDX0301", message, span, "keep one of them", related)

    def report(
        self, code: str, message: str, span: Span, hint: str | None = None, related: Related = ()
    ) -> None:
        self.diags.append(make(code, message, span, hint, related))


# settings that several statements' clauses each switch on for what they name: `cache latents to disk` and
# `cache te to disk` both say `to disk`, and saying it for each cache is no repetition
SHARED_SWITCHES = frozenset({"cache.to_disk"})


# --- clause kinds --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clause:
    entry: vocab.Entry
    paths: list[str]
    args: list[ast.Item]
    span: Span

    def arg(self, what: str | None = None) -> ast.Item:
        """The first argument; a missing one is an error."""
        if self.args:
            return self.args[0]
        node = vocab.schema_node(self.paths[0]) if self.paths else None
        expected = what or (f"a value: {vocab.type_text(node)}" if node is not None else "a value")
        missing(self.entry.words or self.entry.path, self.span, expected)


def _apply_value(low: _FileLowering, c: _Clause) -> None:
    low.put(c.paths[0], coerce(c.arg(), c.paths[0]), c.span)


def _apply_flag(low: _FileLowering, c: _Clause) -> None:
    low.put(c.paths[0], c.entry.const, c.span)


def _apply_section(low: _FileLowering, c: _Clause) -> None:
    low.layer.sections.setdefault(c.paths[0], c.span)
    for path, value in c.entry.const or ():  # what the statement implies: `loha` sets `lora.adapter`
        low.put(path, value, c.span)


def _apply_range(low: _FileLowering, c: _Clause) -> None:
    item = c.arg("a range like `512..2048`")
    if not isinstance(item, ast.Range):
        reject(item, "a range like `512..2048`")
    for path, bound in zip(c.paths, (item.low, item.high), strict=True):
        low.put(path, coerce(ast.Number(bound, str(bound), item.span), path), c.span)


def _apply_cadence(low: _FileLowering, c: _Clause) -> None:
    low.put(c.paths[0], coerce(c.arg("a count like `500 steps`"), c.paths[0]), c.span)
    if len(c.args) > 1 and isinstance(c.args[1], ast.Word):
        low.put(c.paths[1], vocab.UNITS[c.args[1].value], c.span)


def _apply_warmup(low: _FileLowering, c: _Clause, what: str = "a step count or a percentage") -> None:
    item = c.arg(what)
    if isinstance(item, ast.Percent):
        low.put(c.paths[1], coerce(ast.Number(item.value, item.text, item.span), c.paths[1]), c.span)
    else:
        low.put(c.paths[0], coerce(item, c.paths[0]), c.span)


def _apply_strings(low: _FileLowering, c: _Clause) -> None:
    item_node = (vocab.schema_node(c.paths[0]) or {}).get("items", {})
    strings = [item for item in c.args if isinstance(item, ast.String)]
    for item in strings:
        if (problem := limits.string_problem(c.paths[0], item.value, item_node)) is not None:
            raise LowerError(make(problem.code, problem.message, item.span, problem.help))
    low.put(c.paths[0], [item.value for item in strings], c.span)


def _apply_args(low: _FileLowering, c: _Clause) -> None:
    c.arg("`name=value` pairs")
    for item in c.args:
        try:
            assert isinstance(item, ast.Assign)
            path = f"{c.paths[0]}.{item.name.value}"
            low.put(path, coerce(item.value, path), item.span)
        except LowerError as error:
            low.diags.append(error.diagnostic)


def _apply_use(low: _FileLowering, c: _Clause) -> None:
    item = c.arg("a recipe file in quotes")
    if not isinstance(item, ast.String | ast.Word):
        reject(item, "a recipe file in quotes")
    if (problem := limits.string_problem("use", item.value, {})) is not None:
        raise LowerError(make(problem.code, problem.message, item.span, problem.help))
    if not low.started:
        low.uses.append((item.value, c.span))


def _apply_set(low: _FileLowering, c: _Clause) -> None:
    target = c.arg("a recipe path and a value")
    if not isinstance(target, ast.Word):
        reject(target, "a recipe path like `optimizer.lr`")
    path = check_path(target.value, target.span)
    if len(c.args) > 2:
        reject(c.args[2], "one value")
    if len(c.args) < 2:
        missing(f"set {path}", c.span)
    low.put(path, coerce(c.args[1], path), c.span)


def _apply_unsupported(low: _FileLowering, c: _Clause) -> None:
    words = c.entry.words if c.entry.context == vocab.STATEMENT else f"{c.entry.context} {c.entry.words}"
    message = f"`{words}` is not supported by this version of the recipe schema"
    low.report("SDX0208", message, c.span, f"{c.entry.doc} It is ignored.")


_APPLY: dict[str, Callable[[_FileLowering, _Clause], None]] = {
    "value": _apply_value,
    "flag": _apply_flag,
    "section": _apply_section,
    "range": _apply_range,
    "cadence": _apply_cadence,
    "steps_or_percent": _apply_warmup,
    "count_or_percent": lambda low, c: _apply_warmup(low, c, "an image count or a percentage"),
    "strings": _apply_strings,
    "args": _apply_args,
    "file": _apply_use,
    "setting": _apply_set,
    "unsupported": _apply_unsupported,
}


# --- reading a statement -------------------------------------------------------------------------


def _is_clause_word(item: ast.Item, context: str) -> bool:
    if not isinstance(item, ast.Word):
        return False
    return vocab.lookup([item.value], context) is not None or vocab.is_statement_keyword(item.value)


def _arity(entry: vocab.Entry, items: list[ast.Item], start: int, context: str) -> int:
    """How many items after the clause words are its arguments."""
    rest = items[start:]
    if entry.arg in ("flag", "section"):
        return 0
    if entry.arg == "setting" or (entry.arg == "unsupported" and entry.context == vocab.STATEMENT):
        return len(rest)
    if entry.arg in ("strings", "args"):
        kind = ast.String if entry.arg == "strings" else ast.Assign
        count = 0
        while count < len(rest) and isinstance(rest[count], kind):
            count += 1
        return count
    if entry.arg == "unsupported":
        return ast.skip_arguments(items, start) - start
    if not rest or _is_clause_word(rest[0], context):
        return 0
    unit = rest[1] if entry.arg == "cadence" and len(rest) > 1 else None
    return 2 if isinstance(unit, ast.Word) and unit.value in vocab.UNITS else 1


def _fits_positional(entry: vocab.Entry, item: ast.Item) -> bool:
    if entry.arg == "range":
        return isinstance(item, ast.Range)
    if entry.arg == "strings":
        return isinstance(item, ast.String)
    return isinstance(item, ast.Word | ast.String)


def _unexpected(item: ast.Item, context: str) -> Diagnostic:
    if isinstance(item, ast.Bad):
        return make("SDX0202", item.message(), item.span, ast.NUMBER_HELP)
    hint = f"`{context}` takes no value here" if context != vocab.ANY else None
    return make("SDX0203", f"unexpected {ast.describe(item)}", item.span, hint)


# --- files, layers and the document --------------------------------------------------------------


class _Loader:
    def __init__(self, unsaved: Mapping[Path, str]) -> None:
        self.unsaved = unsaved  # an editor's unsaved texts, by resolved path: read instead of the files
        self.sources: dict[str, str] = {}
        self.diags: list[Diagnostic] = []
        self.done: dict[Path, _Layer] = {}
        self.room = limits.MAX_TOTAL_BYTES  # bytes the files still to read may take together

    def load(self, file: str, stack: tuple[tuple[Path, str], ...], at: Span | None) -> _Layer:
        chain = " → ".join([name for _, name in stack] + [file])
        if len(stack) >= limits.MAX_USE_DEPTH:
            hint = f"a `use` chain is at most {limits.MAX_USE_DEPTH} files long: use deeper files directly"
            self.diags.append(make("SDX0308", f"`use` chain too deep: {chain}", at, hint))
            return _Layer()
        real = _real(file)
        if real in (seen for seen, _ in stack):
            self.diags.append(make("SDX0303", f"`use` cycle: {chain}", at, "remove one of these `use` lines"))
            return _Layer()
        if real in self.done:
            return self.done[real]
        text = self._read(file, at)
        if text is None:
            return _Layer()
        self.sources[file] = text
        statements, syntax = read_statements(text, file, keep=real not in self.unsaved)
        self.diags.extend(syntax)
        lowering = _FileLowering(file)
        errors = len(syntax)
        for stmt in statements:
            if errors >= limits.MAX_FILE_ERRORS:
                message = f"more than {limits.MAX_FILE_ERRORS} errors: the rest of `{file}` is not checked"
                lowering.report("SDX0310", message, stmt.span, "fix the errors above first")
                break
            before = len(lowering.diags)
            lowering.statement(stmt)
            errors += sum(d.severity == "error" for d in lowering.diags[before:])
        self.diags.extend(lowering.diags)
        layer = _Layer()
        for target, span in lowering.uses:
            path = os.path.normpath(os.path.join(os.path.dirname(file), target))
            layer = layer.under(self.load(path, (*stack, (real, file)), span))
        self.done[real] = layer = layer.under(lowering.layer)
        return layer

    def _read(self, file: str, at: Span | None) -> str | None:
        """The text of a recipe file, or None after reporting why it cannot be read (at the `use` line,
        or at the top of the recipe itself)."""
        where = at or Span(file, 1, 1, 1, 1)
        try:
            real = _real(file)
            text = (limits.read_unsaved(Path(file), self.unsaved[real]) if real in self.unsaved
                    else limits.read_recipe(Path(file)))
            if len(text.encode("utf-8")) > self.room:
                raise limits.RecipeFileError(
                    "SDX0307", f"`{file}` takes the recipe past {limits.MAX_TOTAL_BYTES // 1024} KiB with "
                    "the files it uses", "recipes are read whole and kept small: trim the used files")
        except limits.RecipeFileError as error:
            if error.at is not None:  # a bad byte: point at it, and at the `use` line that read the file
                line, column = error.at
                related = [(at, "used here")] if at is not None else []
                where = Span(file, line, column, line, column + 1)
                self.diags.append(make(error.code, error.message, where, error.help, related))
            else:
                self.diags.append(make(error.code, error.message, where, error.help))
            return None
        self.room -= len(text.encode("utf-8"))
        return text


def _real(file: str) -> Path:
    """The file's path with links resolved, to recognise a file reached twice (the path as written when
    it cannot be resolved: reading it then reports why)."""
    try:
        return Path(file).resolve()
    except (OSError, ValueError, RuntimeError):
        return Path(os.path.abspath(file))


SET_FILE = "--set"  # where `--set` values are written: line N is the N-th `--set`


def load_recipe(path: Path, sets: Sequence[str] = (), unsaved: Mapping[Path, str] | None = None) -> Lowered:
    """Read, parse and lower a recipe with the files it uses and `--set` strings; never raises. A file
    whose resolved path is in `unsaved` is read from there (an editor's buffer) instead of the disk."""
    loader = _Loader(unsaved or {})
    top = str(path)
    layer = loader.load(top, (), None)
    provenance = {
        key: Origin("recipe" if span is not None and span.file == top else "use", span)
        for key, (_, span) in layer.settings.items()
    }
    values = {key: value for key, (value, _) in layer.settings.items()}
    for line, text in enumerate(sets, start=1):
        try:
            key, value, span = _parse_set(text, line)
        except LowerError as error:
            loader.diags.append(error.diagnostic)
            continue
        values[key] = value
        provenance[key] = Origin("set", span)
    if sets:  # shown under `--set` diagnostics; one line per option
        loader.sources[SET_FILE] = "\n".join(text.replace("\n", "\u2424") for text in sets)
    loader.diags.extend(_missing_datasets(values, provenance))
    doc = vocab.nest(values, set(layer.sections))
    return Lowered(doc, provenance, loader.sources, loader.diags, top, layer.sections)


def _missing_datasets(values: dict[str, Any], provenance: dict[str, Origin]) -> list[Diagnostic]:
    """Settings of a dataset the recipe does not have (`set data.3.repeat 2` with one `data` line, or a
    `data.N.path` that would leave a gap): reported at the setting, and removed."""
    def index(key: str) -> str | None:
        parts = key.split(".")
        return parts[1] if parts[0] == "data" and len(parts) > 2 else None

    named = {index(key) for key in values if key.endswith(".path")}
    count = 0
    while str(count) in named:
        count += 1
    found = []
    for key in [key for key in values if index(key) is not None]:
        number = index(key)
        if number is None or (len(number) < 7 and int(number) < count):
            continue
        del values[key]
        span = provenance.pop(key).span
        have = "the recipe has none" if not count else "the recipe has 1 (`data.0`)" if count == 1 else (
            f"the recipe has {count} (`data.0` … `data.{count - 1}`)")
        hint = (f"a new dataset takes the next index, `data.{count}`" if number in named
                else "add a `data` statement for it, or set its `path` first")
        found.append(make("SDX0309", f"`{key}`: there is no dataset {shown(number, 12)}; {have}", span, hint))
    return found


def _parse_set(text: str, line: int) -> tuple[str, Any, Span]:
    """The path, value and place of one `--set path=value` (the `line`-th)."""
    whole = Span(SET_FILE, line, 1, line, len(text) + 1)
    raw_path, sep, rest = text.partition("=")
    path, value_text = raw_path.strip(), rest.strip()
    if not sep or not path:
        hint = "write it like `--set optimizer.lr=1e-4`"
        raise LowerError(make("SDX0306", f"`--set {text}` is not `path=value`", whole, hint))
    column = len(raw_path) - len(raw_path.lstrip()) + 1
    path = check_path(path, Span(SET_FILE, line, column, line, column + len(path)))
    column = len(raw_path) + 2 + len(rest) - len(rest.lstrip())
    place = Span(SET_FILE, line, column, line, column + max(len(value_text), 1))
    from sdxlc.lang.parser import parse_value  # the parser loads only for `--set`

    items = parse_value("\n" * (line - 1) + " " * (column - 1) + value_text, SET_FILE)
    node = vocab.schema_node(path) or {}
    texty = "string" in (node.get("type"), node.get("items", {}).get("type"))
    if texty and not (len(items) == 1 and isinstance(items[0], ast.String | ast.Word)):
        items = (ast.String(value_text, place),)
    if len(items) != 1:
        hint = "quote text with spaces or commas: --set 'sample.prompts=\"a cat\"'"
        raise LowerError(make("SDX0306", f"cannot read the value of `--set {text}`", place, hint))
    return path, coerce(items[0], path), whole
