"""Checks of `compile`: adapters whose layers break torch.compile's graph (SDX0618)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers

# What in peft's layers stops dynamo (TorchDynamo) at every adapted layer, measured with
# TORCH_LOGS=graph_breaks on the tiny model: each such layer ends a compiled graph and runs eager.
GRAPH_BREAKS = {
    "loha": "peft's LoHa layers draw their module dropout with a tensor comparison (`torch.rand(1) > p`)",
    "lokr": "peft's LoKr layers draw their module dropout with a tensor comparison (`torch.rand(1) > p`)",
    "dora": "peft's DoRA layers look up their base weight's type module to dequantize it",
}


def breaking_adapter(plan: dict[str, Any]) -> str | None:
    """The plan's adapter whose layers break the compiled graph, or None."""
    method = plan["method"]
    if method.get("kind") != "lora":
        return None
    if method.get("dora"):
        return "dora"
    adapter = str(method.get("adapter") or "lora")
    return adapter if adapter in GRAPH_BREAKS else None


def compile_with_graph_breaks(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    if not plan["training"].get("compile"):
        return []
    adapter = breaking_adapter(plan)
    if adapter is None:
        return []
    name = "DoRA" if adapter == "dora" else adapter
    return [make(
        "SDX0618",
        f"`compile` gains little with {name}: {GRAPH_BREAKS[adapter]}, which breaks the compiled graph at "
        "every adapted layer, so most of the step runs eager",
        layers.span("training.compile"),
        help="leave `compile` out (the first run would spend minutes compiling for little), or train a plain "
        "`lora`, whose layers compile whole",
    )]


Check = Callable[[dict[str, Any], Layers], list[Diagnostic]]
COMPILE_CHECKS: tuple[Check, ...] = (compile_with_graph_breaks,)
