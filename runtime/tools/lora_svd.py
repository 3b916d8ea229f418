"""kohya-format LoRA files as per-module low-rank weights: read, multiply out, factor by SVD, write.

A module `K` of a file is `K.lora_down.weight` [r, in] (a convolution: [r, in, k, k]), `K.lora_up.weight`
[out, r] ([out, r, 1, 1]) and `K.alpha`; it adds `up @ down * alpha / r` to the model's weight (for a
k×k convolution `up` is 1×1, so the product is `up[:, :, 0, 0] @ down.flatten(1)` reshaped to
[out, in, k, k], as kohya's LoCon layers merge). Factoring keeps the top singular values of that
product and splits them evenly between `up` and `down` (kohya's tools put them all in `up`; the
product is the same, the halves stay in range when saved in fp16).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from runtime import RunError
from runtime.formats.safetensors_file import to_bytes
from sdxlc.plan.files import write_atomic

DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
ZERO = 1e-6  # kohya's MIN_SV: below it a module is treated as empty (rank 1)
NOISE = 1e-4  # singular values below this share of the largest are rounding noise (for `full_rank`)
DYNAMIC = ("fro", "sv_ratio", "sv_cumulative")
STALE = ("sshs_model_hash", "sshs_legacy_hash")  # hashes of the tensors, no longer theirs once changed


class BadRequest(RunError):
    """The request cannot be met with these inputs (a rank out of range, files that do not fit): a
    usage error."""


@dataclass
class Module:
    """One LoRA module: `up @ down * alpha / rank` is its weight change."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def shape(self) -> torch.Size:
        """The shape of the weight the module changes."""
        return torch.Size((self.up.shape[0], *self.down.shape[1:]))

    def sides(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The change as a product of two fp32 matrices: `up * alpha / rank` [out, r] @ `down` [r, in…]."""
        return self.up.float().flatten(1) * (self.alpha / self.rank), self.down.float().flatten(1)

    def delta(self) -> torch.Tensor:
        """The full weight change in fp32, shaped like the model's weight."""
        left, right = self.sides()
        return (left @ right).reshape(self.shape)

    def resized(self, rank: int, dynamic: tuple[str, float] | None = None, alpha: float | None = None,
                scale: float = 1.0) -> Factored:
        """This module's change factored to `rank` (see `factor`)."""
        return factor_product(*self.sides(), self.shape, rank, dynamic, alpha, scale)


@dataclass
class Factored:
    """A module factored to a lower rank, and how much of the change it keeps."""

    module: Module
    kept_fro: float  # Frobenius norm kept / whole (1.0 for an empty module)
    full_rank: int  # the change's numerical rank: singular values above ZERO and NOISE × the largest
    norm: float  # the Frobenius norm of the whole change


@dataclass
class LoraFile:
    modules: dict[str, Module]
    metadata: dict[str, str]
    dtype: torch.dtype


def read_lora(path: Path) -> LoraFile:
    """A kohya-format LoRA file; BadRequest when it is missing, unreadable or not a LoRA."""
    if not path.is_file():
        raise BadRequest(f"{path} does not exist")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as exc:
        raise BadRequest(f"cannot read {path} as a safetensors file: {exc}") from exc
    keys = sorted(key.removesuffix(DOWN) for key in tensors if key.endswith(DOWN))
    if not keys:
        if any(".hada_" in key or ".lokr_" in key for key in tensors):  # runtime/tools/lycoris_merge.py
            raise BadRequest(f"{path} is a LyCORIS LoHa/LoKr file, not a low-rank product: only "
                             "`sdxlc lora merge --model` (into a model) takes it")
        raise BadRequest(f"{path} is not a LoRA: it has no `*{DOWN}` tensors")
    other = sorted(set(tensors) - {key + end for key in keys for end in (DOWN, UP, ALPHA)})
    if other:
        raise BadRequest(f"{path} holds {len(other)} tensors that are not plain LoRA weights ({other[0]}): "
                         "LoHa, LoKr, DoRA and other variants can only be merged into a model "
                         "(`sdxlc lora merge --model`)")
    modules, dtypes = {}, set()
    for key in keys:
        if key + UP not in tensors:
            raise BadRequest(f"{path}: {key} has a lora_down but no lora_up weight")
        down, up = tensors[key + DOWN], tensors[key + UP]
        if (up.ndim != down.ndim or up.ndim not in (2, 4) or up.shape[1] != down.shape[0]
                or (up.ndim == 4 and up.shape[2:] != (1, 1))):
            raise BadRequest(f"{path}: {key} has lora_down {tuple(down.shape)} and lora_up "
                             f"{tuple(up.shape)}, which do not multiply")
        if key + ALPHA in tensors and tensors[key + ALPHA].numel() != 1:
            shape = tuple(tensors[key + ALPHA].shape)
            raise BadRequest(f"{path}: {key}.alpha has shape {shape}, not one number")
        for part in (DOWN, UP, ALPHA):
            value = tensors.get(key + part)
            if value is not None and not bool(torch.isfinite(value.float()).all()):
                raise BadRequest(f"{path}: {key}{part} holds NaN or infinite values")
        alpha = float(tensors[key + ALPHA]) if key + ALPHA in tensors else 0.0
        modules[key] = Module(down, up, alpha or float(down.shape[0]))  # none or 0: alpha = rank (kohya)
        dtypes.add(down.dtype)
    return LoraFile(modules, metadata, dtypes.pop() if len(dtypes) == 1 else torch.float32)


def pick_rank(values: torch.Tensor, cap: int, dynamic: tuple[str, float] | None) -> int:
    """How many singular values to keep: `cap`, or fewer as the dynamic rule says; at least 1.

    An empty module keeps `cap` at a fixed rank, 1 with a dynamic rule. fro: the fewest whose Frobenius
    norm is at least the fraction R of the whole; sv_ratio: those at least the largest / R;
    sv_cumulative: the fewest whose sum is at least the fraction R of the sum."""
    if dynamic is None:
        return max(1, min(cap, len(values)))
    if float(values[0]) <= ZERO:
        return 1  # an empty module (kohya: rank 1)
    method, target = dynamic
    if method == "sv_ratio":
        wanted = int((values >= values[0] / target).sum())
    else:
        weights = values.pow(2) if method == "fro" else values
        share = torch.cumsum(weights, 0) / weights.sum()
        goal = target**2 if method == "fro" else target
        wanted = int(torch.searchsorted(share, torch.tensor(goal - 1e-9, dtype=share.dtype))) + 1
    return max(1, min(cap, wanted, len(values)))


def factor(delta: torch.Tensor, rank: int, dynamic: tuple[str, float] | None = None,
           alpha: float | None = None, scale: float = 1.0) -> Factored:
    """The best rank-`rank` LoRA module (or smaller, see `pick_rank`) for a weight change.

    Its alpha is `alpha`, or `scale * rank` (kohya: the ratio alpha / rank stays `scale`); the weights
    absorb whatever ratio that gives, so `delta()` is the truncated change either way."""
    u, values, vh = torch.linalg.svd(delta.detach().float().flatten(1), full_matrices=False)
    return _truncate(delta.shape, u, values, vh, rank, dynamic, alpha, scale)


def factor_product(left: torch.Tensor, right: torch.Tensor, shape: torch.Size, rank: int,
                   dynamic: tuple[str, float] | None = None, alpha: float | None = None,
                   scale: float = 1.0) -> Factored:
    """`factor` of the change `left @ right` ([out, k] @ [k, in…], reshaped to `shape`) without forming
    it: QR of both sides, then the SVD of a k×k matrix; the same result at a fraction of the cost when k
    is a LoRA rank."""
    q_left, r_left = torch.linalg.qr(left.float())
    q_right, r_right = torch.linalg.qr(right.float().T)
    u, values, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    return _truncate(shape, q_left @ u, values, vh @ q_right.T, rank, dynamic, alpha, scale)


def _truncate(shape: torch.Size, u: torch.Tensor, values: torch.Tensor, vh: torch.Tensor, rank: int,
              dynamic: tuple[str, float] | None, alpha: float | None, scale: float) -> Factored:
    keep = pick_rank(values, rank, dynamic)
    squares = values.pow(2)
    whole = float(squares.sum())
    kept = (float(squares[:keep].sum()) / whole) ** 0.5 if whole > 0 else 1.0
    new_alpha = float(alpha) if alpha is not None else scale * keep
    root = (values[:keep] * keep / new_alpha).sqrt()
    up, down = u[:, :keep] * root, root[:, None] * vh[:keep]
    if len(shape) == 4:
        up, down = up[:, :, None, None], down.reshape(keep, *shape[1:])
    return Factored(Module(down.contiguous(), up.contiguous(), new_alpha), kept,
                    int((values > max(ZERO, NOISE * float(values[0]))).sum()), whole**0.5)


def state_dict(modules: Mapping[str, Module], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The kohya tensors of the modules, in `dtype`."""
    state: dict[str, torch.Tensor] = {}
    for key, module in modules.items():
        state[key + DOWN] = module.down.to("cpu", dtype).contiguous()
        state[key + UP] = module.up.to("cpu", dtype).contiguous()
        state[key + ALPHA] = torch.tensor(module.alpha, dtype=dtype)
    return state


def network_metadata(modules: Mapping[str, Module],
                     previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """`ss_network_dim` / `ss_network_alpha`: the one rank and alpha, or kohya's `Dynamic` when the
    modules differ; `ss_network_args` (`previous`'s, kept) gets `conv_dim`/`conv_alpha` when k×k
    convolutions carry a LoRA."""
    ranks = {module.rank for module in modules.values()}
    alphas = {module.alpha for module in modules.values()}
    meta = {"ss_network_module": "networks.lora",
            "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
            "ss_network_alpha": f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"}
    convs = [m for m in modules.values() if m.down.ndim == 4 and m.down.shape[2] > 1]
    try:
        args = json.loads((previous or {}).get("ss_network_args", "{}"))
    except ValueError:
        args = {}
    args = args if isinstance(args, dict) else {}
    args.pop("conv_dim", None), args.pop("conv_alpha", None)
    if convs:
        conv_ranks, conv_alphas = {m.rank for m in convs}, {m.alpha for m in convs}
        args["conv_dim"] = str(conv_ranks.pop()) if len(conv_ranks) == 1 else "Dynamic"
        args["conv_alpha"] = f"{conv_alphas.pop():g}" if len(conv_alphas) == 1 else "Dynamic"
    if args:
        meta["ss_network_args"] = json.dumps(args)
    return meta


def write_lora(path: Path, modules: Mapping[str, Module], metadata: Mapping[str, str],
               dtype: torch.dtype) -> Path:
    """The modules as one kohya LoRA file (sorted keys, written atomically)."""
    meta = {key: value for key, value in metadata.items() if key not in STALE}
    return write_atomic(path, to_bytes(state_dict(modules, dtype), metadata=meta))
