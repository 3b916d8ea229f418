"""The training methods by the plan's `method.kind` (docs/METHODS.md).

  lora       LoRA layers on the UNet and/or text encoders (lora.py) → one kohya file
  finetune   every weight of the targeted models (finetune.py) → one single-file SDXL checkpoint
  embedding  new token rows of both encoders (embedding.py) → {"clip_l", "clip_g"}
  lllite     a ControlNet-LLLite network on the frozen UNet (lllite.py) → one kohya LLLite file

A new method is a module with a `Method` subclass (runtime/methods/base.py) and one line here.
"""

from __future__ import annotations

from typing import Any

from runtime import RunError
from runtime.methods.base import Method
from runtime.methods.embedding import EmbeddingMethod
from runtime.methods.finetune import FinetuneMethod
from runtime.methods.lllite import LLLiteMethod
from runtime.methods.lora import LoraMethod

METHODS: dict[str, type[Method]] = {
    "lora": LoraMethod,
    "finetune": FinetuneMethod,
    "embedding": EmbeddingMethod,
    "lllite": LLLiteMethod,
}


def for_plan(plan: dict[str, Any]) -> Method:
    """The plan's training method."""
    kind = plan["method"]["kind"]
    try:
        method = METHODS[kind]
    except KeyError:
        known = ", ".join(METHODS)
        raise RunError(f"this runtime has no training method {kind!r} (it has {known})") from None
    return method(plan)
