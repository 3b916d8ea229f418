"""`sdxlc runs verify DIR`: check an output folder's plan, manifest, artifacts and checkpoints.

Every checkpoint folder ends with a `SHA256SUMS` and every artifact has a `.sha256` beside it
(`sdxlc.plan.sums`); this reads them all back. Exit 0 when everything is intact, 3 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdxlc.plan import contract, layout, manifest, sums

EXIT_OK, EXIT_DAMAGED = 0, 3


@click.group("runs")
def runs_command() -> None:
    """Inspect the output folders of runs."""


@runs_command.command("verify")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
def verify_command(folder: Path) -> None:
    """Check FOLDER (an output folder): its plans, manifest, artifacts and every checkpoint.

    `previous/` (runs moved aside by `--overwrite`) can be checked by naming its folders."""
    plans = _plans(folder)
    if not plans:
        raise click.UsageError(f"{folder} holds no plan.json: it is not the output folder of a run")
    problems = 0
    for label, found in _checks(folder, plans):
        problems += bool(found)
        click.echo(f"{'DAMAGED' if found else 'ok':<8} {label}")
        for problem in found:
            click.echo("         " + problem.replace("\n", "\n         "))
    for note in _notes(folder):
        click.echo(f"{'note':<8} {note}")
    if problems:
        click.echo(f"{problems} damaged; `sdxlc run … --resume` falls back to the newest intact checkpoint",
                   err=True)
    sys.exit(EXIT_DAMAGED if problems else EXIT_OK)


def _checks(folder: Path, plans: list[Path]) -> list[tuple[str, list[str]]]:
    checks = [(str(p.relative_to(folder)), _plan(p, folder)) for p in plans]
    artifacts = {p for p in folder.glob("*.safetensors")}
    artifacts |= {p.with_name(p.name.removesuffix(sums.SIDECAR)) for p in folder.glob("*.safetensors.sha256")}
    checks += [(p.name, sums.verify_artifact(p)) for p in sorted(artifacts)]
    checks += [(f"checkpoints/{p.name}", sums.verify_folder(p, layout.CHECKPOINT_FILES))
               for p in layout.complete(folder)]
    return checks


def _notes(folder: Path) -> list[str]:
    """What is not damage: a save interrupted by a kill (the next save removes it), runs moved aside."""
    root, notes = folder / "checkpoints", []
    if root.is_dir():
        notes += [f"checkpoints/{p.name}: an interrupted save (the next one removes it)"
                  for p in sorted(root.iterdir()) if p.name.startswith(".")]
    previous = folder / layout.PREVIOUS
    if previous.is_dir():
        notes += [f"{layout.PREVIOUS}/{p.name}: an earlier run moved aside (`runs verify {p}` checks it)"
                  for p in sorted(previous.iterdir())]
    return notes


def _plans(folder: Path) -> list[Path]:
    original = [folder / "plan.json"] if (folder / "plan.json").is_file() else []
    return original + sorted((folder / layout.PLANS).glob("resume-*.json"))


def _plan(path: Path, folder: Path) -> list[str]:
    try:
        plan = contract.read(path)
    except contract.PlanError as exc:
        return [str(exc)]
    summary = plan["data"]["manifest"]
    try:
        manifest.load(summary, [folder / summary["file"]])
    except manifest.ManifestError as exc:
        return [str(exc)]
    return []
