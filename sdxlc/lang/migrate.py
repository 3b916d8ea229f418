"""Language versions: `sdx N` at the top of a recipe, and the migrations that upgrade older documents.

A recipe says which version of the language it is written in (`sdx 1`; a recipe without `sdx` is read
as the current version). When the language changes in a way that would change what an old recipe
means, the version goes up and a migration is registered here: a pure function from a version-N
recipe document to a version-N+1 one, with a note for each change it made. The compiler applies them
in order after lowering, so every stage after it sees only current documents, and `sdxlc plan` shows
the notes as warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CURRENT = 1

Migration = Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]]

# version N → the migration that upgrades a version-N document to version N + 1
MIGRATIONS: dict[int, Migration] = {}


def migrate(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The document upgraded to the current version, and what each migration changed.

    Versions newer than the compiler, and gaps in the chain, are left to the schema (which admits only
    known versions) to report.
    """
    version = doc.get("sdx", CURRENT)
    notes: list[str] = []
    while isinstance(version, int) and version < CURRENT and version in MIGRATIONS:
        doc, changed = MIGRATIONS[version](dict(doc))
        notes += [f"sdx {version} → {version + 1}: {note}" for note in changed]
        version += 1
        doc["sdx"] = version
    return doc, notes
