"""`sdxlc gen`: images from a base model with weighted LoRAs, textual-inversion embeddings and a
ControlNet-LLLite network with its control image.

Exit codes as for the rest of `sdxlc`: 0 success, 2 usage errors, 3 the generation failed. The runtime
(torch, diffusers) is imported only inside the command, so importing this module stays light.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

EXIT_USAGE, EXIT_RUN = 2, 3
SAMPLERS = ("euler", "euler_a", "dpm++2m", "ddim")  # runtime/gen/generate.py maps them to schedulers
LLLITE_STRIDE = 32  # the LLLite stem of depth 3 layers: the image side ÷ 32 (docs/METHODS.md)


def parse_lora(text: str, option: str = "--lora") -> tuple[Path, float]:
    """`file.safetensors:0.8` → (file, 0.8); without a weight, 1.0. `option` names the flag in errors."""
    path, sep, weight = text.rpartition(":")
    if sep and path:
        try:
            value = float(weight)
        except ValueError:
            # `file.safetensors:abc` is a mistyped weight, not a file name (`C:/x.safetensors` is a path)
            if path.lower().endswith(".safetensors") and not Path(text).exists():
                raise click.UsageError(f"{option} {text}: the weight {weight} is not a number") from None
            return Path(text), 1.0
        if not math.isfinite(value):
            raise click.UsageError(f"{option} {text}: the weight {weight} is not a finite number")
        return Path(path), value
    return Path(text), 1.0


def parse_embedding(text: str) -> tuple[Path, str]:
    """`file.safetensors:token` → (file, token); without a token, the file's stem."""
    path, sep, token = text.rpartition(":")
    if sep and path and token and "/" not in token and "\\" not in token:
        return Path(path), token
    return Path(text), Path(text).stem


def read_prompts(prompts: tuple[str, ...], prompt_file: Path | None) -> list[str]:
    """The `--prompt` values, then the non-empty lines of the prompt file (`#` starts a comment line)."""
    found = [p for p in prompts if p.strip()]
    if prompt_file is not None:
        try:
            lines = prompt_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"cannot read the prompt file {prompt_file}: {exc}") from exc
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not found:
        raise click.UsageError("no prompt: give --prompt TEXT or --prompts FILE")
    return found


def _size(value: int | None) -> int | None:
    if value is not None and value % 8:
        raise click.BadParameter(f"{value} is not a multiple of 8")
    return value


def _check_model(model: str) -> None:
    """A single file given as the model must be an SDXL checkpoint (not a LoRA or an embedding)."""
    from sdxlc.resolve.model_source import sdxl_problem

    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors" and (problem := sdxl_problem(path)):
        raise click.UsageError(f"--model {model}: {problem}")


def _check_lllite(lllite: str | None, control: Path | None) -> None:
    """--lllite and --control come together; the control image must be a file."""
    if lllite and control is None:
        raise click.UsageError("--lllite needs --control IMAGE: the network draws from a control image")
    if control is not None and not lllite:
        raise click.UsageError("--control needs --lllite FILE: only a ControlNet-LLLite network uses it")
    if control is not None and not control.is_file():
        raise click.UsageError(f"--control {control}: no such image file")
    if control is not None:  # before the model loads: a file that is no image, or a truncated one
        from sdxlc.resolve.index import probe_image

        if (problem := probe_image(control).error) is not None:
            raise click.UsageError(f"--control {control}: {problem}")


@click.command("gen")
@click.option("--model", "-m", default="tiny", show_default=True,
              help="Base model: `tiny`, a diffusers folder or a hub id.")
@click.option("--vae", default=None, help="Replacement VAE: a diffusers folder, a single file or a hub id.")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:WEIGHT]",
              help="A kohya-format LoRA file and its weight (default 1.0); repeatable.")
@click.option("--embedding", "embeddings", multiple=True, metavar="FILE[:TOKEN]",
              help="A textual-inversion file {clip_l, clip_g} and its token (default: the file name); "
                   "repeatable.")
@click.option("--lllite", default=None, metavar="FILE[:WEIGHT]",
              help="A kohya ControlNet-LLLite file and its multiplier (default 1.0); needs --control.")
@click.option("--control", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The control image of --lllite (resized to the image size), for every prompt.")
@click.option("--prompt", "-p", "prompts", multiple=True, help="A prompt; repeatable.")
@click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file with one prompt per line.")
@click.option("--negative", "-n", default="", help="Negative prompt (for every prompt).")
@click.option("--width", "-W", type=click.IntRange(min=8), default=None,
              help="Image width (a multiple of 8; default: the model's size).")
@click.option("--height", "-H", type=click.IntRange(min=8), default=None,
              help="Image height (a multiple of 8; default: the model's size).")
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True, help="Denoising steps.")
@click.option("--cfg", "--guidance", "cfg", type=click.FloatRange(min=0), default=7.0, show_default=True,
              help="Classifier-free guidance scale.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="euler", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="First seed.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per prompt, at seeds SEED..SEED+COUNT-1.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per denoising pass.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("gen"),
              show_default=True, help="Folder for the PNG files (numbered after those already there).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
              show_default=True, help="auto: fp32 on the CPU, bf16 (or fp16) on CUDA.")
@click.option("--quiet", "-q", is_flag=True, help="No progress: print only the files written.")
def gen_command(model: str, vae: str | None, loras: tuple[str, ...], embeddings: tuple[str, ...],
                lllite: str | None, control: Path | None, prompts: tuple[str, ...], prompt_file: Path | None,
                negative: str, width: int | None,
                height: int | None, steps: int, cfg: float, sampler: str, seed: int, count: int, batch: int,
                out: Path, device: str, precision: str, quiet: bool) -> None:
    """Generate images from prompts with a base model, LoRAs and embeddings; PNGs carry their settings."""
    texts = read_prompts(prompts, prompt_file)
    _check_model(model)
    _check_lllite(lllite, control)
    try:
        width, height = _size(width), _size(height)
    except click.BadParameter as exc:
        raise click.UsageError(str(exc)) from exc
    for name, value in (("--width", width), ("--height", height)):
        if lllite and value is not None and value % LLLITE_STRIDE:  # else its deepest layers misalign
            raise click.UsageError(f"{name} {value}: with --lllite the image size must be a multiple of "
                                   f"{LLLITE_STRIDE} (its deepest control stem divides it by that)")
    try:
        from runtime import RunError
        from runtime.gen.generate import GenRequest, generate
    except ImportError as exc:  # the runtime stack is not installed
        click.echo(f"error: cannot start the runtime: {exc}", err=True)
        sys.exit(EXIT_RUN)
    request = GenRequest(
        model=model, prompts=texts, out=out, negative=negative, width=width, height=height, steps=steps,
        cfg=cfg, sampler=sampler, seed=seed, count=count, batch=batch,
        loras=[parse_lora(text) for text in loras], embeddings=[parse_embedding(text) for text in embeddings],
        vae=vae, device=device, precision=precision,
        lllite=parse_lora(lllite, "--lllite") if lllite else None, control=control,
    )
    if not quiet:
        click.echo(f"{len(texts)} prompt(s) x {count} seed(s) from {seed}, {width or 'native'}x"
                   f"{height or 'native'}, {steps} steps, cfg {cfg}, {sampler}", err=True)
    try:
        generate(request, on_file=lambda path: click.echo(str(path)), progress=not quiet)
    except RunError as exc:
        click.echo(f"error: generation failed: {exc}", err=True)
        sys.exit(EXIT_RUN)
    except OSError as exc:  # a full disk or an unwritable folder: the images written so far are whole
        click.echo(f"error: could not write to {exc.filename or out}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_RUN)
