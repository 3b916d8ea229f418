"""Plan values written as a recipe would write them, for `sdxlc plan`: `1e-4` rather than `0.0001`,
`true` rather than `True`, `unet+te1` rather than `['unet', 'te1']`, sizes in GiB, `—` for nothing."""

from __future__ import annotations

import re
from typing import Any

LONG_LIST = 6  # longer lists show their first values and their length
_PLAIN = re.compile(r"^[^\s,\"'=]+$")


def value_text(path: str, value: Any) -> str:
    """`value` at plan path `path` as recipe text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and path.endswith("_bytes"):
        return f"{value / 2**30:.2f} GiB"
    if isinstance(value, int | float):
        return number_text(value)
    if isinstance(value, str):
        return string_text(value)
    if isinstance(value, list):
        return _list_text(path, value)
    if isinstance(value, dict):
        return _dict_text(path, value)
    return str(value)


def number_text(value: float) -> str:
    """Shortest recipe spelling of a number: `300`, `0.0357`, `7`, `1e-4`, `2.5e-5`."""
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e7):
        mantissa, exponent = f"{value:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.6g}"


def string_text(text: str) -> str:
    """A word or path as it is; text with spaces, commas or quotes (a prompt) in double quotes."""
    return text if _PLAIN.match(text) else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list_text(path: str, values: list[Any]) -> str:
    if not values:
        return "—"
    if path.endswith(".targets") and all(isinstance(v, str) for v in values):
        return "+".join(values)  # `on unet+te1`
    shown = [value_text(path, v) for v in values[:3]] if len(values) > LONG_LIST else None
    if shown is not None:
        return ", ".join(shown) + f", … ({len(values)} values)"
    return ", ".join(value_text(path, v) for v in values)


def _dict_text(path: str, values: dict[str, Any]) -> str:
    """`args name=value …` spelling for flat dicts; nested ones (a generated config) by their size."""
    if not values:
        return "—"
    if any(isinstance(v, dict) or isinstance(v, list) and len(v) > LONG_LIST for v in values.values()):
        return f"({len(values)} settings)"
    return " ".join(f"{key}={_arg_text(path, v)}" for key, v in values.items())


def _arg_text(path: str, value: Any) -> str:
    """An `args` value: a pair as `0.9,0.99`, as the recipe writes it."""
    if isinstance(value, list):
        return ",".join(value_text(path, v) for v in value)
    return value_text(path, value)
