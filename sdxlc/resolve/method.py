"""Resolve the plan's `method` section: what is trained (a LoRA, every weight, or new token embeddings)
and with which learning rates, ranks and modules (docs/METHODS.md).

The method is chosen by the recipe's sections: `finetune`, `embedding`, or else `lora` (the default,
also when no section is written). Several sections are reported by sdxlc/check/semantic.py. A LoRA continued
`from` a file takes its rank, alpha, models and layer kinds from the file's safetensors header, read here
with the standard library (8-byte little-endian header length, then JSON).

Pure Python: no torch.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxlc.lang.defaults import UNET_LORA_MODULES
from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.resolve import lycoris_file
from sdxlc.resolve.adapter import resolve_adapter
from sdxlc.resolve.launch import Builder
from sdxlc.resolve.lllite import resolve_lllite
from sdxlc.resolve.lora_groups import KINDS, collapse, expand, same_kinds

METHODS = ("lora", "finetune", "embedding", "lllite")

# Layer kinds → module names (suffixes) that get LoRA layers, per model.
UNET_MODULES: dict[str, list[str]] = {
    "attention": list(UNET_LORA_MODULES),
    "ff": ["ff.net.0.proj", "ff.net.2"],
    "proj": ["proj_in", "proj_out"],
    "conv": ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"],
    "emb": ["time_emb_proj"],
}
TE_MODULES: dict[str, list[str]] = {
    "attention": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "ff": ["fc1", "fc2"],
    "proj": [],
    "conv": [],
    "emb": [],
}
# kohya key endings (module paths with `_`) → layer kind
_KIND_OF_KEY = (
    (re.compile(r"_(to_q|to_k|to_v|to_out_0|q_proj|k_proj|v_proj|out_proj)$"), "attention"),
    (re.compile(r"_(ff_net_0_proj|ff_net_2|mlp_fc1|mlp_fc2)$"), "ff"),
    (re.compile(r"_(in_layers_2|out_layers_3|skip_connection|\d+_0_op|\d+_\d+_conv)$"), "conv"),
    (re.compile(r"_\d+_(proj_in|proj_out)$"), "proj"),
    (re.compile(r"_\d+_emb_layers_1$"), "emb"),
)
_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "te1", "lora_te2_": "te2"}
_FLOAT = {"F32": ("<f", 4), "F64": ("<d", 8), "F16": ("<e", 2)}
MAX_HEADER = 100_000_000


class LoraFileError(ValueError):
    """A LoRA file that cannot be read, or is not a kohya-format LoRA."""


@dataclass
class LoraFile:
    """What the compiler needs from a kohya LoRA file's header."""

    rank: int
    alpha: float
    targets: list[str]
    modules: list[str]
    unknown: list[str] = field(default_factory=list)  # module keys of no layer kind sdxlc trains
    adapter: str = "lora"  # `loha` / `lokr` for a LyCORIS file (sdxlc/resolve/lycoris_file.py)
    dora: bool = False
    factor: int | None = None


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The header JSON of a safetensors file and the offset its tensor data starts at."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise LoraFileError(f"{path} is not a safetensors file (too short)")
            (size,) = struct.unpack("<Q", raw)
            if size > MAX_HEADER:
                raise LoraFileError(f"{path} is not a safetensors file (header length {size})")
            header = json.loads(handle.read(size))
        length = path.stat().st_size
    except OSError as exc:
        raise LoraFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoraFileError(f"{path} is not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise LoraFileError(f"{path} is not a safetensors file")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict):
                raise LoraFileError(f"{path} is not a safetensors file (its `__metadata__` is not a mapping)")
            continue
        if not _well_formed(entry):
            raise LoraFileError(f"{path} is not a safetensors file (the header entry of `{key}` is "
                                "malformed)")
        end = max(end, entry["data_offsets"][1])
    if 8 + size + end > length:
        raise LoraFileError(f"{path} is truncated: its header describes {8 + size + end} bytes, the file "
                            f"holds {length}")
    return header, 8 + size


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _well_formed(entry: Any) -> bool:
    """A tensor's header entry: a dtype name, a shape of sizes, and its [begin, end) in the data section."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_count(side) for side in shape):
        return False
    return (isinstance(offsets, list) and len(offsets) == 2 and all(_count(at) for at in offsets)
            and offsets[0] <= offsets[1])


def _scalar(path: Path, entry: dict[str, Any], start: int) -> float:
    """The value of a one-element float tensor, read from the data section."""
    begin, end = entry["data_offsets"]
    with path.open("rb") as handle:
        handle.seek(start + begin)
        raw = handle.read(end - begin)
    if entry["dtype"] == "BF16" and len(raw) == 2:
        return float(struct.unpack("<f", b"\x00\x00" + raw)[0])
    fmt, width = _FLOAT.get(entry["dtype"], ("", 0))
    if not fmt or len(raw) != width:
        raise LoraFileError(f"{path}: alpha stored as {entry['dtype']} {entry.get('shape')}")
    return float(struct.unpack(fmt, raw)[0])


def read_lora_file(path: Path) -> LoraFile:
    """Rank, alpha, trained models and layer kinds of a kohya-format LoRA file."""
    header, start = read_safetensors_header(path)
    tensors = {key: value for key, value in header.items() if key != "__metadata__"}
    metadata = header.get("__metadata__", {}) if isinstance(header.get("__metadata__"), dict) else {}
    found = lycoris_file.read_adapter(tensors, metadata)
    downs = found.ranks
    if not downs:
        raise LoraFileError(f"{path} holds no kohya LoRA weights (`*.lora_down.weight` keys, or LyCORIS "
                            "`*.hada_w1_a` / `*.lokr_w1` keys)")
    ranks = {rank for rank in downs.values() if rank is not None} or (
        {shown} if (shown := lycoris_file.metadata_rank(metadata)) else set())
    if not ranks:
        raise LoraFileError(f"{path}: its full LoKr layers show no rank, and it has no `ss_network_dim`")
    if len(ranks) != 1:
        raise LoraFileError(f"{path} has layers of different ranks {sorted(ranks)}; sdxlc trains one rank")
    rank = ranks.pop()
    if rank < 1:
        raise LoraFileError(f"{path} shows a rank of {rank}: a LoRA's rank is at least 1")
    alphas = {_scalar(path, tensors[f"{m}.alpha"], start) for m in downs if f"{m}.alpha" in tensors}
    if len(alphas) > 1:
        raise LoraFileError(f"{path} has layers of different alphas; sdxlc trains one alpha")
    try:
        alpha = alphas.pop() if alphas else float(metadata.get("ss_network_alpha", rank))
    except (TypeError, ValueError) as exc:
        raise LoraFileError(f"{path}: its `ss_network_alpha` is not a number") from exc
    if not math.isfinite(alpha) or alpha <= 0:
        raise LoraFileError(f"{path} holds alpha {alpha:g}: sdxlc scales a LoRA by alpha / rank, with "
                            "alpha > 0")
    targets, kinds, unknown = set(), set(), []
    for module in downs:
        prefix = next((p for p in _PREFIXES if module.startswith(p)), None)
        kind = next((k for pattern, k in _KIND_OF_KEY if pattern.search(module)), None)
        if prefix is None or kind is None:
            unknown.append(module)
            continue
        targets.add(_PREFIXES[prefix])
        kinds.add(kind)
    return LoraFile(
        rank=rank,
        alpha=alpha,
        targets=[t for t in ("unet", "te1", "te2") if t in targets],
        modules=collapse(k for k in KINDS if k in kinds),
        unknown=sorted(unknown),
        adapter=found.kind,
        dora=found.dora,
        factor=found.factor,
    )


def chosen_methods(b: Builder) -> list[str]:
    """The method sections the recipe writes, in schema order."""
    return [name for name in METHODS if name in b.layers.doc]


def resolve_method(b: Builder, recipe_dir: Path, lr: float, diags: list[Diagnostic]) -> dict[str, Any]:
    """The `method` section; `lr` is the optimizer's (the text encoders' default)."""
    chosen = chosen_methods(b)
    kind = chosen[0] if chosen else "lora"
    if chosen:
        b.provenance["method.kind"] = b.layers.origin(kind)
    else:
        b.derived("method.kind", "lora", "default")
    if kind == "finetune":
        return _finetune(b, lr)
    if kind == "embedding":
        return _embedding(b)
    if kind == "lllite":
        return resolve_lllite(b)
    return _lora(b, recipe_dir, lr, diags)


def _te_lrs(b: Builder, section: str, targets: list[str], lr: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for te in ("te1", "te2"):
        if te in targets:
            out[f"lr_te{te[-1]}"] = _take_or(b, f"{section}.lr_{te}", f"method.lr_{te}", lr)
        else:
            out[f"lr_te{te[-1]}"] = b.derived(f"method.lr_{te}", None, "default")
    return out


def _take_or(b: Builder, recipe_path: str, plan_path: str, fallback: Any) -> Any:
    """A recipe value, or `fallback` recorded as derived (not as a default of the recipe path)."""
    if b.layers.given(recipe_path):
        return b.take(recipe_path, plan_path)
    return b.derived(plan_path, fallback)


def _lora(b: Builder, recipe_dir: Path, lr: float, diags: list[Diagnostic]) -> dict[str, Any]:
    init_from, found = None, None
    if b.layers.given("lora.from"):
        given = b.take("lora.from", "method.init_from")
        path = (b.layers.base_dir("lora.from", recipe_dir) / given).resolve()
        init_from = str(path)
        try:
            found = read_lora_file(path)
        except LoraFileError as exc:
            diags.append(make("SDX0571", str(exc), b.layers.span("lora.from"),
                              help="name a kohya-format LoRA .safetensors file, relative to the recipe"))
    else:
        b.derived("method.init_from", None, "default")
    if found is not None:
        _match_file(b, found, diags)
        rank = _take_or(b, "lora.rank", "method.rank", found.rank)
        alpha = _take_or(b, "lora.alpha", "method.alpha", found.alpha)
        targets = _take_or(b, "lora.targets", "method.targets", found.targets or ["unet"])
        modules = _take_or(b, "lora.modules", "method.modules", found.modules or ["attention"])
    else:
        rank = b.take("lora.rank", "method.rank")
        alpha = b.take("lora.alpha", "method.alpha", rank)
        targets = b.take("lora.targets", "method.targets")
        modules = b.take("lora.modules", "method.modules", ["attention"])
    unet = [m for kind in expand(modules) for m in UNET_MODULES[kind]] if "unet" in targets else []
    te = [m for kind in expand(modules) for m in TE_MODULES[kind]] if {"te1", "te2"} & set(targets) else []
    block_lr = b.take("block_lr", "method.block_lr")
    return {
        "kind": "lora",
        "targets": targets,
        "block_lr": block_lr,
        **_te_lrs(b, "lora", targets, lr),
        "rank": rank,
        "alpha": alpha,
        "modules": modules,
        "unet_modules": b.derived("method.unet_modules", unet),
        "te_modules": b.derived("method.te_modules", te),
        "dropout": b.take("lora.dropout", "method.dropout"),
        "init_from": init_from,
        "unsaved_blocks": b.derived("method.unsaved_blocks", unsaved_blocks(block_lr, targets, init_from)),
        **resolve_adapter(b, found, diags),
    }


def unsaved_blocks(block_lr: list[float] | None, targets: list[str], init_from: str | None) -> list[int]:
    """The kohya blocks whose LoRA layers the saved file leaves out: a block_lr of 0 freezes them for the
    whole run, and without `from` they start as a no-op (lora_up is zero) and stay one. Layers loaded
    `from` a file keep that file's weights, so with `from` every layer is saved."""
    if block_lr is None or "unet" not in targets or init_from is not None:
        return []
    return [block for block, rate in enumerate(block_lr) if rate == 0]


