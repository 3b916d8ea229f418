"""`optimizer.implementation`: how torch's AdamW and SGD step the weights.

`fused`: one kernel for every tensor; `foreach`: each operation over all tensors at once (a temporary
copy of the trained values for AdamW's square roots); `for_loop`: one tensor after the other. The
implementations compute the same update up to the last bits of rounding, so a run and its resume use
the plan's one implementation. The recipe chooses with `args fused=true` / `foreach=true` /
`foreach=false`; otherwise the profile's device decides (DEVICE_IMPLEMENTATION). Other optimizers have
one implementation of their own: null.
"""

from __future__ import annotations

from typing import Any, Protocol

IMPLEMENTATIONS = ("fused", "foreach", "for_loop")
CHOOSABLE = frozenset({"adamw", "sgd"})  # torch classes that take `foreach=` and `fused=`

# Per profile device. On the CPU torch's fused AdamW and SGD kernels step the quickstart's LoRA
# (318 tensors, 0.86 M values) 3.2× (AdamW) and 2.3× (SGD) faster than its default for-loop, foreach
# in between (bench/results/optimizer_step_cpu.md). CUDA keeps torch's own default, foreach, until a GPU
# measurement shows fused pays there too (the memory estimate models foreach's temporary copy).
DEVICE_IMPLEMENTATION = {"cpu": "fused", "cuda": "foreach"}

class Builder(Protocol):
    provenance: dict[str, Any]

    def derived(self, plan_path: str, value: Any, source: str = "derived") -> Any: ...


def given_implementation(args: dict[str, Any], device: str) -> str | None:
    """The implementation the recipe's `foreach` / `fused` arguments choose, or None when they choose
    none (both absent or null); `fused=false` alone means torch's default for the device."""
    fused, foreach = args.get("fused"), args.get("foreach")
    if fused is True:
        return "fused"
    if foreach is True:
        return "foreach"
    if foreach is False:
        return "for_loop"
    if fused is False:
        return "foreach" if device == "cuda" else "for_loop"
    return None


def resolve_implementation(b: Builder, name: str, args: dict[str, Any],
                           device: str) -> tuple[str | None, dict[str, Any]]:
    """(optimizer.implementation, the args without `foreach` and `fused`) for optimizer `name`.

    Arguments that are not booleans or null stay in `args`, where the argument check reports them;
    `foreach=true` with `fused=true` stays too (torch refuses the pair; SDX0541 names it). Only the
    recipe puts `foreach` or `fused` in `args`, so a choice found there is the recipe's."""
    if name not in CHOOSABLE:
        b.derived("optimizer.implementation", None, "derived")
        return None, args
    choice: dict[str, Any] = {k: args[k] for k in ("foreach", "fused") if k in args}
    if any(v is not None and not isinstance(v, bool) for v in choice.values()) or \
            (choice.get("fused") is True and choice.get("foreach") is True):
        b.derived("optimizer.implementation", None, "derived")
        return None, args
    rest = {k: v for k, v in args.items() if k not in choice}
    chosen = given_implementation(choice, device)
    if chosen is not None:
        b.provenance["optimizer.implementation"] = dict(b.provenance.get("optimizer.args") or
                                                        {"source": "recipe", "at": None})
        return chosen, rest
    default = DEVICE_IMPLEMENTATION.get(device, "for_loop")
    return b.derived("optimizer.implementation", default, "profile"), rest
