"""`sdxlc import kohya FILE…` and `sdxlc export kohya RECIPE -o DIR`: kohya-ss/sd-scripts configs to a
recipe and back (docs/KOHYA.md).

Exit codes: 0 done; 1 a kohya setting that changes training has no recipe word (import; the recipe is
still written, with a comment at it), or the recipe does not compile (export); 2 a usage error (a missing
or malformed file, an existing output without `--force`); 3 the output cannot be written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdxlc.plan.files import write_atomic

EXIT_OK, EXIT_RECIPE, EXIT_USAGE, EXIT_WRITE = 0, 1, 2, 3


@click.group("import")
def import_group() -> None:
    """Turn another trainer's configuration into a recipe."""


@import_group.command("kohya")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the recipe here (paths in it relative to its folder); default: print it.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def import_kohya_command(files: tuple[Path, ...], output: Path | None, force: bool) -> None:
    """A recipe from kohya FILES: dataset TOML, training TOML (--config_file), kohya_ss GUI JSON or a saved
    command line, in any combination (a later file's setting wins).

    Every setting without a recipe word becomes a `# not mapped:` comment; exit 1 when one of them
    changes training."""
    from sdxlc.tools.kohya.convert import import_kohya
    from sdxlc.tools.kohya.model import KohyaError

    if output is not None and output.exists() and not force:
        raise click.UsageError(f"{output} exists; add --force to replace it")
    if output is not None and any(output.resolve() == path.resolve() for path in files):
        raise click.UsageError(f"-o {output} is an input: write the recipe to another file")
    if output is not None and output.exists() and not output.is_file():
        raise click.UsageError(f"-o {output} is not a regular file")
    folder = (output.parent if output is not None else Path.cwd()).resolve()
    try:
        imported = import_kohya(list(files), folder)
    except KohyaError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    if output is None:
        click.echo(imported.text, nl=False)
    else:
        _write(output, imported.text.encode("utf-8"))
        click.echo(f"wrote {output}", err=True)
    for note in imported.changes_training:
        click.echo(f"warning: {note.text()}", err=True)
    sys.exit(EXIT_RECIPE if imported.changes_training else EXIT_OK)


@click.group("export")
def export_group() -> None:
    """Write another trainer's configuration from a recipe."""


@export_group.command("kohya")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for config.toml (sd-scripts' --config_file) and dataset.toml.")
@click.option("--profile", default=None, metavar="NAME", help="Plan for this hardware profile.")
@click.option("--force", is_flag=True, help="Replace existing files in the folder.")
def export_kohya_command(recipe: Path, folder: Path, profile: str | None, force: bool) -> None:
    """kohya's config.toml and dataset.toml for RECIPE's resolved plan; what kohya lacks is a comment."""
    from sdxlc.lang.diagnostics import render_text
    from sdxlc.pipeline import compile_recipe
    from sdxlc.tools.kohya.export import export_files, script_for

    if not recipe.is_file():
        raise click.BadParameter(f"no such recipe file: {recipe}", param_hint="RECIPE")
    written = ("config.toml", "dataset.toml", "prompts.txt")  # what export_files may write
    if any((folder / name).resolve() == recipe.resolve() for name in written):
        raise click.UsageError(f"-o {folder} would replace the recipe {recipe}: write to another folder")
    compiled = compile_recipe(recipe, (), profile)
    if compiled.diagnostics and compiled.errors:
        click.echo(render_text(compiled.ordered(), compiled.sources, color=sys.stderr.isatty()), err=True)
    if compiled.plan is None:
        sys.exit(EXIT_RECIPE)
    files = export_files(compiled.plan, folder.resolve())
    taken = [name for name in files if (folder / name).exists()]
    if taken and not force:
        raise click.UsageError(f"{folder / taken[0]} exists; add --force to replace it")
    for name, text in files.items():
        _write(folder / name, text.encode("utf-8"))
        click.echo(f"wrote {folder / name}", err=True)
    click.echo(f"train with: accelerate launch {script_for(compiled.plan)} --config_file "
               f"{folder / 'config.toml'}", err=True)


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as error:
        click.echo(f"error: cannot write {path}: {error.strerror or error}", err=True)
        sys.exit(EXIT_WRITE)


__all__ = ["export_group", "import_group"]