def _match_file(b: Builder, found: LoraFile, diags: list[Diagnostic]) -> None:
    """Values the recipe states must agree with the file it continues from."""
    span = b.layers.span("lora.from")
    if found.unknown:
        shown = ", ".join(found.unknown[:3]) + (" …" if len(found.unknown) > 3 else "")
        diags.append(make("SDX0572", f"the LoRA file has {len(found.unknown)} layers sdxlc does not train: "
                          f"{shown}", span, help="continue from a LoRA of attention, ff, proj, conv and emb "
                          "layers (`sdxlc explain modules`)"))
    for key, value in (("rank", found.rank), ("alpha", found.alpha), ("targets", found.targets),
                       ("modules", found.modules)):
        if not b.layers.given(f"lora.{key}"):
            continue
        stated, _ = b.layers.get(f"lora.{key}")
        same = _same(key, stated, value)
        if not same:
            shown = "+".join(value) if isinstance(value, list) else f"{value:g}"
            diags.append(make(
                "SDX0572", f"the recipe's LoRA {key} differs from the file it continues from ({shown})",
                b.layers.span(f"lora.{key}"), help=_keep_help(key, stated, value),
                related=((span, "the file is named here"),) if span is not None else (),
            ))


def _same(key: str, stated: Any, found: Any) -> bool:
    """A stated value agrees with the file's: `modules kohya` is `attention+ff+proj`."""
    if key == "modules":
        return same_kinds(stated, found)
    return sorted(stated) == sorted(found) if isinstance(found, list) else float(stated) == float(found)


