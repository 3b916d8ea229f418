"""Config-only diffusers folders of SDXL-topology models (no weights), for the model-family and estimate
tests: the shipped SDXL configs with other UNet widths and depths, or another pipeline's model_index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sdxlc.resolve.model_source import SHIPPED_CONFIG

# block_out_channels 96/192/384 at SDXL's full depth (transformer layers 1/2/10), head width 32
MID_UNET = {"block_out_channels": [96, 192, 384], "attention_head_dim": [3, 6, 12]}


def config_folder(
    root: Path, unet: dict[str, Any] | None = None, index: dict[str, Any] | None = None
) -> Path:
    """A copy of the shipped SDXL config folder with `unet` merged into unet/config.json and `index`
    into model_index.json."""
    shutil.copytree(SHIPPED_CONFIG, root)
    for name, changes in (("unet/config.json", unet), ("model_index.json", index)):
        if changes:
            path = root / name
            path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=2))
    return root
