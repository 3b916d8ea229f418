"""`@node`: frozen record classes for the syntax tree (sdxlc/lang/ast.py), as `@dataclass(frozen=True)`
gives them, without its code generation.

`dataclasses` writes each class's `__init__`, `__eq__`, `__hash__`, `__repr__`, `__setattr__` and
`__delattr__` as source text and compiles it when the module is imported: for the syntax tree's eleven
classes that was about 10 ms of every `sdxlc plan`, a twentieth of its start-up. Here the methods are
closures over the class's field names, made in microseconds. What they do is what the dataclass
methods did: fields in annotation order, positional or keyword, a default from the class body; equality
of the same class by the tuple of fields (NaN fields compare as in a tuple), a hash of that tuple, the
dataclass `repr`, and `FrozenInstanceError` on assignment or deletion. `fields(cls)` gives the names.
Type checkers see a frozen dataclass (`dataclass_transform`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any, TypeVar, dataclass_transform

_T = TypeVar("_T")
FIELDS = "__node_fields__"


def fields(cls: type) -> tuple[str, ...]:
    """The field names of a `@node` class, in order."""
    names: tuple[str, ...] = getattr(cls, FIELDS)
    return names


@dataclass_transform(eq_default=True, frozen_default=True)
def node(cls: type[_T]) -> type[_T]:
    """Make `cls` a frozen record of its annotated fields (a class body value is the field's default)."""
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    methods = _methods(cls.__name__, names, defaults)
    for name, method in methods.items():
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)
    for attribute in (FIELDS, "__match_args__"):
        setattr(cls, attribute, names)
    return cls


def _methods(title: str, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    def key(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{title}() takes {len(names)} arguments but {len(args)} were given")
        values = dict(zip(names, args, strict=False))  # fewer arguments than fields: defaults
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{title}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in names:
            if name not in values and name not in defaults:
                raise TypeError(f"{title}() missing argument {name!r}")
            object.__setattr__(self, name, values[name] if name in values else defaults[name])

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return key(self) == key(other)

    def __hash__(self: Any) -> int:
        return hash(key(self))

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.__class__.__qualname__}({shown})"

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self: Any, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    return {"__init__": __init__, "__eq__": __eq__, "__hash__": __hash__, "__repr__": __repr__,
            "__setattr__": __setattr__, "__delattr__": __delattr__}
