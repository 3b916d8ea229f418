"""The statements of a recipe text, kept on disk so a text read before is lowered without the parser.

Loading lark and building its lexer costs more than everything else a plan does with a small recipe,
and recipes are read far more often than they change. An entry is keyed by the sha256 of the text,
the name it is reported under, and the sources of what reads it (the grammar, sdxlc/lang/parser.py,
ast.py, diagnostics.py and this module) with lark's own `__init__.py` (its version); the file holds
that key, the sha256 of its payload and the payload, the statements as JSON, and is used only when
all three agree and the statements decode. Only texts without syntax errors are kept, and only when
the statements read back equal to the parsed ones. Entries share the parser's cache folder
(`$XDG_CACHE_HOME/sdxlc`, else `~/.cache/sdxlc`), written atomically; at most `MAX_ENTRIES` are kept
(the oldest go first). `SDXLC_NO_PARSER_CACHE=1` turns them off too; a folder that cannot be written,
or a missing, damaged or stale entry, only means the text is parsed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from sdxlc.lang import ast
from sdxlc.lang.cache_folder import cache_folder
from sdxlc.lang.diagnostics import Diagnostic, Span
from sdxlc.lang.nodes import fields

FORMAT = "sdx-statements 1"
MAX_ENTRIES = 256
PREFIX = "sdx-statements-"
_HERE = Path(__file__).resolve().parent
_READERS = ("grammar/sdx.lark", "parser.py", "ast.py", "nodes.py", "diagnostics.py", "statement_cache.py")
_NODES: dict[str, type[Any]] = {cls.__name__: cls for cls in (
    ast.Number, ast.Percent, ast.Size, ast.Range, ast.String, ast.Word, ast.Bad, ast.Repeat, ast.List,
    ast.Assign, ast.Statement)}


def read_statements(text: str, file: str, keep: bool = True) -> tuple[list[ast.Statement], list[Diagnostic]]:
    """The statements of a recipe text and its syntax errors, from the cache when it has them; a parsed
    text is kept only with `keep` (an editor's unsaved buffer, which changes with each key, is not)."""
    folder = cache_folder(create=False)
    key = _key(text, file) if folder is not None else ""
    if folder is not None:
        found = _load(folder / f"{PREFIX}{key[:32]}.json", key, file)
        if found is not None:
            return found, []
    from sdxlc.lang.parser import parse_recovering

    tree, diags = parse_recovering(text, file)
    statements = ast.build(tree, file)
    if keep and not diags and (folder := cache_folder()) is not None:
        _store(folder, key or _key(text, file), statements, file)
    return statements, diags


@cache
def _readers() -> bytes:
    """What the key takes from the code that reads recipes: the files' contents, each with its size."""
    parts = [FORMAT.encode()]
    lark_init = find_spec("lark")
    origin = lark_init.origin if lark_init is not None else None
    for path in [*(_HERE / name for name in _READERS), *([Path(origin)] if origin else [])]:
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        parts += [str(len(data)).encode(), data]
    return b"\0".join(parts)


def _key(text: str, file: str) -> str:
    digest = hashlib.sha256(_readers())
    for part in (file, text):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(b"\0%d\0" % len(encoded) + encoded)
    return digest.hexdigest()


def _load(path: Path, key: str, file: str) -> list[ast.Statement] | None:
    try:
        stored_key, digest, payload = path.read_text(encoding="utf-8").split("\n", 2)
        if stored_key != key or hashlib.sha256(payload.encode("utf-8")).hexdigest() != digest:
            return None
        statements = [_decode(node, file) for node in json.loads(payload)]
    except (OSError, ValueError, TypeError, KeyError, IndexError, RecursionError):
        return None
    return statements if all(isinstance(s, ast.Statement) for s in statements) else None


def _store(folder: Path, key: str, statements: list[ast.Statement], file: str) -> None:
    """Keep the statements, when they read back equal; never raises for the cache's sake."""
    try:
        payload = json.dumps([_encode(s, file) for s in statements], allow_nan=False,
                             separators=(",", ":"), ensure_ascii=False)
        if [_decode(node, file) for node in json.loads(payload)] != statements:
            return
        data = payload.encode("utf-8")  # a lone surrogate is refused here
    except (ValueError, TypeError, KeyError, RecursionError):
        return
    from sdxlc.plan.files import write_atomic

    digest = hashlib.sha256(data).hexdigest()
    with contextlib.suppress(OSError):
        write_atomic(folder / f"{PREFIX}{key[:32]}.json", f"{key}\n{digest}\n".encode() + data)
        _prune(folder)


def _prune(folder: Path) -> None:
    """Remove the oldest entries past `MAX_ENTRIES`."""
    entries = []
    for entry in os.scandir(folder):
        if entry.name.startswith(PREFIX) and entry.name.endswith(".json"):
            with contextlib.suppress(OSError):
                entries.append((entry.stat().st_mtime_ns, entry.path))
    for _, path in sorted(entries, reverse=True)[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _encode(node: object, file: str) -> Any:
    """A statement as JSON: a node is {"n": its class, "f": its fields}, a span {"s": [line, column, end
    line, end column]}, a tuple a list; spans of another file are refused."""
    if isinstance(node, Span):
        if node.file != file:
            raise ValueError("a span of another file")
        return {"s": [node.line, node.column, node.end_line, node.end_column]}
    if isinstance(node, tuple):
        return [_encode(item, file) for item in node]
    if type(node) in (str, int, float):
        return node
    name = type(node).__name__
    if _NODES.get(name) is not type(node):
        raise TypeError(f"no encoding for {name}")
    return {"n": name, "f": [_encode(getattr(node, field), file) for field in fields(type(node))]}


def _decode(data: Any, file: str) -> Any:
    if isinstance(data, list):
        return tuple(_decode(item, file) for item in data)
    if isinstance(data, dict):
        if "s" in data:
            line, column, end_line, end_column = data["s"]
            if not all(type(n) is int for n in data["s"]):
                raise TypeError("a span of other than whole numbers")
            return Span(file, line, column, end_line, end_column)
        return _NODES[data["n"]](*(_decode(item, file) for item in data["f"]))
    if type(data) in (str, int, float):
        return data
    raise TypeError(f"unexpected {type(data).__name__} in a cache entry")
