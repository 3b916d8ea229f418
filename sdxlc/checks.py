"""Named semantic checks: combinations that are valid JSON but wrong for an SDXL run.

Each check is one function with one diagnostic code. They read the resolved plan and point at the
recipe line that caused the problem. They never change anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdxlc.diagnostics import Diagnostic, Span, make
from sdxlc.layers import Layers

Check = Callable[[dict[str, Any], Layers], list[Diagnostic]]


def cached_te_with_caption_changes(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Cached text-encoder outputs are fixed: shuffled or dropped captions would never be seen."""
    if not plan["data"]["cache"]["text_encoder"]:
        return []
    found = []
    for index, dataset in enumerate(plan["data"]["datasets"]):
        for key, what in (("shuffle", "a shuffled caption"), ("caption_dropout", "caption dropout")):
            if dataset[key]:
                found.append(
                    make(
                        "SDX0520",
                        f"cached text-encoder outputs cannot follow {what}",
                        layers.span(f"data.{index}.{key}") or layers.span(f"data.{index}.path"),
                        help=f"remove `{'shuffle' if key == 'shuffle' else 'dropout'}` or drop `cache te`",
                        related=_related(layers, "cache.text_encoder", "text-encoder caching set here"),
                    )
                )
    return found


def cached_te_with_te_training(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """A text encoder that is being trained cannot have its outputs cached."""
    trained = [t for t in plan["method"]["targets"] if t in ("te1", "te2")]
    if not (trained and plan["data"]["cache"]["text_encoder"]):
        return []
    return [
        make(
            "SDX0521",
            f"`cache te` with LoRA on {'+'.join(trained)}: their outputs change every step",
            layers.span("cache.text_encoder"),
            help="drop `cache te` or train `on unet` only",
            related=_related(layers, "lora.targets", "text-encoder training set here"),
        )
    ]


def text_encoder_lora_unsupported(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    trained = [t for t in plan["method"]["targets"] if t in ("te1", "te2")]
    if not trained:
        return []
    return [
        make(
            "SDX0526",
            f"LoRA on the text encoders ({'+'.join(trained)}) is not supported yet",
            layers.span("lora.targets"),
            help="train `on unet`",
        )
    ]


def bucket_step_multiple_of_32(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """SDXL's VAE halves 3 times and its UNet twice more: every side must be a multiple of 32."""
    buckets = plan["data"]["buckets"]
    found = []
    size = plan["data"]["resolution"]
    if buckets["enabled"] and buckets["step"] % 32:
        found.append(
            make(
                "SDX0522",
                f"bucket step {buckets['step']} is not a multiple of 32",
                layers.span("resolution.step"),
                help="use `step 32` or `step 64`",
            )
        )
    if plan["data"]["resolution"] % 32:
        found.append(
            make(
                "SDX0522",
                f"resolution {plan['data']['resolution']} is not a multiple of 32",
                layers.span("resolution.size"),
                help=f"use {_round32(size)} or {_round32(size) + 32}",
            )
        )
    return found


def fp16_with_stock_vae(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """The stock SDXL VAE overflows in fp16 and yields NaN latents."""
    model, precision = plan["model"], plan["precision"]
    if model["kind"] == "tiny" or model["vae"] or precision["mixed"] != "fp16" or precision["vae_fp32"]:
        return []
    return [
        make(
            "SDX0523",
            "fp16 with the stock SDXL VAE produces NaN latents",
            layers.span("precision.mixed"),
            help='add `vae "madebyollin/sdxl-vae-fp16-fix"`, or `vae fp32`, or use bf16',
        )
    ]


def precision_supported(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    hardware, mixed = plan["hardware"], plan["precision"]["mixed"]
    if mixed == "fp32" or hardware[mixed]:
        return []
    return [
        make(
            "SDX0524",
            f"{mixed} is not supported on {hardware['name']}",
            layers.span("precision.mixed"),
            help="use fp16 with `vae fp32`" if mixed == "bf16" else "use fp32",
        )
    ]


def timestep_range(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    training = plan["training"]
    if training["timestep_min"] < training["timestep_max"]:
        return []
    return [
        make(
            "SDX0528",
            f"empty timestep range {training['timestep_min']}..{training['timestep_max']}",
            layers.span("noise.timestep_min"),
            help="the first number must be smaller, e.g. `timesteps 0..1000`",
        )
    ]


def something_to_train(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    block_lr = plan["method"]["block_lr"]
    if block_lr is None or any(block_lr):
        return []
    return [
        make(
            "SDX0529",
            "every `block_lr` is 0: nothing would train",
            layers.span("block_lr"),
            help="give at least one block a learning rate",
        )
    ]


CHECKS: tuple[Check, ...] = (
    cached_te_with_caption_changes,
    cached_te_with_te_training,
    text_encoder_lora_unsupported,
    bucket_step_multiple_of_32,
    fp16_with_stock_vae,
    precision_supported,
    timestep_range,
    something_to_train,
)


def _round32(value: int) -> int:
    return value // 32 * 32


def run_checks(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for check in CHECKS:
        found.extend(check(plan, layers))
    return found


def _related(layers: Layers, path: str, label: str) -> tuple[tuple[Span, str], ...]:
    span = layers.span(path)
    return ((span, label),) if span is not None else ()
