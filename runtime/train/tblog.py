"""TensorBoard event files under <output.dir>/logs/: loss, learning rates, gradient norm, samples.

The plan's `log.tensorboard` decides whether a run writes them; when it is on and the `tensorboard`
package is missing the run stops before loading the model, with a message that says what to do.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime import RunError

MISSING = (
    "log.tensorboard is on but the `tensorboard` package is not installed: "
    "`pip install tensorboard`, or write `log no tensorboard` in the recipe"
)


def log_dir(plan: dict[str, Any]) -> Path:
    return Path(plan["output"]["dir"]) / "logs"


def group_tag(group: dict[str, Any], index: int, count: int) -> str:
    """The scalar tag of an optimizer group's learning rate: `lr/unet`, or `lr/block07` per kohya block."""
    block = group.get("block")
    if block is not None:
        return f"lr/block{int(block):02d}"
    return "lr/unet" if count == 1 else f"lr/group{index}"


class TensorBoardLog:
    """A SummaryWriter with the few calls a run makes."""

    def __init__(self, folder: Path) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise RunError(MISSING)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # the package is there but broken (protobuf mismatch and the like)
            raise RunError(f"{MISSING} ({exc})") from exc
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder))

    def loss(self, step: int, loss: float, average: float) -> None:
        self.writer.add_scalar("loss/step", loss, step)
        self.writer.add_scalar("loss/average", average, step)

    def optimizer(self, step: int, grad_norm: float | None, groups: Sequence[dict[str, Any]]) -> None:
        """Learning rate of every optimizer group, and the gradient norm (before clipping)."""
        for index, group in enumerate(groups):
            self.writer.add_scalar(group_tag(group, index, len(groups)), float(group["lr"]), step)
        if grad_norm is not None:
            self.writer.add_scalar("grad_norm", grad_norm, step)

    def values(self, step: int, values: dict[str, float]) -> None:
        """Named scalars (`val_loss`, `val_loss_ema`)."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def images(self, step: int, images: Sequence[tuple[str, Image.Image]]) -> None:
        """Sample images, one tag each (`samples/00`, ..., `samples/grid`)."""
        for tag, image in images:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            self.writer.add_image(f"samples/{tag}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, 0)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def open_log(plan: dict[str, Any], main: bool) -> TensorBoardLog | None:
    """The run's TensorBoard log, or None when the plan turns it off (or on processes other than main)."""
    if not plan["log"]["tensorboard"] or not main:
        return None
    log = TensorBoardLog(log_dir(plan))
    log.text("plan_hash", plan["plan_hash"])
    return log
