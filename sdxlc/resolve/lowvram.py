"""The low-VRAM levers of the plan's `precision` section: `base fp8`, `offload text encoders`, `offload vae`.

`base fp8` is written as the recipe asks (a fine-tune asking for it is refused by SDX0611). The offload
words move components between the CPU and the GPU, so on the CPU profile they are written `false`: the
components already live in the memory they would be moved to (SDX0613 says so). docs/ESTIMATE.md
"Low-VRAM levers" describes what each saves.
"""

from __future__ import annotations

from typing import Any, Protocol

from sdxlc.resolve.profiles import Profile

OFFLOAD_PATHS = ("precision.offload_text_encoders", "precision.offload_vae")


class Taker(Protocol):
    provenance: dict[str, Any]

    def take(self, recipe_path: str, plan_path: str, default: Any = None) -> Any: ...


def lowvram_fields(b: Taker, profile: Profile) -> dict[str, Any]:
    """`base_fp8`, `offload_text_encoders` and `offload_vae` of the plan's precision section."""
    out: dict[str, Any] = {"base_fp8": bool(b.take("precision.base_fp8", "precision.base_fp8", False))}
    for path in OFFLOAD_PATHS:
        asked = bool(b.take(path, path, False))
        if asked and profile.device == "cpu":
            b.provenance[path] = {"source": "profile", "at": None}
            asked = False
        out[path.split(".", 1)[1]] = asked
    return out
