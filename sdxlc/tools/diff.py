"""Read the sides of `sdxlc diff`: recipes (compiled or at a git revision), output folders, plan files.

A side is read by `load_side`:

- `x.sdx`: the recipe is compiled (with the profile it names);
- `x.sdx@REV`: the recipe as committed at git revision REV (see `recipe_at_revision`);
- a folder: the `plan.json` inside it (an output or checkpoint folder of a run);
- any other file: a plan JSON file.

The comparison itself is the pure `sdxlc.plan.diff`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic
from sdxlc.pipeline import compile_recipe
from sdxlc.plan import manifest
from sdxlc.plan.manifest import Manifest


class SideError(Exception):
    """A side of a diff that cannot be read or compiled; `diagnostics` and `sources` when it is a recipe."""

    def __init__(
        self, message: str, diagnostics: list[Diagnostic] | None = None, sources: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.diagnostics = diagnostics or []
        self.sources = sources or {}



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
    except RecursionError as error:
        raise SideError(f"cannot read a plan from `{spec}`: JSON nested too deeply") from error
    if not isinstance(plan, dict):
        raise SideError(f"`{spec}` does not hold a plan (a JSON object)")
    return plan


def side_manifests(specs: tuple[str, str], plans: list[dict[str, Any]]) -> tuple[Manifest, Manifest] | None:
    """The sample manifests of both sides (beside a plan file or output folder's plan, else in the cache
    folder's store, where compiling a recipe keeps it); None when either cannot be found intact."""
    found = []
    for spec, plan in zip(specs, plans, strict=True):
        summary = plan.get("data", {}).get("manifest")
        if not isinstance(summary, dict) or "file" not in summary:
            return None
        path = Path(spec)
        plan_file = path / "plan.json" if path.is_dir() else path if path.suffix != ".sdx" else None
        places = manifest.candidates(summary, plan_file, plan["data"].get("cache", {}).get("dir"))
        try:
            found.append(manifest.load(summary, places))
        except (manifest.ManifestError, KeyError, TypeError):
            return None
    return found[0], found[1]


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


