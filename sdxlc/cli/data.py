"""`sdxlc cache RECIPE…`: fill the recipes' on-disk latent and text-encoder caches before training;
`--verify` checks every entry, `--prune` removes those no named recipe uses.

The recipe is compiled as for `run`; the runtime (torch) is imported only once the plan is good.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from sdxlc.cli.report import print_plan_warnings
from sdxlc.lang.diagnostics import render_text
from sdxlc.pipeline import compile_recipe

EXIT_RECIPE = 1
EXIT_RUN = 3


@click.command("cache")
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help="Override a recipe setting.")
@click.option("--profile", default=None, metavar="NAME", help="Plan for this hardware profile.")
@click.option("--verify", is_flag=True, help="Check every entry of the recipes' cache folders (header, "
              "tensors, finite values) and remove the damaged ones.")
@click.option("--prune", is_flag=True, help="Remove the entries that none of RECIPES uses (name every recipe "
              "that shares the cache folder).")
def cache_command(recipes: tuple[Path, ...], sets: tuple[str, ...], profile: str | None, verify: bool,
                  prune: bool) -> None:
    """Precompute the RECIPES' latent and text-encoder caches on disk; print what was encoded and reused.

    With --verify or --prune, check or trim the cache folders instead."""
    plans = [_plan(recipe, sets, profile, needs_disk=not (verify or prune)) for recipe in recipes]
    try:
        from runtime import RunError
        from runtime.cache import store
        from runtime.train import conditioning
    except ImportError as exc:  # the training stack is not installed
        click.echo(f"error: cannot start the runtime: {exc}", err=True)
        sys.exit(EXIT_RUN)
    try:
        if verify or prune:
            _maintain(plans, verify, prune, store, conditioning)
            return
        for plan in plans:
            report = conditioning.precompute(plan)
            click.echo(f"cache {plan['data']['cache']['dir']}")
            for line in report.lines():
                click.echo(f"  {line}")
    except RunError as exc:
        click.echo(f"error: caching failed: {exc}", err=True)
        sys.exit(EXIT_RUN)


def _plan(recipe: Path, sets: tuple[str, ...], profile: str | None, needs_disk: bool) -> dict[str, Any]:
    if not recipe.is_file():
        raise click.BadParameter(f"no such recipe file: {recipe}", param_hint="RECIPES")
    compiled = compile_recipe(recipe, sets, profile)
    if compiled.diagnostics:
        click.echo(render_text(compiled.ordered(), compiled.sources, color=sys.stderr.isatty()), err=True)
    if compiled.plan is None:
        sys.exit(EXIT_RECIPE)
    cache = compiled.plan["data"]["cache"]
    print_plan_warnings(compiled.plan)
    if needs_disk and (not cache["to_disk"] or not (cache["latents"] or cache["text_encoder"])):
        click.echo(f"error: {recipe}: nothing to precompute: the recipe needs `cache latents to disk`, "
                   "`cache te to disk` or both (`cache latents cache te to disk`)", err=True)
        sys.exit(EXIT_RECIPE)
    return compiled.plan


def _maintain(plans: list[dict[str, Any]], verify: bool, prune: bool, store: Any, conditioning: Any) -> None:
    if prune and (unused := [p["output"]["name"] for p in plans if not p["data"]["cache"]["to_disk"]]):
        click.echo(f"error: {', '.join(unused)} keeps no cache on disk: --prune would count none of its "
                   "entries as used; name the recipes that cache to disk", err=True)
        sys.exit(EXIT_RECIPE)
    folders = sorted({plan["data"]["cache"]["dir"] for plan in plans})
    for folder in folders:
        click.echo(f"cache {folder}")
        temps, kept = store.remove_stale_temps(folder)
        if temps:
            click.echo(f"  removed {temps} temporary files that interrupted writes left")
        for line in kept:
            click.echo(f"  {line}")
        if verify:
            checked, damaged = store.verify(folder)
            click.echo(f"  verified {checked} entries: {len(damaged)} damaged")
            for line in damaged:
                click.echo(f"  {line}")
        if prune:
            sharing = [p for p in plans if p["data"]["cache"]["dir"] == folder]
            used = set().union(*(conditioning.used_keys(p) for p in sharing))
            kept, removed = store.prune(folder, used)
            click.echo(f"  pruned: {removed} entries no recipe named uses removed, {kept} kept")
