"""The adapter fields of a `lora`-kind method: `adapter` (lora, loha, lokr: the `lora`, `loha` and `lokr`
statements), `dora` and LoKr's `factor` (docs/METHODS.md, "LoHa, LoKr and DoRA").

A LoRA continued `from` a file takes them from the file (sdxlc/resolve/lycoris_file.py reads its header);
a value the recipe states must agree with the file.
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.resolve.launch import Builder

ADAPTERS = ("lora", "loha", "lokr")
AUTO_FACTOR = -1  # LyCORIS' default: the most balanced split of each layer's width


def resolve_adapter(b: Builder, found: Any, diags: list[Diagnostic]) -> dict[str, Any]:
    """`adapter`, `dora` and `factor` of the plan's method; `found` is the file continued from (a
    sdxlc.resolve.method.LoraFile) or None."""
    if found is None:
        adapter = b.take("lora.adapter", "method.adapter", "lora")
        dora = b.take("lora.dora", "method.dora", False)
        file_factor = AUTO_FACTOR
    else:
        _match(b, found, diags)
        adapter = _from_file(b, "adapter", found.adapter)
        dora = _from_file(b, "dora", found.dora)
        file_factor = found.factor if found.factor is not None else AUTO_FACTOR
    if adapter != "lokr":
        factor = b.derived("method.factor", None, "default")
    elif b.layers.given("lora.factor"):
        factor = b.take("lora.factor", "method.factor")
    else:
        factor = b.derived("method.factor", file_factor, "default" if found is None else "derived")
    return {"adapter": adapter, "dora": dora, "factor": factor}


def _from_file(b: Builder, key: str, value: Any) -> Any:
    if b.layers.given(f"lora.{key}"):
        return b.take(f"lora.{key}", f"method.{key}")
    return b.derived(f"method.{key}", value)


def _match(b: Builder, found: Any, diags: list[Diagnostic]) -> None:
    """A stated adapter, DoRA or LoKr factor that the file continued from does not have."""
    span = b.layers.span("lora.from")
    related = ((span, "the file is named here"),) if span is not None else ()
    held = [("adapter", found.adapter), ("dora", found.dora)]
    if found.adapter == "lokr" and found.factor is not None:
        held.append(("factor", found.factor))  # it sets the shapes of the file's matrices
    for key, value in held:
        if not b.layers.given(f"lora.{key}"):
            continue
        stated, _ = b.layers.get(f"lora.{key}")
        if stated == value:
            continue
        shown = {"adapter": value, "factor": f"factor {value}"}.get(key, "a DoRA" if value else "no DoRA")
        help = {"adapter": f"start the statement with `{value}` (the file's adapter), or continue from a "
                f"{stated} file", "factor": "drop `factor`: it is read from the file"}.get(
                    key, f"{'add' if value else 'drop'} `dora`: it is read from the file")
        diags.append(make("SDX0572", f"the recipe's {key} differs from the file it continues from ({shown})",
                          b.layers.span(f"lora.{key}"), help=help, related=related))


def lycoris_network_args(method: dict[str, Any]) -> list[str]:
    """LyCORIS' `network_args` for kohya's scripts (`network_module = "lycoris.kohya"`) of a LoHa, LoKr or
    DoRA plan; empty for a plain LoRA (kohya's own networks.lora). The saved file's `ss_network_args` say
    the same (runtime/methods/lycoris.py)."""
    if method.get("kind") != "lora" or (method["adapter"] == "lora" and not method["dora"]):
        return []
    args = [f"algo={method['adapter']}"]
    if method["adapter"] == "lokr":
        args.append(f"factor={method['factor']}")
    if method["dora"]:
        args += ["dora_wd=True", "wd_on_output=True"]
    return args
