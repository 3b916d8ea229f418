"""schema/optimizers.json against the real optimizer classes: the compiler's table cannot drift."""

from __future__ import annotations

import inspect
import math
from typing import Any

import jsonschema
import pytest

from runtime.train.optim import optimizer_class
from sdxlc.lang.defaults import OPTIMIZER_ARGS, OPTIMIZER_DEFAULTS
from sdxlc.plan.schemas import load_schema
from sdxlc.resolve.optimizers import optimizer_table

NAMES = sorted(optimizer_table())


def _decoded(default: Any) -> Any:
    return math.inf if default == "inf" else default


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", NAMES)
def test_table_matches_the_class_signature(name: str) -> None:
    entry = optimizer_table()[name]
    cls = optimizer_class(name, optimizer_table()[name]["class"])
    parameters = inspect.signature(cls.__init__).parameters
    keywords = {key: p for key, p in parameters.items() if key not in ("self", "params", "lr")}
    assert set(entry["args"]) | set(entry["reserved"]) == set(keywords)
    assert not set(entry["args"]) & set(entry["reserved"])
    for key, spec in entry["args"].items():
        real = _plain(keywords[key].default)
        assert _decoded(spec["default"]) == real, (name, key)
        if real is not None and not (isinstance(real, float) and math.isinf(real)):
            schema = {k: v for k, v in spec.items() if k != "default"}
            jsonschema.validate(real, schema)  # the class default is a value the table accepts


def test_every_optimizer_is_in_both_schemas_and_the_table() -> None:
    for schema in ("recipe", "plan"):
        enum = load_schema(schema)["properties"]["optimizer"]["properties"]["name"]["enum"]
        assert sorted(enum) == NAMES, schema


def test_sdxlc_defaults_are_accepted_arguments() -> None:
    for name, args in OPTIMIZER_ARGS.items():
        for key, value in args.items():
            spec = optimizer_table()[name]["args"][key]
            jsonschema.validate(value, {k: v for k, v in spec.items() if k != "default"})
    assert set(OPTIMIZER_DEFAULTS) <= set(NAMES)


def test_every_optimizer_has_a_state_size_and_devices() -> None:
    for name, entry in optimizer_table().items():
        assert entry["state"]["bytes_per_param"] >= 0, name
        assert set(entry["devices"]) <= {"cpu", "cuda"} and "cuda" in entry["devices"], name
        assert ("paged" in name) == ("cpu" not in entry["devices"]), name
