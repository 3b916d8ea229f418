"""The JSON Schemas in `schema/`, loaded once, with validators that collect every error."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load `schema/<name>.schema.json`."""
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def schema_errors(name: str, document: Any) -> list[tuple[str, str]]:
    """Every violation of the named schema as (dotted path, message), in document order."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(name))
    found = []
    for error in sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]):
        found.append((".".join(str(p) for p in error.absolute_path), error.message))
    return found
