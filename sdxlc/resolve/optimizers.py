"""The optimizer table (schema/optimizers.json): what each optimizer accepts, read without torch.

The compiler checks a recipe's `args name=value` against this table; the runtime builds the class it
names; the memory estimator can read each optimizer's state size from it. A runtime test compares the
table with the real classes' signatures, so it cannot drift from them.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from sdxlc.plan.quick_valid import Check, surely_valid
from sdxlc.plan.schemas import SCHEMA_DIR, validator


@cache
def optimizer_table() -> dict[str, dict[str, Any]]:
    """`schema/optimizers.json`'s optimizers by name."""
    with open(SCHEMA_DIR / "optimizers.json", encoding="utf-8") as handle:
        table: dict[str, dict[str, Any]] = json.load(handle)["optimizers"]
    return table


def accepted_args(name: str) -> dict[str, dict[str, Any]]:
    """The keyword arguments a recipe may pass to the optimizer, each as a JSON Schema with its default."""
    args: dict[str, dict[str, Any]] = optimizer_table()[name]["args"]
    return args


def arg_problem(name: str, key: str, value: Any) -> str | None:
    """Why `value` is not a valid `key` argument of the optimizer (it must be accepted), or None."""
    if _arg_surely_valid(name, key)(value):
        return None
    errors = list(validator(_arg_schema(name, key)).iter_errors(value))
    return errors[0].message if errors else None


@cache
def _arg_schema(name: str, key: str) -> dict[str, Any]:
    return {k: v for k, v in accepted_args(name)[key].items() if k != "default"}


@cache
def _arg_surely_valid(name: str, key: str) -> Check:
    return surely_valid(_arg_schema(name, key))


def normalise_arg(name: str, key: str, value: Any) -> Any:
    """A whole-number float given for an integer argument, as an int (`min_8bit_size=16.0`)."""
    spec = accepted_args(name).get(key, {})
    if spec.get("type") == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
