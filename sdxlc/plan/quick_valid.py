"""A compiled yes/no check of a document against one of our JSON Schemas, without importing jsonschema.

`compiled(schema)` turns a schema into nested Python functions once; calling the result answers whether
a document is valid. It knows the Draft 2020-12 keywords our schemas use, with jsonschema's meaning
(its type checker, its `equal` and `uniq`, its `multipleOf`), and answers None, "cannot tell", for a
schema that uses any other keyword or a `$ref` outside the document. Callers use it only to skip the
full validator on a valid document: whenever it does not say True, jsonschema runs and finds the errors,
so what is reported never depends on this module. tests/test_quick_valid.py compares the two.
"""

from __future__ import annotations

import itertools
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[Any], bool]

# What the checks below implement; every other keyword jsonschema's Draft 2020-12 validator acts on is
# UNSUPPORTED (a test compares both sets with that validator's). Anything else is an annotation.
SUPPORTED = frozenset({
    "$ref", "additionalProperties", "allOf", "anyOf", "const", "enum", "exclusiveMaximum", "exclusiveMinimum",
    "if", "items", "maxItems", "maxLength", "maximum", "minItems", "minLength", "minimum", "multipleOf",
    "oneOf", "pattern", "properties", "required", "type", "uniqueItems",
})
UNSUPPORTED = frozenset({
    "$dynamicRef", "contains", "dependentRequired", "dependentSchemas", "maxProperties",
    "minProperties", "not", "patternProperties", "prefixItems", "propertyNames", "unevaluatedItems",
    "unevaluatedProperties", "else", "maxContains", "minContains", "dependencies", "$recursiveRef", "format",
})


class Unsupported(Exception):
    """The schema uses something `compiled` does not implement."""


def compiled(schema: Any) -> Check | None:
    """The check of `schema`, or None when it uses a keyword this module does not implement."""
    try:
        return _Compiler(schema).check(schema)
    except Unsupported:
        return None


def surely_valid(schema: Any) -> Check:
    """True when the document is valid; False when it is not, or when `schema` cannot be compiled."""
    check = compiled(schema)
    return check if check is not None else lambda value: False


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Number)


_TYPES: dict[str, Check] = {
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_integer,
    "null": lambda v: v is None,
    "number": _is_number,
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
}


def _unbool(value: Any, true: object = object(), false: object = object()) -> Any:
    if value is True:
        return true
    if value is False:
        return false
    return value


def equal(one: Any, two: Any) -> bool:
    """jsonschema's equality: `True` is not `1`, inside lists and objects too."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(equal(i, j) for i, j in zip(one, two, strict=True))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return len(one) == len(two) and all(key in two and equal(v, two[key]) for key, v in one.items())
    return bool(_unbool(one) == _unbool(two))


def unique(items: list[Any]) -> bool:
    """jsonschema's `uniqueItems`."""
    try:
        ordered = sorted(_unbool(i) for i in items)
        return not any(equal(i, j) for i, j in zip(ordered, itertools.islice(ordered, 1, None), strict=False))
    except (NotImplementedError, TypeError):
        seen: list[Any] = []
        for item in items:
            item = _unbool(item)
            if any(equal(i, item) for i in seen):
                return False
            seen.append(item)
        return True


def _multiple(value: Any, step: Any) -> bool:
    """jsonschema's `multipleOf`."""
    if isinstance(step, float):
        quotient = value / step
        try:
            return bool(int(quotient) == quotient)
        except OverflowError:
            from fractions import Fraction

            return Fraction(value) % Fraction(step) == 0
    return not value % step


