"""Named checks of the training method (docs/METHODS.md): one method per recipe, and the settings each
method needs or cannot use. Registered in sdxlc/check/semantic.py's CHECKS."""

from __future__ import annotations

from typing import Any

from sdxlc.check.adapter import ADAPTER_CHECKS
from sdxlc.lang.diagnostics import Diagnostic, Span, make
from sdxlc.lang.layers import Layers
from sdxlc.resolve.method import METHODS

_WHAT = {"lora": "LoRA on", "finetune": "full fine-tuning of"}


def _section_span(layers: Layers, name: str) -> Span | None:
    return layers.span(name)


def one_method(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """A recipe trains one thing: a LoRA, the whole model, or an embedding."""
    chosen = [name for name in METHODS if name in layers.doc]
    if len(chosen) < 2:
        return []
    first, *others = chosen
    first_span = _section_span(layers, first)
    related = ((first_span, f"`{first}` chosen here"),) if first_span is not None else ()
    return [
        make(
            "SDX0570",
            f"`{first}` and `{other}` both choose the training method",
            _section_span(layers, other),
            help=f"keep one of them; the plan trains `{plan['method']['kind']}`",
            related=related,
        )
        for other in others
    ]


def cached_te_with_embedding(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Textual inversion trains rows of the text encoders' input: their outputs change every step."""
    if plan["method"]["kind"] != "embedding" or not plan["data"]["cache"]["text_encoder"]:
        return []
    return [
        make(
            "SDX0573",
            "`cache te` with textual inversion: the new token's vectors change every step",
            layers.span("cache.text_encoder"),
            help="drop `cache te`",
            related=layers.related("embedding", "textual inversion chosen here"),
        )
    ]


def fused_backward(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """The fused backward pass steps Adafactor per weight inside backward: one process, no accumulation."""
    method = plan["method"]
    if method["kind"] != "finetune" or not method["fused_backward"]:
        return []
    span = layers.span("finetune.fused_backward")
    found = []
    name = plan["optimizer"]["name"]
    if name != "adafactor":
        found.append(make("SDX0574", f"the fused backward pass needs Adafactor, not `{name}`", span,
                          help="`optimizer adafactor`, or drop `fused backward`",
                          related=layers.related("optimizer.name", "optimizer chosen here")))
    accumulate = plan["training"]["accumulate"]
    if accumulate > 1:
        found.append(make("SDX0575", f"the fused backward pass with `accumulate {accumulate}`", span,
                          help="the step happens inside each backward pass: use `accumulate 1` "
                          "(raise `batch` instead)",
                          related=layers.related("training.accumulate", "accumulation set here")))
    world = plan["launch"]["world_size"]
    if world > 1:
        found.append(make("SDX0576", f"the fused backward pass with {world} processes", span,
                          help="each weight would step before the processes average its gradient: "
                          "train on one GPU, or drop `fused backward`"))
    return found


def full_bf16_needs_bf16(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    method, mixed = plan["method"], plan["precision"]["mixed"]
    if method["kind"] != "finetune" or not method["full_bf16"] or mixed == "bf16":
        return []
    return [
        make(
            "SDX0577",
            f"`full bf16` with {mixed} mixed precision",
            layers.span("finetune.full_bf16"),
            help="add `bf16` (on a card that supports it), or drop `full bf16`",
        )
    ]


def save_diffusers_needs_finetune(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    if plan["method"]["kind"] == "finetune" or not layers.given("save.diffusers"):
        return []
    return [
        make(
            "SDX0578",
            f"`save diffusers` with a {plan['method']['kind']} run: only a full fine-tune saves a model",
            layers.span("save.diffusers"),
            help="drop `diffusers` from the save line",
        )
    ]


def unused_method_settings(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Settings that the chosen method has no use for."""
    method = plan["method"]
    kind, targets = method["kind"], set(method["targets"])
    found = []
    if layers.given("block_lr") and "unet" not in targets:
        found.append(make("SDX0579", f"`block_lr` with a {kind} run that does not train the UNet",
                          layers.span("block_lr"), help="drop `block_lr`: it sets the UNet blocks' rates"))
    for te in ("te1", "te2"):
        path = f"{kind}.lr_{te}"
        if kind in _WHAT and layers.given(path) and te not in targets:
            found.append(make("SDX0579", f"`{te} lr` but {te} is not trained", layers.span(path),
                              help=f"add {te} to the models trained, or drop `{te} lr`"))
    return found


def cached_te_message(plan: dict[str, Any]) -> str | None:
    """SDX0521's message for a method that trains text-encoder weights; None for one that does not."""
    method = plan["method"]
    trained = [t for t in method["targets"] if t in ("te1", "te2")]
    if method["kind"] not in _WHAT or not trained:
        return None
    return f"`cache te` with {_WHAT[method['kind']]} {'+'.join(trained)}: their outputs change every step"




METHOD_CHECKS = (
    one_method,
    cached_te_with_embedding,
    fused_backward,
    full_bf16_needs_bf16,
    save_diffusers_needs_finetune,
    unused_method_settings,
    *ADAPTER_CHECKS,
)
