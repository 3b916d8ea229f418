"""`lllite`: a ControlNet-LLLite network trained on the frozen UNet (runtime/methods/lllite_net.py),
saved as kohya's LLLite file (`lllite_unet_…` keys, `modelspec.architecture` ending in
`/control-net-lllite`, as sdxl_train_control_net_lllite.py writes it).

Each batch's control image (`Batch.control`, (B, 3, H, W) in [-1, 1]) is handed to the network by
`before_forward`, right before the UNet call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import torch
from safetensors.torch import load_file

from runtime import RunError
from runtime.formats.safetensors_file import to_bytes as safetensors_bytes
from runtime.methods import lllite_net
from runtime.methods.base import Method, training_metadata
from sdxlc.plan.files import write_atomic

if TYPE_CHECKING:
    from runtime.train.data import Batch

ARCHITECTURE = "stable-diffusion-xl-v1-base/control-net-lllite"


def metadata(plan: dict[str, Any], step: int, epoch: int, started: float,
             lineage: list[str] | None = None) -> dict[str, str]:
    """kohya's `modelspec.*` keys of an LLLite file, the run's `ss_*` keys, and the plan."""
    method = plan["method"]
    return {
        **training_metadata(plan, step, epoch, started, lineage),
        "ss_cond_emb_dim": str(method["cond_dim"]),
        "ss_network_dim": str(method["mlp_dim"]),
        "ss_network_dropout": str(method["dropout"]),
        "modelspec.architecture": ARCHITECTURE,
    }


def save(path: Path, unet: torch.nn.Module, dtype: torch.dtype, meta: dict[str, str]) -> Path:
    state = {key: value.detach().to("cpu", dtype).contiguous()
             for key, value in lllite_net.network(unet).state_dict_kohya().items()}
    write_atomic(path, safetensors_bytes(state, metadata=meta))
    return path


def read(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a kohya LLLite file."""
    try:
        return load_file(str(path))
    except (OSError, safetensors.SafetensorError) as exc:
        raise RunError(f"cannot read the LLLite file {path}: {exc}") from exc


def load(unet: torch.nn.Module, path: Path, multiplier: float = 1.0) -> lllite_net.LLLiteNetwork:
    """Attach the LLLite network of a kohya file to `unet` (its dims read from the shapes), in the UNet's
    dtype, for generation."""
    state = read(path)
    try:
        cond_dim, mlp_dim = lllite_net.dims_of(state)
    except RunError as exc:  # a LoRA or an embedding given as the LLLite file
        raise RunError(f"{path}: {exc}") from exc
    net = lllite_net.attach(unet, cond_dim, mlp_dim, None, multiplier)
    net.load_kohya(state)
    net.to(next(unet.parameters()).dtype)
    net.eval().requires_grad_(False)
    return net


class LLLiteMethod(Method):
    """`lllite`: only the LLLite network trains (fp32); the UNet and the encoders stay frozen."""

    def attach(self, pipe: Any) -> None:
        spec = self.spec
        net = lllite_net.attach(pipe.unet, spec["cond_dim"], spec["mlp_dim"], spec["dropout"] or None)
        net.float().requires_grad_(True)

    def param_groups(self, pipe: Any) -> list[dict[str, Any]]:
        params = list(lllite_net.network(pipe.unet).parameters())
        return [{"params": params, "lr": self.plan["optimizer"]["lr"], "block": None}]

    def before_forward(self, pipe: Any, batch: Batch) -> None:
        if batch.control is None:
            raise RunError("LLLite needs a control image for every training image; this batch has none "
                           "(give its data line a `control` folder)")
        lllite_net.network(pipe.unet).control(batch.control)

    def save(self, path: Path, pipe: Any, step: int, epoch: int, started: float) -> Path:
        meta = metadata(self.plan, step, epoch, started, self.lineage)
        return save(path, pipe.unet, self.save_dtype, meta)
