"""Caching by default: where the recipe says nothing about a cache, the plan caches the text-encoder
outputs and the latents exactly where the recipe's own `cache te` / `cache latents` would be accepted
without an error or a warning, and its provenance says why (docs/DATA.md "Caches").

- text-encoder outputs: off when a text encoder trains (a LoRA or fine-tune on te1/te2, or textual
  inversion, whose new token rows go through the encoders), when a dataset changes its captions every
  step (`shuffle`, caption `dropout`, `tag dropout`), and when the recipe asks for `offload text
  encoders` (it chose to keep the encoders and move them per batch);
- latents: off when a dataset changes its pixels every step (`random crop`, `color jitter`; a flip is
  cached on both sides) and when the recipe asks for `offload vae`.

A default cache is kept in memory for the run, as the words are without `to disk`; `to disk` (which a
recipe may say on its own) keeps whatever the plan caches on disk. In memory the runtime holds every entry
for the whole run, so an in-memory default is not taken where the entries could exceed DEFAULT_BUDGET_BYTES
(a data set of tens of thousands of images would otherwise fill the RAM); with `to disk` it holds only the
entries' keys and reads each batch's entries from the disk cache, so the budget does not apply there.
`no cache te` / `no cache latents` (or `--set cache.text_encoder=false`) turn a default off; a value any
recipe layer gives is kept as given.
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang.layers import Layers, Provenance

TE_ON = "no text encoder trains, captions fixed"
DEFAULT_BUDGET_BYTES = 8 << 30  # host memory a default cache may take
# Upper bounds per entry, in fp32 as the largest cached dtype: SDXL's penultimate states of both encoders
# (77 tokens × 768 + 1280) and the pooled 1280; a latent's mean and log-variance (8 values per 8×8 pixels).
TEXT_ENTRY_BYTES = (77 * (768 + 1280) + 1280) * 4
LATENT_BYTES_PER_PIXEL = 8 * 4 / 64
LATENTS_ON = "no per-step pixel change"

_CAPTION_CHANGES = (("shuffle", "shuffle"), ("caption_dropout", "dropout"),
                    ("tag_dropout", "tag dropout"))
_PIXEL_CHANGES = (("random_crop", "random crop"), ("color_jitter", "color jitter"))


def text_encoder_blocker(plan: dict[str, Any], layers: Layers) -> str | None:
    """Why the text-encoder outputs cannot be cached by default; None when they can."""
    method = plan["method"]
    if method["kind"] == "embedding":
        return "textual inversion trains through the encoders"
    trained = [t for t in method["targets"] if t in ("te1", "te2")]
    if trained:
        return f"{'+'.join(trained)} {'is' if len(trained) == 1 else 'are'} trained"
    return _changes_per_step(plan, _CAPTION_CHANGES, "captions") or _offload(
        layers, "precision.offload_text_encoders", "offload text encoders")


def latents_blocker(plan: dict[str, Any], layers: Layers) -> str | None:
    """Why the latents cannot be cached by default; None when they can."""
    return _changes_per_step(plan, _PIXEL_CHANGES, "pixels") or _offload(
        layers, "precision.offload_vae", "offload vae")


def default_cache_bytes(plan: dict[str, Any]) -> dict[str, int]:
    """Upper bounds of the host memory the in-memory caches would hold: one text entry per image (its
    caption; fewer when captions repeat) and one latent per image and flip, at its bucket's size."""
    data = plan["data"]
    flip = 2 if any(d.get("flip") for d in data["datasets"]) else 1
    table = data["buckets"].get("table") or []
    pixels = sum(int(r["width"]) * int(r["height"]) * int(r.get("images") or 0) for r in table)
    if not pixels:
        pixels = int(data["resolution"]) ** 2 * int(data.get("images") or 0)
    return {"text_encoder": int(data.get("images") or 0) * TEXT_ENTRY_BYTES,
            "latents": int(pixels * LATENT_BYTES_PER_PIXEL * flip)}


def apply_cache_defaults(plan: dict[str, Any], layers: Layers, provenance: dict[str, Provenance]) -> None:
    """Set `data.cache.text_encoder` and `data.cache.latents` that no recipe layer gave, with a default
    provenance whose `at` gives the reason (`sdxlc plan` shows it)."""
    cache = plan["data"]["cache"]
    for key, blocker, reason in (("text_encoder", text_encoder_blocker, TE_ON),
                                 ("latents", latents_blocker, LATENTS_ON)):
        if layers.given(f"cache.{key}"):
            continue
        why = blocker(plan, layers) or _over_budget(plan, key)
        cache[key] = why is None
        provenance[f"data.cache.{key}"] = {"source": "default", "at": reason if why is None else why}


def _changes_per_step(plan: dict[str, Any], changes: tuple[tuple[str, str], ...], what: str) -> str | None:
    """The first dataset setting among `changes` that alters `what` every step, as a reason."""
    for dataset in plan["data"]["datasets"]:
        for key, word in changes:
            if dataset.get(key):
                return f"{what} change per step ({word})"
    return None


def _offload(layers: Layers, path: str, word: str) -> str | None:
    """A reason when a recipe layer asks for the offload lever at `path`."""
    return f"`{word}` asked" if layers.given(path) and bool(layers.get(path)[0]) else None


def _over_budget(plan: dict[str, Any], key: str) -> str | None:
    """Why an in-memory default cache is not taken: its entries could exceed the budget (a `to disk` cache
    holds only its keys in memory)."""
    size = default_cache_bytes(plan)[key]
    if size <= DEFAULT_BUDGET_BYTES or plan["data"]["cache"]["to_disk"]:
        return None
    word = "te" if key == "text_encoder" else "latents"
    return (f"in memory it would take up to {size / (1 << 30):.1f} GiB, over the default's "
            f"{DEFAULT_BUDGET_BYTES >> 30} GiB (say `cache {word} to disk` to cache on disk, or "
            f"`cache {word}` to cache in memory anyway)")
