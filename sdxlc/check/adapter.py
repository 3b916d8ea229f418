"""Named checks of the LoRA adapter (docs/METHODS.md, "LoHa, LoKr and DoRA"): what LoHa, LoKr and DoRA
cannot be combined with in the runtime's peft. Registered with sdxlc/check/method.py's METHOD_CHECKS."""

from __future__ import annotations

from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers

LYCORIS = ("loha", "lokr")


def _lycoris(plan: dict[str, Any]) -> str | None:
    """The plan's LyCORIS adapter (`loha`, `lokr`), or None."""
    method = plan["method"]
    if method["kind"] != "lora" or method["adapter"] not in LYCORIS:
        return None
    return str(method["adapter"])


def dora_with_lycoris(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """peft decomposes the weight (DoRA) only for LoRA: its LoHa and LoKr layers have no magnitude."""
    adapter = _lycoris(plan)
    if adapter is None or not plan["method"]["dora"]:
        return []
    return [make("SDX0585", f"`dora` with `{adapter}`: DoRA trains on top of a LoRA only",
                 layers.span("lora.dora"),
                 help=f"drop `dora`, or train `lora rank {plan['method']['rank']} … dora`",
                 related=layers.related("lora.adapter", f"{adapter} chosen here"))]


def dropout_with_lycoris(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """LoHa and LoKr layers (peft, as LyCORIS) have no dropout on their input."""
    adapter = _lycoris(plan)
    if adapter is None or not plan["method"]["dropout"]:
        return []
    dropout = plan["method"]["dropout"]
    return [make("SDX0586", f"`dropout {dropout:g}` with `{adapter}`: its layers have no input dropout",
                 layers.span("lora.dropout"), help="drop `dropout` (or train a `lora`, which has it)")]


def factor_settings(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """`factor` is LoKr's; 0 splits nothing."""
    method = plan["method"]
    if method["kind"] != "lora" or not layers.given("lora.factor"):
        return []
    span = layers.span("lora.factor")
    if method["adapter"] != "lokr":
        adapter = method["adapter"]
        return [make("SDX0579", f"`factor` with a `{adapter}` adapter: only LoKr splits by a factor", span,
                     help="drop `factor`, or start the statement with `lokr`")]
    if method["factor"] == 0:
        return [make("SDX0587", "`factor 0` splits no layer", span,
                     help="`factor -1` picks the most balanced split; a positive factor is the size of "
                     "LoKr's small matrix (4 and 8 are usual)")]
    return []


def text_encoder_layers(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """A text encoder the LoRA trains needs a layer group it has (`proj`, `conv` and `emb` are the UNet's)."""
    method = plan["method"]
    trained = [te for te in ("te1", "te2") if te in method.get("targets", ())]
    if method["kind"] != "lora" or not trained or method["te_modules"]:
        return []
    groups = "+".join(method["modules"])
    message = f"`modules {groups}` has no text-encoder layer: {'+'.join(trained)} would train nothing"
    return [make("SDX0588", message,
                 layers.span("lora.modules") or layers.span("lora.targets") or layers.span("lora"),
                 help="add `attention` or `ff` (`modules attention+" + groups + "`, or `kohya`), or train "
                      "`on unet` only",
                 related=layers.related("lora.targets", "text encoders chosen here"))]


ADAPTER_CHECKS = (dora_with_lycoris, dropout_with_lycoris, factor_settings, text_encoder_layers)
