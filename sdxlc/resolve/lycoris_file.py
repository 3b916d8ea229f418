"""What a LoRA file's safetensors header says about its adapter: a kohya LoRA (`.lora_down.weight`), a
LyCORIS LoHa (`.hada_w1_a` …) or LoKr (`.lokr_w1` or `.lokr_w1_a` …), with or without DoRA
(`.dora_scale`), its rank per layer and LoKr's factor (docs/METHODS.md, "LoHa, LoKr and DoRA").

Pure Python: no torch. sdxlc/resolve/method.py's `read_lora_file` reads the header and asks this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# the key that marks a layer of each adapter, and the tensors whose first dimension is its rank
_MARK = {"lora": ".lora_down.weight", "loha": ".hada_w1_a", "lokr": ".lokr_w1"}
_RANK_KEYS = {
    "lora": (".lora_down.weight",),
    "loha": (".hada_w1_b", ".hada_w2_b"),
    "lokr": (".lokr_w2_b", ".lokr_w1_b"),  # a full (undecomposed) LoKr layer shows no rank
}


@dataclass(frozen=True)
class Adapter:
    """The adapter a file holds, and each layer's rank (None where its shapes do not show it)."""

    kind: str
    dora: bool
    factor: int | None
    ranks: dict[str, int | None]


def _module(key: str, kind: str) -> str | None:
    if kind == "lokr":
        for suffix in (".lokr_w1", ".lokr_w1_a"):
            if key.endswith(suffix):
                return key.removesuffix(suffix)
        return None
    return key.removesuffix(_MARK[kind]) if key.endswith(_MARK[kind]) else None


def _rank(tensors: dict[str, Any], module: str, kind: str) -> int | None:
    for suffix in _RANK_KEYS[kind]:
        entry = tensors.get(module + suffix)
        if isinstance(entry, dict) and entry.get("shape"):
            return int(entry["shape"][0])
    return None


def network_args(metadata: dict[str, Any]) -> dict[str, Any]:
    """kohya's `ss_network_args` of the file's metadata (empty when absent or unreadable)."""
    raw = metadata.get("ss_network_args")
    try:
        args = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    return args if isinstance(args, dict) else {}


def _factor(tensors: dict[str, Any], metadata: dict[str, Any], modules: set[str]) -> int:
    """LoKr's factor: `ss_network_args`' `factor`, else LyCORIS' rule on a linear layer's shapes (-1 when
    w1 is the balanced split of both widths, else w1's larger side)."""
    try:
        return int(network_args(metadata)["factor"])
    except (KeyError, TypeError, ValueError):
        pass
    for module in sorted(modules):
        w1 = _shape(tensors, module + ".lokr_w1")
        w2 = _shape(tensors, module + ".lokr_w2") or _product(tensors, module)
        if w1 is None or w2 is None or len(w1) != 2 or len(w2) != 2:
            continue  # a decomposed w1, or a conv layer
        out, inp = w1[0] * w2[0], w1[1] * w2[1]
        balanced = (balanced_split(out), balanced_split(inp))
        return -1 if tuple(w1) == balanced else max(w1)
    return -1


def _shape(tensors: dict[str, Any], key: str) -> list[int] | None:
    entry = tensors.get(key)
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return [int(n) for n in shape] if isinstance(shape, list) else None


def _product(tensors: dict[str, Any], module: str) -> list[int] | None:
    """The shape of `lokr_w2_a · lokr_w2_b`."""
    a, b = _shape(tensors, module + ".lokr_w2_a"), _shape(tensors, module + ".lokr_w2_b")
    return [a[0], b[1]] if a and b and len(a) == 2 and len(b) == 2 else None


def balanced_split(dimension: int) -> int:
    """The smaller side of LyCORIS' `factorization(dimension, -1)`: the divisor nearest √dimension."""
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        if candidate + dimension // candidate > m + n:
            break
        m, n = candidate, dimension // candidate
    return min(m, n)


def read_adapter(tensors: dict[str, Any], metadata: dict[str, Any]) -> Adapter:
    """The adapter of a file's tensors (header entries by key) and metadata; a file of no known adapter
    comes back as `lora` with no layers."""
    for kind in ("loha", "lokr", "lora"):
        modules = {m for key in tensors if (m := _module(key, kind)) is not None}
        if modules:
            ranks = {module: _rank(tensors, module, kind) for module in sorted(modules)}
            dora = any(key.endswith(".dora_scale") for key in tensors)
            factor = _factor(tensors, metadata, modules) if kind == "lokr" else None
            return Adapter(kind, dora, factor, ranks)
    return Adapter("lora", False, None, {})


def metadata_rank(metadata: dict[str, Any]) -> int | None:
    """`ss_network_dim` of the metadata, the rank a file of only full LoKr layers does not show."""
    try:
        return int(metadata["ss_network_dim"])
    except (KeyError, TypeError, ValueError):
        return None
