"""The recipe under construction: statements, the settings they used, and notes for the rest."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxlc.tools.kohya.model import KohyaConfig, KohyaError, Note, is_unset

_WINDOWS = re.compile(r"^[A-Za-z]:[\\/]")
_WORD = re.compile(r"^[.A-Za-z_][A-Za-z0-9_.+-]*$")


@dataclass
class Builder:
    config: KohyaConfig
    recipe_dir: Path
    lines: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)  # differences that are no setting of the files
    used: set[str] = field(default_factory=set)
    noted: dict[str, list[Note]] = field(default_factory=dict)  # the notes by key, to find repeats fast

    def take(self, key: str, default: Any = None) -> Any:
        """The value of `key` (marked as carried by the recipe), or `default` when it is not set."""
        self.used.add(key)
        return self.config.get(key, default)

    def has(self, key: str) -> bool:
        setting = self.config.settings.get(key)
        return setting is not None and not is_unset(setting.value)

    def number(self, key: str, default: float | None = None) -> float | None:
        return to_number(key, self.take(key, default), self._origin(key))

    def integer(self, key: str, default: int | None = None) -> int | None:
        value = self.number(key, default)
        if value is not None and not float(value).is_integer():
            raise KohyaError(f"{self._origin(key)}: {key} = {value} must be a whole number")
        return None if value is None else int(value)

    def flag(self, key: str) -> bool:
        value = self.take(key, False)
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)

    def note(self, key: str, value: Any, why: str, changes: bool = True) -> None:
        self.used.add(key)
        note = Note(key, value, why, changes)
        same_key = self.noted.setdefault(key, [])
        if note not in same_key:  # a [general] key seen by every subset is noted once
            same_key.append(note)
            self.notes.append(note)

    def add(self, line: str) -> None:
        if line.strip():
            self.lines.append(line)

    def path(self, name: str, origin: str, local_only: bool = False) -> str:
        """A path from a kohya file, relative to the recipe's folder (absolute when it lies outside).
        With `local_only` (a model: a hub id otherwise), a path that does not exist stays as written."""
        from sdxlc.tools.kohya.read import locate

        found = locate(name, Path(origin).parent)
        if (local_only and not found.exists()) or _WINDOWS.match(name):
            return name
        full = Path(os.path.abspath(found))
        try:
            relative = os.path.relpath(full, os.path.abspath(self.recipe_dir))
        except ValueError:  # another drive
            return str(full)
        return str(full) if relative.startswith("..") else relative

    def _origin(self, key: str) -> str:
        setting = self.config.settings.get(key)
        return setting.origin if setting is not None else "kohya default"


def to_number(key: str, value: Any, origin: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise KohyaError(f"{origin}: {key} = {value} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise KohyaError(f"{origin}: {key} = {value!r} must be a number") from None
    if not math.isfinite(number):
        raise KohyaError(f"{origin}: {key} = {value!r} must be a finite number")
    return number


def num(value: float | int) -> str:
    """A number as a recipe writes it: `16`, `0.0001`, `2e-06`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def quote(text: str) -> str:
    body = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{body}"'


def word_or_string(text: str) -> str:
    return text if _WORD.match(text) else quote(text)
