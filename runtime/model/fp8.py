"""`base fp8`: frozen linear and convolution weights stored in float8_e4m3fn, upcast per layer.

As kohya's `--fp8_base` (sd-scripts `train_network.py`: the UNet and text encoders cast to
`torch.float8_e4m3fn`, the text encoders' embeddings kept in the compute dtype), the frozen base weights
live in one byte per value. kohya relies on autocast to upcast each weight; here each frozen `Linear` and
`Conv2d` computes through an autograd function that upcasts its weight to the compute dtype (autocast's,
else the input's) for the forward pass and again in the backward pass, keeping only the float8 weight for
backward: autograd never holds a full-precision copy of the model, and fp32 runs work too. Norms,
embeddings and biases stay in the compute dtype, as does the layer holding a model's first parameter
(`ModelMixin.dtype` reads it: the pipelines cast their inputs to it).

Only frozen weights are stored this way: a LoRA's (or LLLite's) own layers are trainable and left alone,
and peft's LoRA layers call the patched base layer as before. The plan refuses it for a fine-tune (SDX0611).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
PATCHED = "_sdxlc_fp8"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer computes in: autocast's when it is on for the input's device, else the input's."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class _Linear(torch.autograd.Function):  # type: ignore[misc]
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = compute_dtype(x)
        ctx.save_for_backward(weight)
        ctx.dtypes = (dtype, x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        dtype, x_dtype = ctx.dtypes
        return (grad.to(dtype) @ weight.to(dtype)).to(x_dtype), None, None


class _Conv2d(torch.autograd.Function):  # type: ignore[misc]
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: torch.nn.Conv2d) -> torch.Tensor:
        dtype = compute_dtype(x)
        ctx.save_for_backward(weight)
        ctx.meta = (dtype, x.dtype, x.shape, layer.stride, layer.padding, layer.dilation, layer.groups)
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                            layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (weight,) = ctx.saved_tensors
        dtype, x_dtype, shape, stride, padding, dilation, groups = ctx.meta
        grad_x = torch.nn.grad.conv2d_input(shape, weight.to(dtype), grad.to(dtype), stride, padding,
                                            dilation, groups)
        return grad_x.to(x_dtype), None, None, None


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _Linear.apply(x, self.weight, self.bias)
    return out


def _conv_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _Conv2d.apply(x, self.weight, self.bias, self)
    return out


def _eligible(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, torch.nn.Linear)


def store_fp8(model: torch.nn.Module) -> int:
    """Store every frozen linear and convolution weight of `model` in float8 and make its layer upcast
    it; returns how many layers were converted."""
    first = next(model.parameters(), None)
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not _eligible(module) or weight is None or weight.requires_grad or weight is first:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        weight.data = weight.data.to(FP8)
        forward = _conv_forward if isinstance(module, torch.nn.Conv2d) else _linear_forward
        module.forward = types.MethodType(forward, module)
        setattr(module, PATCHED, True)
        count += 1
    return count


def apply_base_fp8(pipe: Any, plan: dict[str, Any]) -> int:
    """`precision.base_fp8`: the UNet's and both text encoders' frozen weights in float8 (after the method
    attached its layers, so that peft never casts a LoRA to the base layer's float8)."""
    if not plan["precision"].get("base_fp8"):
        return 0
    return sum(store_fp8(getattr(pipe, name)) for name in ("unet", "text_encoder", "text_encoder_2"))


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters as stored."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
