"""SDX0617: on a GPU profile the in-memory caches take host RAM that the device estimate does not show.

On the cpu profile system RAM is the device and the estimate counts the cached entries (`cache_entries` in
`vram_breakdown`); on a GPU the same entries sit in system RAM for the whole run, so where they are large
`sdxlc plan` says how much (sdxlc/plan/cache_memory.py sizes them)."""

from __future__ import annotations

from typing import Any

from sdxlc.estimate.analytic import model_facts
from sdxlc.estimate.model_data import EstimateError
from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers
from sdxlc.plan.cache_memory import cache_bytes
from sdxlc.resolve.cache_defaults import DEFAULT_BUDGET_BYTES
from sdxlc.resolve.profiles import Profile

WARN_BYTES = DEFAULT_BUDGET_BYTES  # the host memory a default cache may take
_WORDS = {"text_encoder": ("text-encoder outputs", "cache te"), "latents": ("latents", "cache latents")}


def cache_ram_warning(plan: dict[str, Any], profile: Profile, layers: Layers) -> list[Diagnostic]:
    """A warning when the caches held in memory (not `to disk`) would take more than WARN_BYTES of host RAM
    on a GPU profile."""
    if profile.device == "cpu" or plan["data"]["cache"]["to_disk"]:
        return []
    try:
        sizes = cache_bytes(plan, model_facts(plan))
    except EstimateError:
        return []
    total = sum(sizes.values())
    if total <= WARN_BYTES:
        return []
    held = [key for key, size in sizes.items() if size]
    parts = ", ".join(f"{sizes[key] / (1 << 30):.1f} GiB of {_WORDS[key][0]}" for key in held)
    words = " / ".join(f"`{_WORDS[key][1]} to disk`" for key in held)
    return [make(
        "SDX0617",
        f"the in-memory caches will hold up to {total / (1 << 30):.1f} GiB of host RAM for the whole run "
        f"({parts}); the GPU estimate does not count it",
        layers.place("cache.latents", "cache.text_encoder", "data"),
        help=f"say {words} to keep the entries on disk and read each batch's when it trains (the run then "
        "holds only their keys), or make sure the machine has that much free RAM; the text-encoder size "
        "counts one caption per image (fewer when captions repeat)",
    )]
