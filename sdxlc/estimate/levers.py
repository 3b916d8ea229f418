"""Memory levers: the settings a plan has left unused that would lower its peak, cheapest first.

Each lever is a set of plan changes; its saving is the drop in the estimate when only that lever is
applied (`sdxlc.estimate.analytic.estimate` on a modified copy). The fit solver (`sdxlc/estimate/fit.py`)
applies them one by one; `fit strict` lists them in the help of an over-budget error. docs/ESTIMATE.md
describes each.
"""

from __future__ import annotations

import copy
from typing import Any

from sdxlc.estimate import lowvram
from sdxlc.estimate.analytic import estimate
from sdxlc.estimate.fit import ALTERNATIVES
from sdxlc.estimate.model_data import get_path, set_path
from sdxlc.estimate.scale import launch_shape
from sdxlc.resolve.profiles import Profile

Candidate = tuple[str, dict[str, Any], str]  # (name, plan path → new value, description)


def applied(plan: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of the plan with the changes made; only the sections they touch are copied."""
    out = dict(plan)
    for top in {path.split(".", 1)[0] for path in changes}:
        out[top] = copy.deepcopy(plan[top])
    for path, value in changes.items():
        set_path(out, path, value)
    return out


def _caching(plan: dict[str, Any]) -> list[Candidate]:
    out: list[Candidate] = []
    targets = set(get_path(plan, "method.targets"))
    if not get_path(plan, "data.cache.text_encoder") and not targets & {"te1", "te2"}:
        out.append(("cache_text_encoder", {"data.cache.text_encoder": True},
                    "cache text-encoder outputs and free both text encoders "
                    "(no per-step caption shuffling or dropout)"))
    if not get_path(plan, "data.cache.latents"):
        out.append(("cache_latents", {"data.cache.latents": True},
                    "cache VAE latents and free the VAE during training "
                    "(augmentations are fixed at caching time)"))
        if int(get_path(plan, "training.batch_size")) > 1 and not plan["precision"].get("vae_slicing"):
            out.append(("vae_slicing", {"precision.vae_slicing": True},
                        "encode the batch one image at a time with the VAE (`vae sliced`; "
                        "the same latents, a slightly slower encode)"))
    return out


def _optimizer(plan: dict[str, Any]) -> list[Candidate]:
    out: list[Candidate] = []
    optimizer = str(get_path(plan, "optimizer.name"))
    method = plan["method"]
    if (method.get("kind") == "finetune" and optimizer == "adafactor" and not method.get("fused_backward")
            and int(get_path(plan, "training.accumulate")) == 1 and launch_shape(plan)[0] == 1):
        out.append(("fused_backward", {"method.fused_backward": True},
                    "Adafactor's fused backward pass: each weight steps as its gradient is ready"))
    if optimizer in ("adamw", "lion"):
        out.append(("optimizer_8bit", {"optimizer.name": optimizer + "8bit"},
                    f"use the 8-bit {optimizer} optimizer (bitsandbytes; 8-bit optimizer state)"))
    if optimizer in ("adamw", "adamw8bit", "prodigy"):
        changes: dict[str, Any] = {"optimizer.name": "adafactor"}
        text = "use Adafactor (factored second moments: almost no optimizer state)"
        if (method.get("kind") == "finetune" and not method.get("fused_backward")
                and int(get_path(plan, "training.accumulate")) == 1 and launch_shape(plan)[0] == 1):
            changes["method.fused_backward"] = True  # a fine-tune's gradients go too
            text = ("use Adafactor with the fused backward pass (almost no optimizer state; each weight "
                    "steps as its gradient is ready, so the gradients never all exist)")
        out.append(("optimizer_factored", changes, text))
    return out


def _precision(plan: dict[str, Any], profile: Profile) -> list[Candidate]:
    out: list[Candidate] = []
    method, mixed = plan["method"], get_path(plan, "precision.mixed")
    if method.get("kind") == "finetune" and mixed == "bf16" and not method.get("full_bf16"):
        out.append(("full_bf16", {"method.full_bf16": True},
                    "`full bf16`: trained weights, gradients and optimizer state in bf16, no fp32 master "
                    "weights (small updates can round away)"))
    if mixed == "fp32" and (profile.bf16 or profile.fp16):
        dtype = "bf16" if profile.bf16 else "fp16"
        out.append((f"mixed_precision_{dtype}", {"precision.mixed": dtype},
                    f"train in {dtype} mixed precision (frozen weights stored in {dtype})"))
    return out


def _batch(plan: dict[str, Any]) -> list[Candidate]:
    batch = int(get_path(plan, "training.batch_size"))
    if batch <= 1:
        return []
    smaller = batch // 2 if batch % 2 == 0 else 1
    accumulate = int(get_path(plan, "training.accumulate")) * (batch // smaller)
    return [("smaller_batch", {"training.batch_size": smaller, "training.accumulate": accumulate},
             f"batch {smaller} with {accumulate}x gradient accumulation (same effective batch, slower)")]


def candidates(plan: dict[str, Any], profile: Profile) -> list[Candidate]:
    """Every memory lever the plan has not used, cheapest first: caching, the VAE's encode, offloading
    the encoders, gradient checkpointing, optimizer state, precision, a smaller batch with more
    accumulation, then float8 base weights (the one that changes the frozen model's numbers)."""
    out = _caching(plan) + lowvram.offload_levers(plan, profile.device)
    if not get_path(plan, "training.gradient_checkpointing"):
        out.append(("gradient_checkpointing", {"training.gradient_checkpointing": True},
                    "turn on gradient checkpointing (about 20-30% slower steps)"))
    return out + _optimizer(plan) + _precision(plan, profile) + _batch(plan) + lowvram.fp8_levers(plan)


def levers(plan: dict[str, Any], profile: Profile) -> list[dict[str, Any]]:
    """Memory levers the plan has not used, cheapest first: ``{name, saves_bytes, description, changes}``.

    ``changes`` maps dotted plan paths to new values; ``saves_bytes`` is the drop in ``vram_bytes`` when
    only that lever is applied. Levers that save nothing are left out.
    """
    base = estimate(plan, profile)["vram_bytes"]
    out: list[dict[str, Any]] = []
    for name, changes, description in candidates(plan, profile):
        saves = base - estimate(applied(plan, changes), profile)["vram_bytes"]
        if saves > 0:
            out.append(
                {"name": name, "saves_bytes": int(saves), "description": description, "changes": changes}
            )
    return out


def enough(
    plan: dict[str, Any], profile: Profile, allowed: set[str] | None, blocked: frozenset[str] = frozenset()
) -> tuple[list[tuple[dict[str, Any], int]], int]:
    """The levers named in `allowed` that, applied together cheapest first, make the plan fit, the way
    `fit auto` would apply them: ([(lever, what it saves on top of the ones before it)], the peak with them
    all). A setting is moved by one lever only (8-bit AdamW, then not Adafactor too); a lever may apply
    again with new values (batch 8, 4, then 2). The list is empty when even all of them do not fit.
    `allowed` None: every lever that moves none of the `blocked` plan paths (a lever that saves nothing
    now may save once others are applied: checkpointing after a fine-tune's optimizer state shrinks)."""
    current, peak = plan, estimate(plan, profile)["vram_bytes"]
    chosen: list[tuple[dict[str, Any], int]] = []
    owner: dict[str, str] = {}
    while True:
        options = [lever for lever in levers(current, profile) if _allowed(lever, allowed, blocked)]
        relaxed = {p: n for p, n in owner.items() if n not in ALTERNATIVES}
        lever = _free(options, owner) or _free(options, relaxed)
        if lever is None:
            return [], peak
        current = applied(current, lever["changes"])
        owner.update(dict.fromkeys(lever["changes"], lever["name"]))
        result = estimate(current, profile)
        saves = peak - result["vram_bytes"]
        if lever["name"] in ALTERNATIVES:  # an alternative replaces the one chosen before: one entry for both
            saves += sum(s for c, s in chosen if c["name"] in ALTERNATIVES)
            chosen = [(c, s) for c, s in chosen if c["name"] not in ALTERNATIVES]
        chosen.append((lever, saves))
        peak = result["vram_bytes"]
        if result["fits"]:
            return chosen, peak


def _free(options: list[dict[str, Any]], owner: dict[str, str]) -> dict[str, Any] | None:
    """The first lever none of whose settings another lever in `owner` moved."""
    for lever in options:
        if all(owner.get(p, lever["name"]) == lever["name"] for p in lever["changes"]):
            return lever
    return None


def _allowed(lever: dict[str, Any], allowed: set[str] | None, blocked: frozenset[str]) -> bool:
    if allowed is not None:
        return lever["name"] in allowed
    return not blocked & set(lever["changes"])
