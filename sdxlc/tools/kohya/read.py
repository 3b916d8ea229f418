"""Read kohya's files, in any combination, into one `KohyaConfig`.

- `*.toml` with `[[datasets]]`: a dataset config (`--dataset_config`); keys ascend from `[general]` to
  each dataset to each `[[datasets.subsets]]`, as in sd-scripts' `library/config_util.py`;
- any other `*.toml`: a training config (`--config_file`); its tables are flattened, as sd-scripts does;
- `*.json`: a kohya_ss GUI configuration (or a dataset config when it has `datasets`);
- anything else: a saved command line (its `--config_file` is read too, under its flags).

A later file's setting wins over an earlier one's. A training config's `dataset_config` is read too
when no dataset config was given. Every problem is a `KohyaError` naming the file (and line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sdxlc.tools.kohya.cmdline import parse_command
from sdxlc.tools.kohya.gui import from_gui
from sdxlc.tools.kohya.model import KohyaConfig, KohyaError, Subset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_BYTES = 4 * 1024 * 1024


def read_configs(paths: list[Path]) -> KohyaConfig:
    config = KohyaConfig()
    for path in paths:
        _read_one(path, config)
    named = config.get("dataset_config")
    if named and not config.subsets:
        origin = config.settings["dataset_config"].origin
        found = locate(str(named), Path(origin).parent)
        if not found.is_file():
            raise KohyaError(f"{origin}: dataset_config names {named}, which does not exist "
                             "(name the dataset TOML on the command line too)")
        if found.stat().st_size > MAX_BYTES:
            raise KohyaError(f"{found}: larger than {MAX_BYTES // 2**20} MiB: not a kohya config")
        doc = _toml(found)
        if not isinstance(doc.get("datasets"), list):
            raise KohyaError(f"{origin}: dataset_config names {named}, which has no [[datasets]]")
        _dataset(doc, str(found), config)
    return config


def locate(name: str, beside: Path) -> Path:
    """A path from a kohya file: as written when it exists from here, else beside that file."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return beside / path


def _read_one(path: Path, config: KohyaConfig) -> None:
    if not path.is_file():
        raise KohyaError(f"{path}: no such file")
    if path.stat().st_size > MAX_BYTES:
        raise KohyaError(f"{path}: larger than {MAX_BYTES // 2**20} MiB: not a kohya config")
    origin = str(path)
    config.files.append(origin)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        doc = _toml(path)
        if isinstance(doc.get("datasets"), list):
            _dataset(doc, origin, config)
        else:
            _settings(_flatten(doc), origin, config)
    elif suffix == ".json":
        data = _json(path)
        if isinstance(data.get("datasets"), list):
            _dataset(data, origin, config)
        else:
            settings, launcher = from_gui(data)
            _settings({**launcher, **settings}, origin, config)
    else:
        script, settings, launcher = parse_command(_text(path), origin)
        config.script = script or config.script
        _config_file(settings.get("config_file"), path, config)
        _settings({**launcher, **settings}, origin, config)


def _config_file(name: object, command: Path, config: KohyaConfig) -> None:
    """A command line's `--config_file` (`.toml` added as sd-scripts does): read first, so that the
    command line's own flags win, as they do in sd-scripts."""
    if not isinstance(name, str) or not name:
        return
    found = locate(name if name.endswith(".toml") else f"{name}.toml", command.parent)
    if not found.is_file():
        raise KohyaError(f"{command}: --config_file {name} does not exist (name it on the command line too)")
    _read_one(found, config)


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise KohyaError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise KohyaError(f"{path}: cannot read: {error.strerror or error}") from None


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(_text(path))
    except tomllib.TOMLDecodeError as error:
        raise KohyaError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise KohyaError(f"{path}: not a kohya config: nested too deeply") from None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as error:
        raise KohyaError(f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}") from None
    except RecursionError:
        raise KohyaError(f"{path}: not a kohya config: nested too deeply") from None
    if not isinstance(data, dict):
        raise KohyaError(f"{path}: a kohya config is a JSON object, not a {type(data).__name__}")
    return data


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts reads a training TOML's tables (`[model_arguments]`) as if their keys were top-level."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _settings(values: dict[str, Any], origin: str, config: KohyaConfig) -> None:
    for key, value in values.items():
        config.put(key.replace("-", "_"), value, origin)


def _dataset(doc: dict[str, Any], origin: str, config: KohyaConfig) -> None:
    general = doc.get("general", {})
    if not isinstance(general, dict):
        raise KohyaError(f"{origin}: [general] must be a table")
    config.subsets.clear()
    for number, dataset in enumerate(doc["datasets"], 1):
        if not isinstance(dataset, dict):
            raise KohyaError(f"{origin}: [[datasets]] entry {number} is not a table")
        params = {**general, **{k: v for k, v in dataset.items() if k != "subsets"}}
        subsets = dataset.get("subsets", [])
        if not isinstance(subsets, list) or not subsets:
            raise KohyaError(f"{origin}: dataset {number} has no [[datasets.subsets]]")
        for subset in subsets:
            if not isinstance(subset, dict) or not subset.get("image_dir"):
                raise KohyaError(f"{origin}: a subset of dataset {number} has no image_dir "
                                 "(fine-tuning subsets with metadata_file only are not supported)")
            config.subsets.append(Subset({**params, **subset}, origin))
