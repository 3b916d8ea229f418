"""The cpu profile's terms for what a run's resident memory holds beyond its tensors (`runtime_state`) and
the mapped weights it never reads (sdxlc/plan/host_memory.py; docs/ESTIMATE.md "Checked against real
memory"). GPU profiles count device memory: nothing here applies to them."""

from __future__ import annotations

from typing import Any

from sdxlc.estimate.facts import TEXT_TOKENS
from sdxlc.estimate.model_data import bucket_sizes, latent_px
from sdxlc.plan.cache_memory import CACHE_ENTRIES, held_bytes
from sdxlc.plan.host_memory import RUNTIME_STATE, family, runtime_state, unread_mapped
from sdxlc.resolve.profiles import Profile


def token_embedding_params(model: dict[str, Any]) -> dict[str, int]:
    """Parameters of each text encoder's token-embedding table: its parameters less the non-embedding
    ones (`te*_forward_per_sample` = 2 × those × 77 tokens) and the 77 position rows."""
    out = {}
    for part in ("te1", "te2"):
        width = int(model["te_lora_input_width"][part]["q_proj"])
        dense = round(float(model["flops"][f"{part}_forward_per_sample"]) / (2 * TEXT_TOKENS))
        out[part] = max(0, int(model["params"][part]) - dense - TEXT_TOKENS * width)
    return out


def drop_unread(plan: dict[str, Any], profile: Profile, model: dict[str, Any], terms: dict[str, int]) -> None:
    """Take the mapped, never-read bytes out of the frozen components' weight terms (cpu only)."""
    if profile.device != "cpu":
        return
    unread = unread_mapped(plan, profile.device, token_embedding_params(model),
                           int(model["params"]["vae_decoder"]))
    for part, size in unread.items():
        key = f"{part}_weights"
        if key in terms:
            terms[key] = max(0, terms[key] - size)


def add_runtime_state(plan: dict[str, Any], profile: Profile, model: dict[str, Any],
                      terms: dict[str, int]) -> None:
    """The process's own resident memory beyond its tensors, as the profile measured it for the model family,
    with the shares of checkpointing and oneDNN's convolutions (cpu only; sdxlc/plan/host_memory.py)."""
    if profile.device == "cpu" and profile.runtime_state_for(family(plan)):
        latent = max(latent_px(w, h, model) for w, h, _ in bucket_sizes(plan))
        terms[RUNTIME_STATE] = runtime_state(plan, profile.runtime_state_for(family(plan)), latent)


def add_cache_entries(plan: dict[str, Any], profile: Profile, model: dict[str, Any],
                      terms: dict[str, int]) -> None:
    """The cached latents and text-encoder outputs the run keeps in memory (cpu only: on a GPU they are in
    system RAM, not on the device; sdxlc/plan/cache_memory.py)."""
    if profile.device == "cpu":
        size = held_bytes(plan, model)
        if size:
            terms[CACHE_ENTRIES] = size
