"""`--exact` on the cpu profile, comparable with a real run's peak RSS: the plan's `runtime_state` (the
process's own memory beyond its tensors, which the compiler wrote from the profile) is added, and the
mapped weights a step never reads are taken out, and the cached entries held in memory are added
(`cache_entries`), by the rules the estimate uses (sdxlc/plan/host_memory.py, sdxlc/plan/cache_memory.py).
GPU plans are left as measured."""

from __future__ import annotations

from typing import Any

import torch

from sdxlc.plan.cache_memory import CACHE_ENTRIES
from sdxlc.plan.host_memory import RUNTIME_STATE, unread_mapped

VAE_DECODER = ("decoder.", "post_quant_conv.")


def _unread(plan: dict[str, Any], parts: dict[str, torch.nn.Module]) -> dict[str, int]:
    """Bytes of the resident frozen components that are mapped and never read (empty off the cpu)."""
    if plan["hardware"]["device"] != "cpu":
        return {}
    tokens = {name: int(parts[name].get_input_embeddings().weight.numel()) if name in parts else 0
              for name in ("te1", "te2")}
    decoder = sum(int(p.numel()) for n, p in parts["vae"].named_parameters() if n.startswith(VAE_DECODER)) \
        if "vae" in parts else 0
    unread = unread_mapped(plan, plan["hardware"]["device"], tokens, decoder)
    return {k: v for k, v in unread.items() if k in parts}


def adjust(plan: dict[str, Any], parts: dict[str, torch.nn.Module], result: dict[str, Any]) -> None:
    """Add the runtime state and take out the unread mapped bytes: in the peak, every phase's peak, the
    resident bytes and the breakdown. A plan without the term (a GPU plan, an older sdxlc) is unchanged."""
    unread = _unread(plan, parts)
    written = plan.get("estimate", {}).get("vram_breakdown", {})
    state = int(written.get(RUNTIME_STATE, 0))
    cached = int(written.get(CACHE_ENTRIES, 0))  # the compiler sized them (sdxlc/plan/cache_memory.py)
    shift = state + cached - sum(unread.values())
    if not unread and not state and not cached:
        return
    breakdown = result["breakdown"]
    for part, size in unread.items():
        key = f"{part}_weights"
        if key in breakdown:
            breakdown[key] = max(0, breakdown[key] - size)
    if state:
        breakdown[RUNTIME_STATE] = state
    if cached:  # the cached entries held in memory, as the compiler wrote them into the plan
        breakdown[CACHE_ENTRIES] = cached
    result["peak_bytes"] += shift
    result["resident_bytes"] += shift
    result["phase_peaks"] = {k: v + shift for k, v in result["phase_peaks"].items()}
    result["notes"].append(
        f"cpu: counts the process's runtime state ({state / (1 << 20):.0f} MiB)"
        + (f", the {cached / (1 << 20):.1f} MiB of cached entries held in memory" if cached else "")
        + (f" and not the {sum(unread.values()) / (1 << 20):.0f} MiB of mapped weights a step never reads "
           "(token-embedding rows, the VAE decoder)" if unread else "")
    )
