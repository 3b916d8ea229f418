"""kohya's files → recipe text: map every setting, note the rest, render in the canonical layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdxlc.lang.fmt import format_recipe
from sdxlc.tools.kohya import control, data, method, optim, training, validation
from sdxlc.tools.kohya.build import Builder
from sdxlc.tools.kohya.leftovers import settle
from sdxlc.tools.kohya.model import KohyaConfig, Note
from sdxlc.tools.kohya.read import read_configs


@dataclass
class Imported:
    text: str
    notes: list[Note]

    @property
    def changes_training(self) -> list[Note]:
        return [note for note in self.notes if note.changes]


def import_kohya(paths: list[Path], recipe_dir: Path) -> Imported:
    """The recipe of kohya's files; paths in it are relative to `recipe_dir`."""
    return build_recipe(read_configs(paths), recipe_dir)


def build_recipe(config: KohyaConfig, recipe_dir: Path) -> Imported:
    b = Builder(config, recipe_dir)
    b.used.add("config_file")  # read with the command line that names it
    b.add("sdx 1")
    method.map_model(b)
    level = data.map_data(b)
    data.map_resolution(b, level)
    kind = method.method_kind(b)
    lr = b.number("learning_rate", 2e-6) or 2e-6
    unet_lr = b.number("unet_lr") if kind == "lora" else None
    if kind == "lora":
        method.map_lora(b, unet_lr or lr)
    elif kind == "finetune":
        method.map_finetune(b, lr)
    elif kind == "lllite":
        control.map_lllite(b)
    else:
        method.map_embedding(b)
    _, relative = optim.map_optimizer(b, unet_lr or lr)
    optim.map_schedule(b, relative)
    training.map_steps(b, level.get("batch_size"))
    training.map_precision(b, kind)
    training.map_noise(b)
    training.map_save(b)
    training.map_sample(b)
    validation.map_validate(b)
    training.map_output(b)
    training.map_launch(b)
    settle(b)
    return Imported(render(b, config), b.notes)


def render(b: Builder, config: KohyaConfig) -> str:
    head = [f"# imported from kohya: {', '.join(config.files)}"]
    body = list(b.lines)
    for remark in b.remarks:
        body.append(f"# differs: {remark}")
    for note in b.notes:
        body.append(f"# {note.text()}" + ("" if note.changes else "  [does not change training]"))
    text = "\n".join([*head, *body]) + "\n"
    return format_recipe(text, "<import>")
