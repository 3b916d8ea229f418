"""`sdxlc diff`: the semantic difference of two resolved plans, each change classed by what it affects.

Both plans are walked generically: dicts key by key, lists of objects index by index; a list of plain
values (LoRA targets, prompts, `block_lr`) is one value. Each differing leaf is classed by the longest
prefix of its path in `KINDS` (indices written as `*`), so one table says what every field means for a
run. `plan_hash` is ignored: it differs whenever anything else does.

A side is read by `load_side`:

- `x.sdx`: the recipe is compiled (with the profile it names);
- `x.sdx@REV`: the recipe as committed at git revision REV (see `recipe_at_revision`);
- a folder: the `plan.json` inside it (an output or checkpoint folder of a run);
- any other file: a plan JSON file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdxlc.diagnostics import Diagnostic
from sdxlc.pipeline import compile_recipe

Kind = Literal[
    "cosmetic", "logging", "schedule", "numerics", "cache-invalidating", "resume-breaking", "estimate"
]

# Least to most disruptive; the order the text report uses.
KIND_ORDER: tuple[Kind, ...] = (
    "resume-breaking",
    "cache-invalidating",
    "numerics",
    "schedule",
    "logging",
    "estimate",
    "cosmetic",
)

KIND_MEANING: dict[Kind, str] = {
    "cosmetic": "no effect on the trained weights",
    "logging": "what the run reports and saves along the way",
    "schedule": "the learning-rate schedule or the length of the run",
    "numerics": "the arithmetic of training: results differ, checkpoints still load",
    "cache-invalidating": "cached latents or text-encoder outputs must be rebuilt",
    "resume-breaking": "a checkpoint of one cannot be resumed by the other",
    "estimate": "the memory and time estimate",
}

# Path prefix → kind; the longest matching prefix wins. `*` matches one list index.
KINDS: dict[str, Kind] = {
    "plan_version": "cosmetic",
    "sdxlc_version": "cosmetic",
    "sources": "cosmetic",
    "provenance": "cosmetic",
    "warnings": "cosmetic",
    "output": "cosmetic",
    "estimate": "estimate",
    "hardware": "estimate",
    "hardware.device": "numerics",
    "model": "resume-breaking",
    "model.vae": "cache-invalidating",
    "method": "resume-breaking",
    "method.dropout": "numerics",
    "method.block_lr": "schedule",
    "method.lr_te1": "schedule",
    "method.lr_te2": "schedule",
    "method.save_diffusers": "cosmetic",
    "precision": "numerics",
    "data": "cache-invalidating",
    "data.datasets.*.repeat": "schedule",
    "data.datasets.*.loss_weight": "numerics",
    "data.samples_per_epoch": "schedule",
    "optimizer": "numerics",
    "optimizer.name": "resume-breaking",
    "optimizer.lr": "schedule",
    "schedule": "schedule",
    "training": "numerics",
    "training.total_steps": "schedule",
    "training.epochs": "schedule",
    "training.steps_per_epoch": "schedule",
    "training.batches_per_epoch": "schedule",
    "save": "logging",
    "sample": "logging",
    "log": "logging",
    "launch": "numerics",
    "launch.main_process_port": "cosmetic",
}

IGNORED = {"plan_hash"}
# Fields of no table entry (a newer plan): classed as numerics, the kind that changes results without
# claiming more.
FALLBACK: Kind = "numerics"


@dataclass(frozen=True)
class Change:
    """One differing leaf: `old` or `new` is None where the field is null or absent on that side."""

    path: str
    old: Any
    new: Any
    kind: Kind

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "old": self.old, "new": self.new, "kind": self.kind}


class SideError(Exception):
    """A side of a diff that cannot be read or compiled; `diagnostics` and `sources` when it is a recipe."""

    def __init__(
        self, message: str, diagnostics: list[Diagnostic] | None = None, sources: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.diagnostics = diagnostics or []
        self.sources = sources or {}


def kind_of(path: str) -> Kind:
    """The kind of a change at a dotted plan path (list indices may be numbers or `*`)."""
    parts = ["*" if part.isdigit() else part for part in path.split(".")]
    for size in range(len(parts), 0, -1):
        kind = KINDS.get(".".join(parts[:size]))
        if kind is not None:
            return kind
    return FALLBACK


def diff_plans(a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """Every leaf that differs between two plans, in path order."""
    changes = [Change(path, old, new, kind_of(path)) for path, old, new in _walk(a, b, "")]
    return sorted(changes, key=lambda change: change.path)


def _walk(a: Any, b: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if not prefix and key in IGNORED:
                continue
            yield from _pair(a, b, key, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(a, list) and isinstance(b, list) and not (_plain(a) and _plain(b)):
        for index in range(max(len(a), len(b))):
            yield from _pair(dict(enumerate(a)), dict(enumerate(b)), index, f"{prefix}.{index}")
    elif not _same(a, b):
        yield prefix, a, b


def _pair(a: dict[Any, Any], b: dict[Any, Any], key: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """The changes under one key; a section only one side has is walked against an empty one, so that
    its fields are classed one by one."""
    if key in a and key in b:
        yield from _walk(a[key], b[key], path)
    elif isinstance(a.get(key, b.get(key)), dict):
        yield from _walk(a.get(key, {}), b.get(key, {}), path)
    else:
        yield path, a.get(key), b.get(key)


def _plain(values: list[Any]) -> bool:
    return not any(isinstance(value, dict | list) for value in values)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: `1` and `1.0` are the same number, `true` is not `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


# --- reading a side ------------------------------------------------------------------------------


def load_side(spec: str) -> dict[str, Any]:
    """The plan a diff side names (see the module docstring); SideError when it cannot be had."""
    recipe, at, revision = spec.rpartition("@")
    if at and recipe.endswith(".sdx") and revision:
        with recipe_at_revision(Path(recipe), revision) as (copy, mirror, root):
            plan = _compile(copy, spec)
        spelled = str(root) if Path(recipe).is_absolute() else os.path.relpath(root)
        restored: dict[str, Any] = _restore(plan, "", str(mirror), str(root), spelled)
        return restored
    path = Path(spec)
    if path.suffix == ".sdx":
        return _compile(path, spec)
    if path.is_dir():
        path = path / "plan.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SideError(f"cannot read a plan from `{spec}`: {error}") from error
    if not isinstance(plan, dict):
        raise SideError(f"`{spec}` does not hold a plan (a JSON object)")
    return plan


def _compile(path: Path, label: str) -> dict[str, Any]:
    if not path.is_file():
        raise SideError(f"no such recipe file: {label}")
    compiled = compile_recipe(path)
    if compiled.plan is None:
        raise SideError(f"`{label}` does not compile", compiled.ordered(), compiled.sources)
    return compiled.plan


class recipe_at_revision:  # noqa: N801 - used as a context manager, like a function
    """The recipe `path` as committed at git revision `rev`, materialised in a temporary folder.

    The rule: the temporary folder mirrors the repository. The recipe at `rev` sits at the same path
    relative to the repository root as in the working tree; every other entry of each folder from the
    root down to the recipe's folder is a symbolic link to the working tree. So `use` files, data
    folders and models resolve against the working tree, as they would for the file in place; only
    the recipe file itself is read at `rev`. Entering yields (copy, temporary root, repository root):
    paths in the compiled plan that start with the temporary root are rewritten to the repository root.
    """

    def __init__(self, path: Path, rev: str) -> None:
        self.path, self.rev = path, rev
        self.temp: str | None = None

    def __enter__(self) -> tuple[Path, Path, Path]:
        folder = self.path.resolve().parent
        root = Path(_git(folder, "rev-parse", "--show-toplevel").strip()).resolve()
        relative = self.path.resolve().relative_to(root)
        text = _git(root, "show", f"{self.rev}:{relative.as_posix()}")
        self.temp = tempfile.mkdtemp(prefix="sdxlc-diff-")
        mirror = Path(self.temp).resolve()
        try:
            _mirror(root, mirror, relative)
            copy = mirror / relative
            copy.write_text(text, encoding="utf-8")
        except OSError as error:
            self.__exit__()
            raise SideError(f"cannot set up `{self.path}` at {self.rev}: {error}") from error
        return copy, mirror, root

    def __exit__(self, *exc: object) -> None:
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)


def _mirror(root: Path, mirror: Path, relative: Path) -> None:
    """Real folders along `relative`; links to the working tree for every other entry beside them."""
    source, target = root, mirror
    for part in relative.parts:
        target.mkdir(exist_ok=True)
        for entry in os.listdir(source):
            if entry != part:
                (target / entry).symlink_to(source / entry)
        source, target = source / part, target / part


def _git(folder: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SideError(f"cannot run git: {error}") from error
    if done.returncode != 0:
        raise SideError(f"git {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def _restore(value: Any, path: str, mirror: str, root: str, spelled: str) -> Any:
    """A plan compiled in the mirror, with its paths pointing into the working tree again: file names
    in `sources` and `provenance` spelled as the recipe's own path was given, every other path absolute."""
    if isinstance(value, dict):
        return {k: _restore(v, f"{path}.{k}" if path else k, mirror, root, spelled) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(item, path, mirror, root, spelled) for item in value]
    if isinstance(value, str) and value.startswith(mirror + os.sep):
        rest = value[len(mirror) + 1 :]
        label = path.startswith(("sources", "provenance"))
        return os.path.normpath(os.path.join(spelled, rest)) if label else os.path.join(root, rest)
    return value


# --- the report ----------------------------------------------------------------------------------


def render_changes(changes: list[Change]) -> str:
    """A table of the changes grouped by kind, most disruptive first. Provenance changes (a setting
    moved to another line or file) are counted on one line rather than listed."""
    if not changes:
        return "no difference\n"
    moved = [change for change in changes if change.path.startswith("provenance.")]
    shown = [change for change in changes if not change.path.startswith("provenance.")]
    rows: dict[Kind, list[tuple[str, str]]] = {kind: [] for kind in KIND_ORDER}
    for change in shown:
        rows[change.kind].append((change.path, f"{_show(change.old)} → {_show(change.new)}"))
    if moved:
        rows["cosmetic"].append(("provenance", f"{len(moved)} setting(s) now set at another place"))
    width = max(len(path) for group in rows.values() for path, _ in group)
    out: list[str] = []
    for kind in KIND_ORDER:
        count = sum(1 for change in changes if change.kind == kind)
        if not count:
            continue
        out.append(f"{kind} ({count}): {KIND_MEANING[kind]}")
        out += [f"  {path.ljust(width)}  {text}" for path, text in rows[kind]]
        out.append("")
    return "\n".join(out)


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
