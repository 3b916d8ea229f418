"""`sdxlc lora resize|merge|extract`: kohya-format LoRA files made smaller, merged (into one LoRA or into
a model) and extracted from two models.

Exit codes as for the rest of `sdxlc`: 0 success, 2 usage errors (a missing file, a rank out of range,
files that do not fit each other or the model), 3 the work failed. The runtime (torch) is imported only
inside the commands.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sdxlc.cli.gen import parse_lora

EXIT_USAGE, EXIT_RUN = 2, 3
DYNAMIC = ("fro", "sv_ratio", "sv_cumulative")
T = TypeVar("T")

_out = click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                    help="The .safetensors file to write.")
_config = click.option("--config", type=click.Path(exists=True, file_okay=False, path_type=Path),
                       default=None,
                       help="The diffusers config folder of a single-file model (default: SDXL base's).")


@click.group("lora")
def lora_group() -> None:
    """Resize, merge and extract kohya-format LoRA files."""


def _work(action: Callable[[], T]) -> T:
    """Run a runtime action: its BadRequest is a usage error (exit 2), any other failure exit 3."""
    try:
        from runtime import RunError
        from runtime.tools.lora_svd import BadRequest
    except ImportError as exc:  # the runtime stack is not installed
        click.echo(f"error: cannot start the runtime: {exc}", err=True)
        sys.exit(EXIT_RUN)
    try:
        return action()
    except BadRequest as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except RunError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_RUN)
    except OSError as exc:
        click.echo(f"error: could not write {exc.filename or ''}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_RUN)


def _lora_file(path: Path) -> None:
    if not path.is_file():
        raise click.UsageError(f"no such LoRA file: {path}")


def _not_input(out: Path, inputs: list[Path]) -> None:
    if any(out.resolve() == path.resolve() for path in inputs):
        raise click.UsageError(f"-o {out} is an input: write the result to another file")


@lora_group.command("resize")
@click.argument("source", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@_out
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="The new rank (with --dynamic: the most any module keeps; default the file's).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The new alpha (default: the file's alpha/rank ratio times the new rank, as kohya).")
@click.option("--dynamic", type=(click.Choice(DYNAMIC), click.FloatRange(min=0, min_open=True)), default=None,
              metavar="METHOD R", help="Pick each module's rank: fro R keeps at least the fraction R of its "
              "Frobenius norm; sv_ratio R keeps singular values ≥ the largest/R; sv_cumulative R keeps the "
              "fraction R of their sum.")
@click.option("--quiet", "-q", is_flag=True, help="Only the summary, not the table per module.")
def resize_command(source: Path, out: Path, rank: int | None, alpha: float | None,
                   dynamic: tuple[str, float] | None, quiet: bool) -> None:
    """Resize the LoRA IN to a lower rank by SVD; print the Frobenius norm each module keeps."""
    _lora_file(source)
    _not_input(out, [source])
    if rank is None and dynamic is None:
        raise click.UsageError("give --rank N, or --dynamic METHOD R")
    if alpha is not None and not math.isfinite(alpha):
        raise click.UsageError(f"--alpha {alpha}: not a finite number")
    if dynamic is not None and not math.isfinite(dynamic[1]):
        raise click.UsageError(f"--dynamic {dynamic[0]} {dynamic[1]}: not a finite number")

    def action() -> Any:
        from runtime.tools.lora_resize import resize

        return resize(source, out, rank, alpha, dynamic)

    done = _work(action)
    if not quiet:
        width = max(len(row.key) for row in done.rows)
        click.echo(f"{'module':<{width}}  rank  kept fro")
        for row in done.rows:
            click.echo(f"{row.key:<{width}}  {row.old_rank:>2}→{row.new_rank:<2} {row.kept_fro:8.4f}")
    click.echo(f"kept Frobenius norm over {len(done.rows)} modules: min {done.min_kept:.4f}, "
               f"mean {done.mean_kept:.4f}, whole LoRA {done.overall_kept:.4f}")
    click.echo(f"wrote {done.path}")


@lora_group.command("merge")
@click.option("--model", "-m", default=None,
              help="Merge into this model (`tiny`, a diffusers folder, a single file or a hub id) and "
                   "write a single-file checkpoint; without it the LoRAs merge into one LoRA.")
@_config
@click.option("--lora", "loras", multiple=True, required=True, metavar="FILE[:WEIGHT]",
              help="A kohya-format LoRA file and its weight (default 1.0); repeatable.")
@_out
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="Into one LoRA: factor the weighted sum to this rank by SVD (default: the ranks "
                   "concatenated).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Tensor type written (default: fp16 for a model, the first LoRA's for a LoRA).")
def merge_command(model: str | None, config: Path | None, loras: tuple[str, ...], out: Path,
                  rank: int | None, dtype: str | None) -> None:
    """Merge weighted LoRAs into a model (a single-file checkpoint) or into one LoRA."""
    parsed = [parse_lora(text) for text in loras]
    for path, _ in parsed:
        _lora_file(path)
    _not_input(out, [path for path, _ in parsed])
    if model is not None and rank is not None:
        raise click.UsageError("--rank sets the rank of a merged LoRA; with --model the LoRAs go into the "
                               "model")
    if model is not None:
        _check_model(model)
    _not_in_model(out, [str(p) for p in (model, config) if p is not None])
    _check_config(config, [model] if model is not None else [])

    def action() -> Any:
        from runtime.tools.lora_extract import DTYPES
        from runtime.tools.lora_merge import merge_into_model, merge_loras

        if model is not None:
            return merge_into_model(model, config, parsed, out, DTYPES[dtype or "fp16"])
        return merge_loras(parsed, out, rank, DTYPES[dtype] if dtype else None)

    done = _work(action)
    if done.kept_fro:
        values = list(done.kept_fro.values())
        click.echo(f"kept Frobenius norm at rank {rank}: min {min(values):.4f}, "
                   f"mean {sum(values) / len(values):.4f} over {len(values)} modules")
    what = f"into {model}" if model is not None else "into one LoRA"
    click.echo(f"merged {len(parsed)} LoRA(s) ({done.modules} modules) {what}: wrote {done.path}")


def _not_in_model(out: Path, models: list[str]) -> None:
    """-o must not replace a model file or a file inside a model folder (or a --config folder)."""
    target = out.expanduser().resolve()
    for model in models:
        path = Path(model).expanduser()
        if path.exists() and (target == path.resolve() or path.resolve() in target.parents):
            raise click.UsageError(f"-o {out} is the model {model} or inside it: write the result elsewhere")


def _check_config(config: Path | None, models: list[str]) -> None:
    if config is not None and not any(Path(model).expanduser().is_file() for model in models):
        raise click.UsageError("--config describes a single-file model, and no model is a single file")


def _check_model(model: str) -> None:
    from sdxlc.resolve.model_source import sdxl_problem

    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors" and (problem := sdxl_problem(path)):
        raise click.UsageError(f"{model}: {problem}")


@lora_group.command("extract")
@click.option("--base", required=True,
              help="The model before tuning (`tiny`, a folder, a single file, a hub id).")
@click.option("--tuned", required=True, help="The tuned model, of the same architecture.")
@_config
@click.option("--rank", type=click.IntRange(min=1), required=True, help="The rank of the extracted LoRA.")
@_out
@click.option("--te", is_flag=True, help="Also extract the text encoders' changes (lora_te1_/lora_te2_).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the SVDs run (auto: CUDA when there is one, else the CPU).")
def extract_command(base: str, tuned: str, config: Path | None, rank: int, out: Path, te: bool,
                    dtype: str, device: str) -> None:
    """Extract a LoRA from the weight differences of two models, on sdxlc's LoRA layers (attention, ff,
    proj, conv and emb in the UNet; attention and MLP in the text encoders)."""
    from sdxlc.resolve.method import TE_MODULES, UNET_MODULES

    for model in (base, tuned):
        _check_model(model)
    _not_in_model(out, [str(p) for p in (base, tuned, config) if p is not None])
    _check_config(config, [base, tuned])
    unet = [name for names in UNET_MODULES.values() for name in names]
    text = [name for names in TE_MODULES.values() for name in names] if te else []

    def action() -> Any:
        from runtime.tools.lora_extract import extract

        return extract(base, tuned, out, rank, unet, text, config, dtype, device)

    done = _work(action)
    values = list(done.kept_fro.values())
    full = max(done.full_rank.values())
    kept = f"at rank {rank}"
    if rank > full:
        kept = f"at rank {full} (asked {rank}: no change has a higher rank)"
    click.echo(f"{len(values)} changed modules ({done.unchanged} unchanged left out), their change of rank "
               f"up to {full}; kept Frobenius norm {kept}: min {min(values):.4f}, "
               f"mean {sum(values) / len(values):.4f}")
    click.echo(f"wrote {done.path}")
