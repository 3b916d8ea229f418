"""Look values up through the layers of a recipe: defaults, `use`d files, the recipe, `--set`.

The lowered document already folds `use`, the recipe and `--set` together and records which layer
set each path; this module adds the built-in defaults underneath and answers, for any path, the
value and where it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdxlc.lang.defaults import DEFAULTS, MODEL_DEFAULTS
from sdxlc.lang.diagnostics import Span
from sdxlc.lang.lower import SET_FILE, Lowered

Provenance = dict[str, str | None]

_MISSING = object()


class Layers:
    """Values of a recipe document with the defaults of its model family underneath."""

    def __init__(self, lowered: Lowered, family: str) -> None:
        self.doc = lowered.doc
        self.origins = lowered.provenance
        self.family_defaults = MODEL_DEFAULTS[family]
        self.top = lowered.top
        self.sections = lowered.sections

    def given(self, path: str) -> bool:
        """Whether a recipe layer (not a default) set this path."""
        return _dig(self.doc, path) is not _MISSING

    def get(self, path: str, default: Any = None) -> tuple[Any, Provenance]:
        value = _dig(self.doc, path)
        if value is not _MISSING:
            return value, self.origin(path)
        if path in self.family_defaults:
            return self.family_defaults[path], {"source": "default", "at": None}
        if path in DEFAULTS:
            return DEFAULTS[path], {"source": "default", "at": None}
        return default, {"source": "default", "at": None}

    def origin(self, path: str) -> Provenance:
        origin = self.origins.get(path)
        if origin is None:
            # A list or object set as a whole: look for the nearest recorded parent or child.
            for key, candidate in self.origins.items():
                if key.startswith(path + ".") or path.startswith(key + "."):
                    origin = candidate
                    break
        if origin is None:
            return {"source": "recipe", "at": None}
        return {"source": origin.source, "at": origin.at()}

    def span(self, path: str) -> Span | None:
        """Where a recipe layer set `path` (or a field inside it, or opened it as a section)."""
        origin = self.origins.get(path)
        if origin is None:
            for key, candidate in self.origins.items():
                if key.startswith(path + "."):
                    return candidate.span
            return self.sections.get(path)
        return origin.span

    def anchor(self) -> Span:
        """Where a problem of the recipe as a whole is shown (nothing names data, a default that does
        not fit): the start of the recipe file."""
        return Span(self.top, 1, 1, 1, 1)

    def place(self, *paths: str) -> Span:
        """The span of the first of `paths` a recipe layer set, or the start of the recipe."""
        for path in paths:
            span = self.span(path)
            if span is not None:
                return span
        return self.anchor()

    def related(self, path: str, label: str) -> tuple[tuple[Span, str], ...]:
        """A labelled secondary span for a diagnostic ("set here"), when the path was set in a file."""
        span = self.span(path)
        return ((span, label),) if span is not None else ()

    def base_dir(self, path: str, fallback: Path) -> Path:
        """The folder a path-valued setting is relative to: that of the file that set it."""
        span = self.span(path)
        if span is not None and span.file and span.file != SET_FILE and Path(span.file).exists():
            return Path(span.file).resolve().parent
        return fallback


def _dig(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node
