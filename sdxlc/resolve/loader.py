"""The data loader's settings (`data.loader`): worker processes, prefetch, page-locked memory.

The recipe's `loader` values win; otherwise the profile's device decides (workers keep a GPU fed while
images decode; on the CPU they compete with the step for the same cores), and cached latents leave no
image to decode, so such a plan gets no workers. None of it changes a batch (runtime/train/loader.py).
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang.defaults import DEVICE_DEFAULTS
from sdxlc.lang.layers import Layers, Provenance

KEYS = ("workers", "prefetch", "pin_memory")


def resolve_loader(layers: Layers, device: str, cache: dict[str, Any],
                   provenance: dict[str, Provenance]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for key in KEYS:
        path = f"loader.{key}"
        value, origin = layers.get(path)
        if not layers.given(path):
            if key == "workers" and cache["latents"]:
                value, origin = 0, {"source": "derived", "at": None}
            elif path in DEVICE_DEFAULTS.get(device, {}):
                value, origin = DEVICE_DEFAULTS[device][path], {"source": "profile", "at": None}
        section[key] = value
        provenance[f"data.loader.{key}"] = origin
    return section
