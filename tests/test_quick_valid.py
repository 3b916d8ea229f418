"""The compiled check agrees with jsonschema on our schemas: never valid where jsonschema finds an error."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sdxlc.lang import vocabulary
from sdxlc.lang.lower import load_recipe
from sdxlc.pipeline import compile_recipe
from sdxlc.plan.quick_valid import SUPPORTED, UNSUPPORTED, compiled
from sdxlc.plan.schemas import load_schema
from sdxlc.resolve.optimizers import optimizer_table

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(ROOT.glob("recipes/*.sdx"))
ODD_VALUES: list[Any] = [0, 1, -1, 0.5, 2.0, 1e300, -1e-9, True, False, None, "", "x", "bf16", [], [1, 1.0],
                         [1, True], ["a", "a"], {}, {"a": 1}, [0.5] * 23, "a" * 300]


def _agrees(schema: dict[str, Any], document: Any) -> None:
    check = compiled(schema)
    assert check is not None
    valid = not any(True for _ in jsonschema.Draft202012Validator(schema).iter_errors(document))
    assert check(document) == valid, (document, schema)


def _mutations(document: Any, rng: random.Random, count: int) -> Iterator[Any]:
    """Copies of `document` with one value replaced, one key removed or one key added."""
    places: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            places.extend((node, key) for key in node)
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            places.extend((node, index) for index in range(len(node)))
            for child in node:
                walk(child)

    walk(document)
    for _ in range(count):
        mutated = copy.deepcopy(document)
        places.clear()
        walk(mutated)
        container, key = rng.choice(places)
        action = rng.random()
        if action < 0.7:
            container[key] = rng.choice(ODD_VALUES)
        elif isinstance(container, dict) and action < 0.85:
            del container[key]
        elif isinstance(container, dict):
            container["unexpected"] = 1
        else:
            container.append(copy.deepcopy(container[key]))
        yield mutated


def test_every_keyword_jsonschema_knows_is_implemented_or_refused() -> None:
    known = set(jsonschema.Draft202012Validator.VALIDATORS)
    assert known <= SUPPORTED | UNSUPPORTED
    assert not SUPPORTED & UNSUPPORTED


def test_our_schemas_compile() -> None:
    for name in ("recipe", "plan", "profile"):
        assert compiled(load_schema(name)) is not None, name
    for path in vocabulary.leaf_paths():
        assert compiled(vocabulary.schema_node(path)) is not None, path
    for optimizer in optimizer_table().values():
        for spec in optimizer["args"].values():
            assert compiled(spec) is not None


def test_unknown_keywords_and_outside_refs_are_refused() -> None:
    assert compiled({"contains": {"type": "string"}}) is None
    assert compiled({"properties": {"a": {"not": {}}}}) is None
    assert compiled({"$ref": "other.json#/x"}) is None
    assert compiled({"type": "decimal"}) is None


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_plans_and_their_mutations(recipe: Path) -> None:
    plan = compile_recipe(recipe, (), None).plan
    assert plan is not None
    schema = load_schema("plan")
    _agrees(schema, plan)
    for mutated in _mutations(plan, random.Random(recipe.name), 60):
        _agrees(schema, mutated)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_documents_and_their_mutations(recipe: Path) -> None:
    doc = load_recipe(recipe, ()).doc
    schema = load_schema("recipe")
    _agrees(schema, doc)
    for mutated in _mutations(doc, random.Random(recipe.name), 80):
        _agrees(schema, mutated)


def test_every_recipe_value_schema_on_odd_values() -> None:
    for path in vocabulary.leaf_paths():
        node = vocabulary.schema_node(path)
        assert node is not None
        for value in ODD_VALUES:
            _agrees(node, value)
    for optimizer in optimizer_table().values():
        for spec in optimizer["args"].values():
            for value in [*ODD_VALUES, [0.9, 0.999], [0.9, 1.5], [True, 0.5]]:
                _agrees({k: v for k, v in spec.items() if k != "default"}, value)


@pytest.mark.parametrize(("schema", "value"), [
    ({"enum": [1]}, True), ({"enum": [True]}, 1), ({"const": [1]}, [1.0]),
    ({"const": {"a": 0}}, {"a": False}), ({"uniqueItems": True}, [1, True]),
    ({"uniqueItems": True}, [1, 1.0]), ({"uniqueItems": True}, [{"a": 1}, {"a": 1}]),
    ({"type": "integer"}, 2.0), ({"type": "integer"}, 2.5), ({"type": "integer"}, True),
    ({"type": "number"}, False), ({"multipleOf": 0.1}, 0.3), ({"multipleOf": 8}, 24),
    ({"multipleOf": 8}, 25.0), ({"multipleOf": 0.5}, 1e308), ({"pattern": "^a"}, "ba"),
    ({"pattern": "a"}, "ba"), ({"minLength": 2}, "é"), ({"maxItems": 1}, "ab"),
    ({"if": {"properties": {"k": {"const": 1}}}, "then": {"required": ["x"]}}, {"k": 1}),
    ({"if": {"properties": {"k": {"const": 1}}}, "then": {"required": ["x"]}}, {"k": 2}),
    ({"$defs": {"n": {"type": "integer"}}, "items": {"$ref": "#/$defs/n"}}, [1, "a"]),
    ({"additionalProperties": {"type": "string"}, "properties": {"a": {}}}, {"a": 1, "b": "c"}),
    ({"items": False}, []), ({"items": False}, [1]), ({"exclusiveMinimum": 0}, 0),
    ({"maximum": 1}, float("nan")),
    ({"anyOf": [{"type": "null"}, {"minimum": 1}]}, 0), ({"anyOf": [{"type": "null"}, {"minimum": 1}]}, None),
    *(({"oneOf": [{"type": "integer"}, {"minimum": 1}]}, value) for value in (2, 0, 1.5, "a")),
    ({"oneOf": []}, 1), ({"anyOf": [False]}, 1),
])
def test_edge_cases(schema: dict[str, Any], value: Any) -> None:
    _agrees(schema, value)
