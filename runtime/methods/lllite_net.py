"""The ControlNet-LLLite network (kohya-ss/sd-scripts `networks/control_net_lllite.py`), on a diffusers UNet.

One small module per targeted linear layer of the UNet: attention `to_q`, `to_k`, `to_v` of `attn1` and
`to_q` of `attn2` in every transformer block of the input blocks and the middle block (kohya's
`TRANSFORMER_ONLY`, `ATTN1_2_ONLY`, `ATTN_QKV_ONLY`, `SKIP_OUTPUT_BLOCKS`). Each module:

  conditioning1  the control image (B, 3, H, W) in [-1, 1] → (B, cond_dim, h, w) at the block's
                 resolution: a 4×4/4 conv to cond_dim/2, then (depth 1) 2×2/2, (depth 2) 4×4/4, or
                 (depth 3) 4×4/4 and 2×2/2 convs, ReLU between
  down           Linear(in, mlp_dim) + ReLU of the layer's input
  mid            Linear(mlp_dim + cond_dim, mlp_dim) + ReLU of [conditioning, down] concatenated
  up             Linear(mlp_dim, in), weight and bias zero-initialised (kohya zeroes the weight):
                 an untrained network changes nothing

and the layer computes `layer(x + up(dropout(mid(...))) * multiplier)`. The depth follows kohya's rule
on the original (SAI) block index: input blocks 0-2 → 1, 3-5 → 2, higher → 3, the middle block → 3.
Module names are kohya's, `lllite_unet_<SAI path with _>`, so the network's state dict is kohya's file
layout (`….conditioning1.0.weight`, `….down.0.weight`, `….mid.0.weight`, `….up.0.weight`), which
kohya's sdxl_gen_img.py and the ComfyUI LLLite node load.

The network is a submodule of the UNet (`unet.lllite`) so it moves with it; the layers are hooked with
forward pre-hooks (no UNet name changes). Without a control image the hooks do nothing.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from runtime import RunError
from runtime.formats import sai_names

PREFIX = "lllite_unet"
ATTRIBUTE = "lllite"
_TARGET = re.compile(r"(down_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\."
                     r"(attn1\.to_[qkv]|attn2\.to_q)")


def depth_of(sai: str) -> int:
    """kohya's depth of an SAI module path: the conditioning's downsampling is 8 · 2^(depth-1)."""
    head, index = sai.split(".")[:2]
    if head == "middle_block":
        return 3
    number = int(index)
    return 1 if number <= 2 else (2 if number <= 5 else 3)


def conditioning_stem(depth: int, cond_dim: int) -> torch.nn.Sequential:
    half = cond_dim // 2
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, half, kernel_size=4, stride=4)]
    if depth == 1:
        layers += [torch.nn.ReLU(inplace=True), torch.nn.Conv2d(half, cond_dim, kernel_size=2, stride=2)]
    elif depth == 2:
        layers += [torch.nn.ReLU(inplace=True), torch.nn.Conv2d(half, cond_dim, kernel_size=4, stride=4)]
    else:
        layers += [torch.nn.ReLU(inplace=True), torch.nn.Conv2d(half, half, kernel_size=4, stride=4),
                   torch.nn.ReLU(inplace=True), torch.nn.Conv2d(half, cond_dim, kernel_size=2, stride=2)]
    return torch.nn.Sequential(*layers)


class LLLiteModule(torch.nn.Module):
    """The LLLite branch of one linear layer."""

    def __init__(self, in_dim: int, depth: int, cond_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.depth = depth
        self.conditioning1 = conditioning_stem(depth, cond_dim)
        self.down = torch.nn.Sequential(torch.nn.Linear(in_dim, mlp_dim), torch.nn.ReLU(inplace=True))
        self.mid = torch.nn.Sequential(torch.nn.Linear(mlp_dim + cond_dim, mlp_dim),
                                       torch.nn.ReLU(inplace=True))
        self.up = torch.nn.Sequential(torch.nn.Linear(mlp_dim, in_dim))
        # kohya zeroes only the weight; the bias too makes an untrained network an exact no-op
        torch.nn.init.zeros_(self.up[0].weight)
        torch.nn.init.zeros_(self.up[0].bias)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """The control image's embedding as a token sequence (B, h·w, cond_dim)."""
        weight = self.conditioning1[0].weight
        cx = self.conditioning1(image.to(weight.device, weight.dtype))
        n, c, h, w = cx.shape
        return cx.view(n, c, h * w).permute(0, 2, 1)

    def delta(self, x: torch.Tensor, cx: torch.Tensor, dropout: float | None,
              multiplier: float) -> torch.Tensor:
        """What is added to the layer's input `x` (B, tokens, in)."""
        if x.shape[0] != cx.shape[0]:  # classifier-free guidance doubles the batch
            if x.shape[0] % cx.shape[0]:
                raise RunError(f"a batch of {x.shape[0]} cannot take {cx.shape[0]} control images")
            cx = cx.repeat(x.shape[0] // cx.shape[0], 1, 1)
        if cx.shape[1] != x.shape[1]:
            raise RunError(f"the control image gives {cx.shape[1]} positions where the layer has "
                           f"{x.shape[1]}: "
                           "the control image must have the training image's size")
        weight = self.down[0].weight
        h = torch.cat([cx.to(weight.dtype), self.down(x.to(weight.dtype))], dim=2)
        h = self.mid(h)
        if dropout is not None and self.training:
            h = torch.nn.functional.dropout(h, p=dropout)
        return (self.up(h) * multiplier).to(x.dtype)


class LLLiteNetwork(torch.nn.Module):
    """Every LLLite module of a UNet, by kohya name; `control(image)` sets the control image."""

    def __init__(self, modules: dict[str, LLLiteModule], cond_dim: int, mlp_dim: int,
                 dropout: float | None, multiplier: float) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleDict(modules)
        self.cond_dim, self.mlp_dim = cond_dim, mlp_dim
        self.dropout, self.multiplier = dropout, multiplier
        self.image: torch.Tensor | None = None
        self._cache: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def state_dict_kohya(self) -> dict[str, torch.Tensor]:
        """kohya's file keys: `lllite_unet_….conditioning1.0.weight` etc."""
        return {key.removeprefix("blocks."): value for key, value in self.state_dict().items()}

    def load_kohya(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict_kohya()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise RunError(f"the LLLite file does not fit this UNet: {len(missing)} weights missing "
                           f"({', '.join(missing[:2])}), {len(extra)} unknown ({', '.join(extra[:2])})")
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise RunError(f"the LLLite file's {key} has shape {tuple(value.shape)}, this UNet needs "
                               f"{tuple(own[key].shape)}")
        self.load_state_dict({f"blocks.{key}": value for key, value in state.items()})

    def control(self, image: torch.Tensor | None) -> None:
        """Set (or clear, with None) the control image (B, 3, H, W) in [-1, 1]; moved to the network's
        device once here, not by every module."""
        if image is not None:
            image = image.to(next(self.parameters()).device, non_blocking=True)
        self.image, self._cache = image, {}

    def _pre_hook(self, name: str) -> Any:
        def hook(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if self.image is None or self.multiplier == 0.0:
                return None
            module = self.blocks[name]
            assert isinstance(module, LLLiteModule)
            if torch.is_grad_enabled():  # training: the stem runs inside each forward
                cx = module.embed(self.image)
            else:  # inference: once per image, not once per denoising step
                cx = self._cache.get(name)
                if cx is None:
                    cx = self._cache[name] = module.embed(self.image)
            x = args[0]
            return (x + module.delta(x, cx, self.dropout, self.multiplier), *args[1:])

        return hook

    def hook(self, unet: torch.nn.Module, paths: dict[str, str]) -> None:
        """Hook each target layer (`paths`: kohya name → diffusers module path)."""
        for name, path in paths.items():
            self._handles.append(unet.get_submodule(path).register_forward_pre_hook(self._pre_hook(name)))

    def unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def targets(unet: torch.nn.Module) -> dict[str, tuple[str, int, int]]:
    """kohya name → (diffusers module path, input width, depth) of every layer kohya gives LLLite."""
    config, out = unet.config, {}
    for path, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not _TARGET.fullmatch(path):
            continue
        sai = sai_names.unet_original(path, config.layers_per_block, config.up_block_types)
        out[f"{PREFIX}_" + sai.replace(".", "_")] = (path, module.in_features, depth_of(sai))
    return out


def attach(unet: torch.nn.Module, cond_dim: int, mlp_dim: int, dropout: float | None = None,
           multiplier: float = 1.0) -> LLLiteNetwork:
    """Build the network for `unet`, hook it in and register it as `unet.lllite`; returns it."""
    if cond_dim < 2 or cond_dim % 2:
        raise RunError(f"cond_dim {cond_dim} must be an even number of at least 2")
    found = targets(unet)
    if not found:
        raise RunError("the UNet has no attention layers in its input or middle blocks for LLLite")
    modules = {name: LLLiteModule(width, depth, cond_dim, mlp_dim)
               for name, (_, width, depth) in found.items()}
    net = LLLiteNetwork(modules, cond_dim, mlp_dim, dropout, multiplier)
    param = next(unet.parameters())
    net.to(param.device)
    net.hook(unet, {name: path for name, (path, _, _) in found.items()})
    unet.add_module(ATTRIBUTE, net)
    return net


def network(unet: torch.nn.Module) -> LLLiteNetwork:
    """The LLLite network attached to `unet`."""
    net = getattr(unet, ATTRIBUTE, None)
    if not isinstance(net, LLLiteNetwork):
        raise RunError("the UNet has no LLLite network attached")
    return net


def dims_of(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(cond_dim, mlp_dim) of a kohya LLLite state dict, as sdxl_gen_img.py reads them."""
    cond = next((v.shape[0] * 2 for k, v in state.items() if k.endswith("conditioning1.0.weight")), None)
    mlp = next((v.shape[0] for k, v in state.items() if k.endswith("down.0.weight")), None)
    if cond is None or mlp is None:
        raise RunError("not a ControlNet-LLLite file: no `conditioning1.0.weight` / `down.0.weight` keys")
    return int(cond), int(mlp)
