"""Paths a run must never follow, read as data or write to: checked before anything is scanned.

A `data` folder at a filesystem root would scan the whole machine, one inside /proc, /sys or /dev
reads the kernel's files (some never end); an `output` folder there would write into them. An output
folder inside a data folder makes the run's samples and saves training images of the next run, and
a data folder inside the output folder is written by the run that reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdxlc.lang.defaults import default_output
from sdxlc.lang.diagnostics import Diagnostic, make, shown
from sdxlc.lang.layers import Layers
from sdxlc.lang.limits import in_system_folder
from sdxlc.lang.lower import Lowered
from sdxlc.resolve.datasets import MANIFEST_EXTENSIONS

PATH_SETTINGS = ("model.source", "model.config", "model.vae", "lora.from", "output.dir")


def dangerous_paths(lowered: Lowered, recipe: Path) -> list[Diagnostic]:
    """Errors for paths that cannot be resolved (a symlink loop), and for `data` and `output` folders at
    a root, in a system folder, or inside each other."""
    layers = Layers(lowered, "sdxl")  # only for spans and base folders: defaults play no part
    recipe_dir = Path(os.path.abspath(recipe)).parent
    looping = _loops(layers, recipe_dir)
    if looping:
        return looping
    output = _output(layers, recipe, recipe_dir)
    found = []
    if output is not None and (why := _system(output)) is not None:
        found.append(make("SDX0508", f"the output folder `{shown(str(output))}` is {why}",
                          layers.span("output.dir"), help="write the run's results to a folder of your own, "
                          "e.g. `output \"out/NAME\"`"))
        output = None  # said: whether the data lies inside it adds nothing
    for index, item in enumerate(lowered.doc.get("data") or []):
        given = item.get("path") if isinstance(item, dict) else None
        if not isinstance(given, str) or not given:
            continue
        path = f"data.{index}.path"
        folder = _real(layers.base_dir(path, recipe_dir) / given)
        if folder is None:
            continue
        if (why := _system(folder)) is not None:
            found.append(make("SDX0508", f"the data folder `{shown(str(folder))}` is {why}",
                              layers.span(path), help="name the folder that holds the training images"))
        elif output is not None and folder.suffix.lower() not in MANIFEST_EXTENSIONS:
            found += _nested(layers, path, folder, output)
    return found


def _loops(layers: Layers, recipe_dir: Path) -> list[Diagnostic]:
    """A path the recipe gives that cannot be resolved: links that loop, or a name the OS refuses."""
    paths = list(PATH_SETTINGS) + [f"data.{i}.path" for i in range(len(layers.doc.get("data") or []))]
    found = []
    for path in paths:
        given = layers.get(path)[0] if layers.given(path) else None
        if not isinstance(given, str):
            continue
        try:
            (layers.base_dir(path, recipe_dir) / given).resolve()
        except (OSError, RuntimeError, ValueError) as error:
            why = "its links loop" if isinstance(error, RuntimeError) else (
                getattr(error, "strerror", None) or str(error))
            found.append(make("SDX0516", f"`{path}` `{shown(given)}` cannot be resolved: {why}",
                              layers.span(path), help="name a path whose links end in a real file or folder"))
    return found


def _output(layers: Layers, recipe: Path, recipe_dir: Path) -> Path | None:
    given = layers.get("output.dir", default_output(recipe.stem))[0]
    if not isinstance(given, str) or not given:
        return None
    return _real(layers.base_dir("output.dir", recipe_dir) / given)


def _nested(layers: Layers, path: str, data: Path, output: Path) -> list[Diagnostic]:
    span = layers.span("output.dir") or layers.span(path)
    related = layers.related(path, "data folder set here") if layers.span("output.dir") else ()
    if output == data or data in output.parents:
        what = "is the data folder" if output == data else f"is inside the data folder `{shown(str(data))}`"
        return [make("SDX0509", f"the output folder `{shown(str(output))}` {what}: the run's samples and "
                     "saves would become training images", span, related=related,
                     help="put `output` beside the data, e.g. `output \"out/NAME\"`")]
    if output in data.parents:
        return [make("SDX0509", f"the data folder `{shown(str(data))}` is inside the output folder "
                     f"`{shown(str(output))}`: the run would write among its own training data",
                     span, related=related,
                     help="keep the data out of the output folder")]
    return []


def _system(folder: Path) -> str | None:
    """Why a folder must not be read or written by a run, or None."""
    if folder.parent == folder:
        return "a filesystem root"
    system = in_system_folder(folder)
    return f"in {system}, a system folder of the kernel and devices" if system is not None else None


def _real(path: Path) -> Path | None:
    """The absolute path with links resolved (None when the path cannot be resolved at all)."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return None
