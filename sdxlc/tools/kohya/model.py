"""The shapes the kohya importer passes between its stages: settings with their origin, datasets, notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class KohyaError(Exception):
    """A kohya file that cannot be read: missing, malformed, or not a kohya config (a usage error)."""


@dataclass
class Setting:
    """One sd-scripts setting (`network_dim`), its value and the file that gave it."""

    value: Any
    origin: str


@dataclass
class Subset:
    """One `[[datasets.subsets]]` (or one `<N>_<tokens>` folder of `train_data_dir`) with the keys that
    apply to it: its own, its dataset's and `[general]`'s."""

    params: dict[str, Any]
    origin: str


@dataclass
class KohyaConfig:
    """Everything read from the files: flat settings, dataset subsets (from a dataset config), the
    script the command line ran (`sdxl_train_network.py`) and the launcher's settings."""

    settings: dict[str, Setting] = field(default_factory=dict)
    subsets: list[Subset] = field(default_factory=list)
    script: str | None = None
    files: list[str] = field(default_factory=list)

    def put(self, key: str, value: Any, origin: str) -> None:
        self.settings[key] = Setting(value, origin)

    def get(self, key: str, default: Any = None) -> Any:
        setting = self.settings.get(key)
        return default if setting is None or is_unset(setting.value) else setting.value


@dataclass
class Note:
    """A setting the recipe does not carry: `# not mapped: --key=value (why)`; `changes` when kohya
    would train differently from the recipe because of it."""

    key: str
    value: Any
    why: str
    changes: bool

    def text(self) -> str:
        setting = self.key if self.value is None else f"{self.key}={show(self.value)}"
        return f"not mapped: --{setting} ({self.why})"


SECRET_KEYS = frozenset({"wandb_api_key", "huggingface_token"})


def is_unset(value: Any) -> bool:
    """kohya and its GUI write an absent setting as None, "", an empty list or False."""
    return value is None or value == "" or value == [] or value is False


def show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(show(v) for v in value)
    return str(value)
