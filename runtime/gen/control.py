"""Control images for ControlNet-LLLite generation: `sdxlc gen --lllite FILE --control IMAGE` and the
samples of an LLLite run (`sample "…" control "c.png"`, the plan's `sample.controls`).

An image is read as RGB, resized to the generated size (LANCZOS, as kohya's sdxl_gen_img.py does) and
scaled to [-1, 1], the range the network trained on (kohya feeds it the same way).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from runtime import RunError
from runtime.methods import lllite_net
from sdxlc.plan.manifest import file_sha256


def load_control(path: Path, width: int, height: int, sha256: str | None = None) -> torch.Tensor:
    """The control image at `path` as (1, 3, height, width) float32 in [-1, 1]."""
    try:
        if sha256 is not None and file_sha256(path) != sha256:
            raise RunError(f"the control image {path} changed since the plan was made: "
                           "compile the recipe again")
        with Image.open(path) as raw:
            image = raw.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RunError(f"cannot read the control image {path}: {exc}") from exc
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous() * 2.0 - 1.0


@contextmanager
def controlled(unet: torch.nn.Module, image: torch.Tensor | None) -> Iterator[None]:
    """The UNet's LLLite network (if it has one) conditioned on `image` for the duration; cleared after."""
    net = getattr(unet, lllite_net.ATTRIBUTE, None)
    if not isinstance(net, lllite_net.LLLiteNetwork):
        yield
        return
    net.control(image)
    try:
        yield
    finally:
        net.control(None)


@contextmanager
def sample_control(unet: torch.nn.Module, plan: dict[str, Any], index: int) -> Iterator[None]:
    """A training sample's control image: the plan's `sample.controls[index]`, or none."""
    settings = plan["sample"]
    controls = settings.get("controls") or []
    image = None
    if index < len(controls):
        entry = controls[index]
        image = load_control(Path(entry["path"]), settings["width"], settings["height"], entry["sha256"])
    with controlled(unet, image):
        yield
