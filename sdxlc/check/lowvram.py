"""Checks of the low-VRAM levers (`base fp8`, `offload text encoders`, `offload vae`; docs/ESTIMATE.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers


def fp8_with_finetune(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """float8 storage is for frozen weights: a fine-tune trains the base weights themselves."""
    if not plan["precision"]["base_fp8"] or plan["method"]["kind"] != "finetune":
        return []
    return [make(
        "SDX0611",
        "`base fp8` with a fine-tune: its trained weights cannot be stored in float8",
        layers.span("precision.base_fp8"),
        help="drop `base fp8`; for memory use `full bf16`, `optimizer adafactor` with `fused backward`, "
        "or train a LoRA instead",
    )]


def fp8_with_dora(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """DoRA renormalises each step by its base weight's norm, computed on the stored weight: float8 there
    is refused by torch's type promotion."""
    if not plan["precision"]["base_fp8"] or not plan["method"].get("dora"):
        return []
    return [make(
        "SDX0615",
        "`base fp8` with `dora`: DoRA's weight norm needs the base weights in a compute dtype",
        layers.span("precision.base_fp8"),
        help="drop `base fp8`, or train a plain LoRA, LoHa or LoKr",
    )]


def offload_trained_encoders(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Text encoders that train (a LoRA or fine-tune on them, new embedding rows) stay on the device."""
    method = plan["method"]
    trained = [t for t in method["targets"] if t in ("te1", "te2")]
    if not plan["precision"]["offload_text_encoders"] or not (trained or method["kind"] == "embedding"):
        return []
    what = "+".join(trained) if trained else "the new embedding rows"
    return [make(
        "SDX0612",
        f"`offload text encoders` while the run trains {what}: trained encoders stay on the GPU",
        layers.span("precision.offload_text_encoders"),
        help="drop `offload text encoders`, or train the UNet only (then `cache te` frees them entirely)",
    )]


def offload_on_cpu(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """The CPU profile has no device memory to free: the plan writes the offload words as false."""
    if plan["hardware"]["device"] != "cpu":
        return []
    found = []
    for path, word in (("precision.offload_text_encoders", "offload text encoders"),
                       ("precision.offload_vae", "offload vae")):
        if layers.given(path):
            found.append(make("SDX0613", f"`{word}` on the CPU profile does nothing: everything is in CPU "
                              "memory already", layers.span(path), help=f"drop `{word}`"))
    return found


def fp8_with_fsdp(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """FSDP flattens each unit's parameters into one tensor of one dtype: float8 and bf16 weights cannot
    share one."""
    if not plan["precision"]["base_fp8"] or plan["launch"].get("strategy") != "fsdp":
        return []
    return [make(
        "SDX0614",
        "`base fp8` with `strategy fsdp`: FSDP cannot shard float8 and bf16 weights together",
        layers.span("precision.base_fp8"),
        help="drop `base fp8`, or use `strategy ddp`",
        related=layers.related("launch.strategy", "strategy set here"),
    )]


# (offload path, cache key, offload word, cache word, off word, what the cache holds, the component and
# its verb, what the caching pass encodes)
_MOOT_OFFLOADS = (
    ("precision.offload_text_encoders", "text_encoder", "offload text encoders", "cache te", "no cache te",
     "text-encoder outputs are", "text encoders", "are", "the captions"),
    ("precision.offload_vae", "latents", "offload vae", "cache latents", "no cache latents", "latents are",
     "VAE", "is", "the images"),
)


def offload_with_cache(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """An offload word beside the cache that frees the same component does nothing during the steps:
    the cached component waits in CPU memory after the caching pass either way, and sampling brings it
    to the GPU either way. Decided on the plan's cache values, whether the recipe or a default set them
    (the estimate counts no saving for it: sdxlc/estimate/lowvram.py MOOT)."""
    found = []
    for offload, key, word, cache_word, off_word, held, what, verb, encoded in _MOOT_OFFLOADS:
        if not plan["precision"][offload.split(".", 1)[1]] or not plan["data"]["cache"][key]:
            continue
        set_by = f"`{cache_word}`" if layers.given(f"cache.{key}") else "by default"
        found.append(make(
            "SDX0616",
            f"`{word}` does nothing during the steps: the {held} cached ({set_by}), so the {what} {verb} "
            "not used in them",
            layers.span(offload),
            help=f"drop `{word}`: it only keeps the {what} off the GPU from the model load until the caching "
            f"pass encodes {encoded}; after that pass the {what} {verb} in CPU memory either way, and "
            f"sampling moves the {what} to the GPU with or without it (with `{off_word}` the {what} "
            f"encode{'s' if verb == 'is' else ''} every batch, and `{word}` keeps the GPU free between "
            "batches)",
            related=layers.related(f"cache.{key}", "cached here"),
        ))
    return found


LOWVRAM_CHECKS: tuple[Callable[[dict[str, Any], Layers], list[Diagnostic]], ...] = (
    fp8_with_finetune,
    offload_trained_encoders,
    offload_on_cpu,
    fp8_with_fsdp,
    fp8_with_dora,
    offload_with_cache,
)
