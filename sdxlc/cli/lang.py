"""The commands around the recipe language: `fmt`, `explain` and `diff`.

Exit codes as for the rest of `sdxlc`: 0 success, 1 recipe errors (a syntax error for `fmt`, a file
that `fmt --check` would change, a `diff` side that does not compile), 2 usage errors.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

import click

from sdxlc.lang.diagnostics import did_you_mean, render_text
from sdxlc.plan.files import write_atomic

EXIT_OK, EXIT_RECIPE = 0, 1

_files_arg = click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))


@click.command("fmt")
@_files_arg
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if any file would be reformatted.")
@click.option("--diff", "show_diff", is_flag=True, help="Change nothing; print what would change as a diff.")
def fmt_command(files: tuple[Path, ...], check: bool, show_diff: bool) -> None:
    """Rewrite the recipe FILES in the canonical layout (comments kept; the meaning never changes)."""
    from sdxlc.lang.fmt import FormatError, RecipeSyntaxError, format_recipe

    failed = changed = 0
    for file in files:
        try:
            text = file.read_bytes().decode("utf-8")  # as stored: `\r\n` line ends are not canonical
        except (OSError, UnicodeDecodeError) as error:
            click.echo(f"error: cannot read {file}: {error}", err=True)
            failed += 1
            continue
        try:
            result = format_recipe(text, str(file))
        except RecipeSyntaxError as error:
            click.echo(render_text(error.diagnostics, {str(file): text}, color=sys.stderr.isatty()), err=True)
            click.echo(f"{file}: not formatted (syntax errors)", err=True)
            failed += 1
            continue
        except FormatError as error:
            click.echo(f"error: {error}", err=True)
            failed += 1
            continue
        if result == text:
            continue
        changed += 1
        if show_diff:
            before, after = text.splitlines(keepends=True), result.splitlines(keepends=True)
            lines = difflib.unified_diff(before, after, str(file), f"{file} (formatted)")
            click.echo("".join(lines), nl=False)
        if check or show_diff:
            click.echo(f"would reformat {file}", err=True)
        else:
            try:
                write_atomic(file, result.encode("utf-8"))  # a full disk never truncates the recipe
            except OSError as exc:
                click.echo(f"error: cannot write {file}: {exc.strerror or exc}; it is unchanged", err=True)
                sys.exit(3)
            click.echo(f"reformatted {file}", err=True)
    verb = "would be reformatted" if check or show_diff else "reformatted"
    unchanged = len(files) - changed - failed
    click.echo(f"{changed} file(s) {verb}, {unchanged} unchanged, {failed} failed", err=True)
    sys.exit(EXIT_RECIPE if failed or (check and changed) else EXIT_OK)


@click.command("explain")
@click.argument("topic")
def explain_command(topic: str) -> None:
    """Reference text of TOPIC: a recipe word or value, a schema path, a diagnostic code or a profile."""
    from sdxlc.tools.explain import explain, topics

    text = explain(topic)
    if text is None:
        best = did_you_mean(topic, topics())
        hint = f"; did you mean `{best}`?" if best else "; try a word, a path like `optimizer.lr` or a code"
        raise click.BadParameter(f"nothing is called `{topic}`{hint}", param_hint="TOPIC")
    click.echo(text, nl=False)


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
def diff_command(a: str, b: str, as_json: bool) -> None:
    """The semantic difference of two plans, each change classed by what it affects.

    A and B may each be a recipe (`x.sdx`), a recipe at a git revision (`x.sdx@HEAD~1`), a plan JSON
    file, or a run's output folder holding `plan.json`.
    """
    from sdxlc.plan.diff import diff_plans, render_changes
    from sdxlc.tools.diff import SideError, load_side, side_manifests

    plans = []
    for spec in (a, b):
        try:
            plans.append(load_side(spec))
        except SideError as error:
            if error.diagnostics:
                click.echo(render_text(error.diagnostics, error.sources, color=sys.stderr.isatty()), err=True)
            click.echo(f"error: {error.message}", err=True)
            sys.exit(EXIT_RECIPE)
    changes = diff_plans(plans[0], plans[1], side_manifests((a, b), plans))
    if as_json:
        counts: dict[str, int] = {}
        for change in changes:
            counts[change.kind] = counts.get(change.kind, 0) + 1
        body = {"a": a, "b": b, "kinds": counts, "changes": [change.to_json() for change in changes]}
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        click.echo(render_changes(changes), nl=False)
    sys.exit(EXIT_OK)


__all__ = ["diff_command", "explain_command", "fmt_command"]
