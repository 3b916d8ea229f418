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
    """Check FOLDER (an output folder): its plans, manifest, artifacts and every checkpoint."""
    problems = 0
    for label, found in _checks(folder):
        problems += bool(found)
        click.echo(f"{'DAMAGED' if found else 'ok':<8} {label}")
        for problem in found:
            click.echo("         " + problem.replace("\n", "\n         "))
    if problems:
        click.echo(f"{problems} damaged; `sdxlc run … --resume` falls back to the newest intact checkpoint",
                   err=True)
    sys.exit(EXIT_DAMAGED if problems else EXIT_OK)


def _checks(folder: Path) -> list[tuple[str, list[str]]]:
    checks = [(str(p.relative_to(folder)), _plan(p, folder)) for p in _plans(folder)]
    if not checks:
        checks.append(("plan.json", ["no plan.json: not the output folder of a run"]))
    checks += [(p.name, sums.verify_artifact(p)) for p in sorted(folder.glob("*.safetensors"))]
    root = folder / "checkpoints"
    if root.is_dir():
        torn = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
        note = ["an interrupted save (the next one removes it)"]
        checks += [(f"checkpoints/{name}", note) for name in torn]
    checks += [(f"checkpoints/{p.name}", sums.verify_folder(p)) for p in layout.complete(folder)]
    return checks


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