class _Compiler:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.refs: dict[str, Check] = {}

    def check(self, node: Any) -> Check:
        if node is True or (isinstance(node, dict) and not node):
            return lambda value: True
        if node is False:
            return lambda value: False
        if not isinstance(node, dict):
            raise Unsupported(repr(node))
        if "$id" in node and node is not self.root:
            raise Unsupported("$id below the root")
        if UNSUPPORTED.intersection(node):
            raise Unsupported(", ".join(sorted(UNSUPPORTED.intersection(node))))
        found = [self._keyword(key, node[key], node) for key in sorted(SUPPORTED.intersection(node))]
        checks = [c for c in found if c is not None]
        if not checks:
            return lambda value: True
        if len(checks) == 1:
            return checks[0]
        return lambda value: all(check(value) for check in checks)

    def _keyword(self, key: str, arg: Any, node: dict[str, Any]) -> Check | None:
        method: Callable[[Any, dict[str, Any]], Check | None] = getattr(self, "_" + key.lstrip("$"))
        return method(arg, node)

    # --- applicators ---------------------------------------------------------------------------

    def _ref(self, ref: Any, node: dict[str, Any]) -> Check:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise Unsupported(f"$ref {ref!r}")
        if ref not in self.refs:
            target: Any = self.root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise Unsupported(f"$ref {ref!r}")
                target = target[part]
            self.refs[ref] = lambda value: False  # a reference back to itself while it is compiled
            self.refs[ref] = self.check(target)
        refs = self.refs
        return lambda value: refs[ref](value)

    def _properties(self, properties: dict[str, Any], node: dict[str, Any]) -> Check:
        children = [(name, self.check(child)) for name, child in properties.items()]

        def each(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            return all(child(value[name]) for name, child in children if name in value)

        return each

    def _additionalProperties(self, extra: Any, node: dict[str, Any]) -> Check:
        known = frozenset(node.get("properties", {}))
        if extra is False:
            return lambda value: not isinstance(value, dict) or known.issuperset(value)
        if isinstance(extra, dict):
            child = self.check(extra)
            return lambda value: not isinstance(value, dict) or all(
                child(v) for k, v in value.items() if k not in known)
        if extra is True:
            return lambda value: True
        raise Unsupported("additionalProperties")

    def _items(self, items: Any, node: dict[str, Any]) -> Check:
        if not isinstance(items, dict | bool):
            raise Unsupported("items")
        child = self.check(items)
        return lambda value: not isinstance(value, list) or all(child(item) for item in value)

    def _allOf(self, schemas: list[Any], node: dict[str, Any]) -> Check:
        children = [self.check(schema) for schema in schemas]
        return lambda value: all(child(value) for child in children)

    def _anyOf(self, schemas: list[Any], node: dict[str, Any]) -> Check:
        children = [self.check(schema) for schema in schemas]
        return lambda value: any(child(value) for child in children)

    def _oneOf(self, schemas: list[Any], node: dict[str, Any]) -> Check:
        children = [self.check(schema) for schema in schemas]
        return lambda value: sum(1 for child in children if child(value)) == 1

    def _if(self, condition: Any, node: dict[str, Any]) -> Check | None:
        if "then" not in node:
            return None
        test, then = self.check(condition), self.check(node["then"])
        return lambda value: not test(value) or then(value)

    # --- assertions ----------------------------------------------------------------------------

    def _type(self, types: Any, node: dict[str, Any]) -> Check:
        names = types if isinstance(types, list) else [types]
        if any(name not in _TYPES for name in names):
            raise Unsupported(f"type {types!r}")
        checks = [_TYPES[name] for name in names]
        if len(checks) == 1:
            return checks[0]
        return lambda value: any(check(value) for check in checks)

    def _enum(self, choices: list[Any], node: dict[str, Any]) -> Check:
        return lambda value: any(equal(value, choice) for choice in choices)

    def _const(self, constant: Any, node: dict[str, Any]) -> Check:
        return lambda value: equal(value, constant)

    def _required(self, names: list[str], node: dict[str, Any]) -> Check:
        wanted = list(names)
        return lambda value: not isinstance(value, dict) or all(name in value for name in wanted)

    def _minimum(self, bound: Any, node: dict[str, Any]) -> Check:
        return lambda value: not _is_number(value) or not value < bound

    def _maximum(self, bound: Any, node: dict[str, Any]) -> Check:
        return lambda value: not _is_number(value) or not value > bound

    def _exclusiveMinimum(self, bound: Any, node: dict[str, Any]) -> Check:
        return lambda value: not _is_number(value) or not value <= bound

    def _exclusiveMaximum(self, bound: Any, node: dict[str, Any]) -> Check:
        return lambda value: not _is_number(value) or not value >= bound

    def _multipleOf(self, step: Any, node: dict[str, Any]) -> Check:
        return lambda value: not _is_number(value) or _multiple(value, step)

    def _minLength(self, size: int, node: dict[str, Any]) -> Check:
        return lambda value: not isinstance(value, str) or not len(value) < size

    def _maxLength(self, size: int, node: dict[str, Any]) -> Check:
        return lambda value: not isinstance(value, str) or not len(value) > size

    def _minItems(self, size: int, node: dict[str, Any]) -> Check:
        return lambda value: not isinstance(value, list) or not len(value) < size

    def _maxItems(self, size: int, node: dict[str, Any]) -> Check:
        return lambda value: not isinstance(value, list) or not len(value) > size

    def _uniqueItems(self, wanted: Any, node: dict[str, Any]) -> Check:
        if not wanted:
            return lambda value: True
        return lambda value: not isinstance(value, list) or unique(value)

    def _pattern(self, pattern: str, node: dict[str, Any]) -> Check:
        return lambda value: not isinstance(value, str) or re.search(pattern, value) is not None
