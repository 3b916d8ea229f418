"""`sdxlc cache RECIPE`: fill the recipe's on-disk latent and text-encoder caches before training.

The recipe is compiled as for `run`; the runtime (torch) is imported only once the plan is good.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdxlc.lang.diagnostics import render_text
from sdxlc.pipeline import compile_recipe

EXIT_RECIPE = 1
EXIT_RUN = 2


@click.command("cache")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help="Override a recipe setting.")
@click.option("--profile", default=None, metavar="NAME", help="Plan for this hardware profile.")
def cache_command(recipe: Path, sets: tuple[str, ...], profile: str | None) -> None:
    """Precompute RECIPE's latent and text-encoder caches on disk; print what was encoded and reused."""
    if not recipe.is_file():
        raise click.BadParameter(f"no such recipe file: {recipe}", param_hint="RECIPE")
    compiled = compile_recipe(recipe, sets, profile)
    if compiled.diagnostics:
        click.echo(render_text(compiled.ordered(), compiled.sources, color=sys.stderr.isatty()), err=True)
    if compiled.plan is None:
        sys.exit(EXIT_RECIPE)
    cache = compiled.plan["data"]["cache"]
    if not cache["to_disk"] or not (cache["latents"] or cache["text_encoder"]):
        click.echo("error: nothing to precompute: the recipe needs `cache latents to disk` "
                   "and/or `cache te to disk`", err=True)
        sys.exit(EXIT_RECIPE)
    try:
        from runtime import RunError
        from runtime.cache.store import precompute
    except ImportError as exc:  # the training stack is not installed
        click.echo(f"error: cannot start the runtime: {exc}", err=True)
        sys.exit(EXIT_RUN)
    try:
        report = precompute(compiled.plan)
    except RunError as exc:
        click.echo(f"error: caching failed: {exc}", err=True)
        sys.exit(EXIT_RUN)
    click.echo(f"cache {cache['dir']}")
    for line in report.lines():
        click.echo(f"  {line}")
