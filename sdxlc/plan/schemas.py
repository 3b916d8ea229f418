"""The JSON Schemas in `schema/`, loaded once, with validators that collect every error (jsonschema's,
built once, and imported only for a document the compiled check of `quick_valid` does not pass)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from sdxlc.plan.quick_valid import Check, surely_valid

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load `schema/<name>.schema.json`."""
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def validator(schema: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator of `schema`, which is trusted (it is one of ours): not checked itself."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


@cache
def named_validator(name: str) -> Any:
    """The validator of `schema/<name>.schema.json`, built once."""
    return validator(load_schema(name))


@cache
def _surely_valid(name: str) -> Check:
    return surely_valid(load_schema(name))


def schema_errors(name: str, document: Any) -> list[tuple[str, str]]:
    """Every violation of the named schema as (dotted path, message), in document order. A valid
    document passes the compiled check alone; jsonschema is imported only to describe the errors."""
    if _surely_valid(name)(document):
        return []
    found = []
    errors = named_validator(name).iter_errors(document)
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        found.append((".".join(str(p) for p in error.absolute_path), error.message))
    return found
