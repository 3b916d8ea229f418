"""The structural check: the recipe document against schema/recipe.schema.json.

The lowering has already checked every value where it was written, so what the schema still finds is
the document's shape: a dataset without a `path` (its `data` line was rejected), a section left empty.
Each error is shown at the nearest setting of its path (the path itself, a field inside it, or the
section around it), or at the start of the recipe. One on a line that already has an error only
echoes that error and is left out.
"""

from __future__ import annotations

from sdxlc.lang.diagnostics import Diagnostic, Span, make
from sdxlc.lang.lower import Lowered
from sdxlc.plan.schemas import schema_errors


def structural(lowered: Lowered, known: list[Diagnostic]) -> list[Diagnostic]:
    """Recipe-schema violations that no earlier error on the same line already explains."""
    taken = {(d.span.file, d.span.line) for d in known if d.span is not None and d.severity == "error"}
    found = []
    for path, message in schema_errors("recipe", lowered.doc):
        span = nearest(lowered, path)
        if (span.file, span.line) in taken:
            continue
        found.append(make("SDX0401", f"`{path or 'recipe'}`: {message}", span,
                          help="see `sdxlc explain " + (path or "recipe") + "`"))
    return found


def nearest(lowered: Lowered, path: str) -> Span:
    """The span of the setting of `path`, of the first setting inside it, or of the nearest one around
    it; the start of the recipe when none was written in a file."""
    origins = lowered.provenance
    inside = [origin for key, origin in origins.items()
              if not path or key == path or key.startswith(path + ".")]
    candidates = inside + [origins[key] for key in _parents(path) if key in origins]
    for origin in candidates:
        if origin.span is not None:
            return origin.span
    return Span(lowered.top, 1, 1, 1, 1)


def _parents(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:size]) for size in range(len(parts) - 1, 0, -1)]
