"""Live tensor memory of code running on fake tensors: the tracker behind `sdxlc plan --exact`.

A ``TorchDispatchMode`` records every tensor storage an op creates and a weak-reference finalizer
removes it when it dies, so the live byte count follows the real allocation pattern (views share
storage; saved tensors stay alive until backward frees them). FLOPs are counted with the formulas of
``torch.utils.flop_counter``.

Fake tensors hold no values, so an op that needs one (``tensor.item()``, ``if tensor:``) cannot run on
them. Optimizers that scale by a norm (Adafactor's ``scale_parameter``, Prodigy's ``d``) do exactly that;
the tracker answers such reads with 1, which decides no allocation: the state and temporaries those
optimizers create depend only on the parameters' shapes. bitsandbytes optimizers need CUDA kernels and
cannot run at all: ``StatePlaceholder`` allocates their state at its documented size instead.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep fp32 state
BNB_BLOCK = 256  # blockwise quantization: one fp32 absmax per 256 values per state
ACTIVATIONS = "activations"
STEP_TEMPORARIES = "optimizer_step_transient"  # what ops create while the tracker's phase is "optimizer"


def _sdpa_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return int(flop_counter.sdpa_flop_count(q, k, v))


def _sdpa_backward_flops(
    g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return int(flop_counter.sdpa_backward_flop_count(g, q, k, v))


# The SDPA kernel that fake CPU tensors dispatch to has no formula in torch's registry: count it as flash.
_CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


class LiveBytes(TorchDispatchMode):  # type: ignore[misc]
    """Live bytes of every tensor storage, by category, with the peak and what made it up; FLOPs.

    FLOPs use the formulas of ``torch.utils.flop_counter`` (what ``FlopCounterMode`` counts with).
    ``FlopCounterMode`` itself is not used: its module tracker keeps tensors alive, which would
    inflate the memory peak several-fold.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[Any]] = {}  # id(storage) -> [bytes, category]
        self.by_category: dict[str, int] = defaultdict(int)
        self.current = 0
        self.peak = 0
        self.peak_categories: dict[str, int] = {}
        self.phase = "setup"
        self.peak_phase = "setup"
        self.phase_peaks: dict[str, int] = {}  # the peak of each phase (see `enter`)
        self.count_flops = False
        self.flops = 0
        self.registry: dict[Any, Any] = {
            **flop_counter.flop_registry,
            **{op: flop_counter.shape_wrapper(f) for op, f in _CPU_SDPA_FLOPS.items()},
        }

    def track(self, tensor: torch.Tensor, category: str | None = None) -> None:
        """Count a tensor's storage once, under `category` (by default what the phase creates: activations,
        or the optimizer step's temporaries); a named category re-labels a storage already counted."""
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self.live.get(key)
        if entry is not None:
            if category is not None and entry[1] != category:  # re-label (a gradient, optimizer state)
                self.by_category[entry[1]] -= entry[0]
                self.by_category[category] += entry[0]
                entry[1] = category
            return
        if category is None:
            category = STEP_TEMPORARIES if self.phase == "optimizer" else ACTIVATIONS
        size = int(storage.nbytes())
        self.live[key] = [size, category]
        weakref.finalize(storage, self._free, key)
        self.by_category[category] += size
        self.current += size
        if self.current > self.peak:
            self.reset_peak()
        if self.current > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.current

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.current -= entry[0]
            self.by_category[entry[1]] -= entry[0]

    def enter(self, phase: str) -> None:
        """Start a phase: its peak counts from the bytes live now (what a real process holds then)."""
        self.phase = phase
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), self.current)

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_categories = {k: v for k, v in self.by_category.items() if v}
        self.peak_phase = self.phase

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:  # a value read: no fake tensor has one
            dtype = args[0].dtype
            return True if dtype == torch.bool else 1.0 if dtype.is_floating_point else 1
        out = func(*args, **kwargs)
        if self.count_flops and (formula := self.registry.get(func._overloadpacket)) is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out



def fakeify(module: torch.nn.Module, mode: FakeTensorMode) -> None:
    """Replace every meta parameter and buffer by a CPU fake tensor of the same shape and dtype."""
    device = torch.device("cpu")
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (meta original, fake); shared weights

    def convert(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            memo[id(t)] = (t, mode.fake_tensor_converter.from_meta_and_device(mode, t.detach(), device))
        return memo[id(t)][1]

    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(convert(param), requires_grad=param.requires_grad)
        for name, buf in list(sub._buffers.items()):
            if buf is not None:
                sub._buffers[name] = convert(buf)



def bnb_state_bytes(numel: int, name: str) -> int:
    """Bytes of bitsandbytes optimizer state for one parameter (8-bit blockwise, fp32 below min size)."""
    name = name.removeprefix("paged_")
    states = 1 if name.startswith("lion") else 2
    if name == "lion" or numel < BNB_MIN_8BIT_SIZE:
        return states * numel * 4
    return states * (numel + 4 * -(-numel // BNB_BLOCK))


class StatePlaceholder(torch.optim.Optimizer):  # type: ignore[misc]
    """A bitsandbytes optimizer's state, allocated at its analytic size; the update is a plain SGD step."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, name: str) -> None:
        super().__init__(groups, {"lr": lr})
        self.name = name

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not self.state[p]:
                    self.state[p]["state"] = torch.empty(
                        bnb_state_bytes(p.numel(), self.name), dtype=torch.uint8
                    )
                p.add_(p.grad, alpha=-group["lr"])


