"""The low-VRAM levers in `sdxlc plan --exact`: `base fp8` on the fake model and offloaded components
leaving the device after the encode phase (docs/ESTIMATE.md "Low-VRAM levers")."""

from __future__ import annotations

from typing import Any

import torch

from runtime.exact.fake_memory import LiveBytes

OFFLOADED = {"offload_text_encoders": ("te1", "te2"), "offload_vae": ("vae",)}


def release_offloaded(plan: dict[str, Any], parts: dict[str, torch.nn.Module], tracker: LiveBytes) -> None:
    """After the encode phase, the offloaded components' weights leave the device: stop counting them
    (the runtime moves them to the CPU, runtime/model/offload.py)."""
    trained = set(plan["method"]["targets"])
    for key, names in OFFLOADED.items():
        if not plan["precision"].get(key):
            continue
        for name in names:
            if name in parts and name not in trained:
                for tensor in (*parts[name].parameters(), *parts[name].buffers()):
                    tracker._free(id(tensor.untyped_storage()))