def _keep_help(key: str, stated: Any, found: Any) -> str:
    """Drop the value; a lower rank than the file's can also come from resizing the file first."""
    if key == "rank" and float(stated) < float(found):
        return (f"drop the rank (it is read from the file), or resize the file to rank {stated} first: "
                f"`sdxlc lora resize FILE -o SMALLER.safetensors --rank {stated}`, then continue from that")
    if key == "rank":
        return (f"drop the rank (it is read from the file); `sdxlc lora resize` only lowers a LoRA's rank, "
                f"so a rank above the file's ({found:g}) starts a new LoRA (leave out `from`)")
    return f"drop the {key}: it is read from the file"


def _finetune(b: Builder, lr: float) -> dict[str, Any]:
    targets = b.take("finetune.targets", "method.targets", ["unet"])
    return {
        "kind": "finetune",
        "targets": targets,
        "block_lr": b.take("block_lr", "method.block_lr"),
        **_te_lrs(b, "finetune", targets, lr),
        "full_bf16": b.take("finetune.full_bf16", "method.full_bf16", False),
        "fused_backward": b.take("finetune.fused_backward", "method.fused_backward", False),
        "save_diffusers": b.take("save.diffusers", "method.save_diffusers", False),
    }


def embedding_tokens(token: str, vectors: int) -> list[str]:
    """The tokens of a multi-vector embedding, named as diffusers' `load_textual_inversion` names them."""
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def _embedding(b: Builder) -> dict[str, Any]:
    token = b.take("embedding.token", "method.token", "<embedding>")
    vectors = b.take("embedding.vectors", "method.vectors", 1)
    asked = b.layers.given("embedding.template")
    return {
        "kind": "embedding",
        "targets": b.derived("method.targets", ["te1", "te2"]),
        "block_lr": b.derived("method.block_lr", None),
        "lr_te1": b.derived("method.lr_te1", None),
        "lr_te2": b.derived("method.lr_te2", None),
        "token": token,
        "tokens": b.derived("method.tokens", embedding_tokens(token, vectors)),
        "init": b.take("embedding.init", "method.init", "*"),
        "vectors": vectors,
        "template": b.take("embedding.template", "method.template", "object"),
        "captions": b.derived("method.captions", "template" if asked else "file"),
    }
