"""The host memory the cached latents and text-encoder outputs take during a run (docs/DATA.md "Caches").

Without `to disk` the runtime (runtime/train/conditioning.py) keeps every cached entry in host memory for the
whole run; with it, only the entries' keys, and each batch's entries are read from the disk cache when it is
trained on. The estimate adds the result to the cpu profile's `vram_breakdown` (`cache_entries`: there system
RAM is the device), `sdxlc plan --exact` adds the same term by this same rule, and on GPU profiles a large
in-memory cache is a warning (SDX0617). Pure standard library: the runtime imports it.

Entry sizes, as the runtime holds them (in the dtype it encodes in):
- a text entry per distinct caption: both encoders' penultimate states (`context.length` tokens ×
  `context.width`) and the pooled projection (`context.pooled_width`), in the weight dtype. The plan does
  not record how many captions are distinct, so every image counts one (an upper bound; the validation
  images' captions are counted exactly);
- a latent entry per image and flip: the mean and log-variance (2 × `latent.channels` × (h / `downscale`)
  × (w / `downscale`)) at the image's bucket, in the VAE dtype, and with a mask its (1, h, w) fp32 mask.
"""

from __future__ import annotations

from typing import Any

from sdxlc.plan.host_memory import CACHE_ENTRIES

__all__ = ["CACHE_ENTRIES", "any_cached", "cache_bytes", "held_bytes"]

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
MASK_BYTES = 4  # masks are fp32


def _text_entry(plan: dict[str, Any], model: dict[str, Any]) -> int:
    context = model["context"]
    elements = int(context["length"]) * int(context["width"]) + int(context["pooled_width"])
    return elements * DTYPE_BYTES[str(plan["precision"]["mixed"])]


def _latent_entry(plan: dict[str, Any], model: dict[str, Any], width: int, height: int) -> int:
    channels, down = int(model["latent"]["channels"]), int(model["latent"]["downscale"])
    vae = 4 if plan["precision"]["vae_fp32"] else DTYPE_BYTES[str(plan["precision"]["mixed"])]
    return 2 * channels * (height // down) * (width // down) * vae


def _flip_and_mask(plan: dict[str, Any]) -> tuple[float, float]:
    """Entries per image (1, 2 with `flip`) and the share of entries with a mask, over the datasets
    weighted by their images."""
    datasets = plan["data"]["datasets"]
    total = sum(int(d.get("images") or 0) for d in datasets)
    if not total:
        return 1.0, 0.0
    entries = sum(int(d.get("images") or 0) * (2 if d.get("flip") else 1) for d in datasets) / total
    masked = sum(int(d.get("images") or 0) * (2 if d.get("flip") else 1) for d in datasets if d.get("mask"))
    return entries, masked / (entries * total)


def cache_bytes(plan: dict[str, Any], model: dict[str, Any]) -> dict[str, int]:
    """Bytes of every entry of each cache the plan turns on (`text_encoder`, `latents`), training and
    validation images together; `model`: the model facts (schema/models/*.json)."""
    data, cache = plan["data"], plan["data"]["cache"]
    validation = (plan.get("validate") or {}).get("images") or []
    out: dict[str, int] = {}
    if cache["text_encoder"]:
        captions = int(data.get("images") or 0) + len({str(v.get("caption", "")) for v in validation})
        out["text_encoder"] = captions * _text_entry(plan, model)
    if cache["latents"]:
        rows = data["buckets"].get("table") or []
        images = sum(int(r.get("images") or 0) for r in rows)
        latents = sum(int(r.get("images") or 0)
                      * _latent_entry(plan, model, int(r["width"]), int(r["height"])) for r in rows)
        pixels = sum(int(r.get("images") or 0) * int(r["width"]) * int(r["height"]) for r in rows)
        entries, masked = _flip_and_mask(plan)
        total = entries * (latents + masked * pixels * MASK_BYTES) if images else 0.0
        total += sum(_latent_entry(plan, model, *(int(n) for n in v["bucket"])) for v in validation)
        out["latents"] = int(total)
    return out


def any_cached(plan: dict[str, Any]) -> bool:
    """Whether the plan caches the text-encoder outputs or the latents."""
    cache = plan["data"]["cache"]
    return bool(cache.get("text_encoder") or cache.get("latents"))


def held_bytes(plan: dict[str, Any], model: dict[str, Any]) -> int:
    """Host memory the caches hold through the run: every entry without `to disk`; with it, one batch's
    entries (the largest bucket's latents and a caption per sample)."""
    cache = plan["data"]["cache"]
    if not any_cached(plan):
        return 0
    if not cache.get("to_disk"):
        return sum(cache_bytes(plan, model).values())
    batch = int(plan["training"]["batch_size"])
    total = 0
    if cache["text_encoder"]:
        total += batch * _text_entry(plan, model)
    if cache["latents"]:
        rows = plan["data"]["buckets"].get("table") or []
        masked = any(d.get("mask") for d in plan["data"]["datasets"])
        total += batch * max((_latent_entry(plan, model, int(r["width"]), int(r["height"]))
                              + (int(r["width"]) * int(r["height"]) * MASK_BYTES if masked else 0)
                              for r in rows), default=0)
    return total
