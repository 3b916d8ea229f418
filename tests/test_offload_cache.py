"""An offload word beside the cache that frees the same component (`offload vae` with cached latents,
`offload text encoders` with cached text-encoder outputs) does nothing during the steps: the check warns
at the offload word (SDX0616) and the estimate counts no saving for it (docs/ESTIMATE.md "Low-VRAM
levers"). Compiler only: no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from check_helpers import only

from sdxlc.check.lowvram import offload_with_cache
from sdxlc.lang.diagnostics import CATALOG, Diagnostic
from sdxlc.lang.layers import Layers
from sdxlc.lang.lower import load_recipe
from sdxlc.pipeline import compile_recipe
from sdxlc.tools.explain import DETAILS

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "data" / "quickstart"
GPU = "rtx4090-24gb"
NO_CACHE = ("cache.text_encoder=false", "cache.latents=false")


def _compiled(
    tmp_path: Path, words: str, sets: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[Diagnostic]]:
    path = tmp_path / "r.sdx"
    path.write_text(f'sdx 1\nmodel tiny\nprofile {GPU}\ndata "{QUICKSTART}"\nresolution 64\n{words}\n',
                    encoding="utf-8")
    compiled = compile_recipe(path, sets=sets)
    assert compiled.plan is not None, [str(d) for d in compiled.diagnostics]
    return compiled.plan, compiled.diagnostics


def test_offload_vae_with_cached_latents_warns_at_the_offload_word(tmp_path: Path) -> None:
    plan, diags = _compiled(tmp_path, "lora rank 4\ncache latents\noffload vae")
    assert plan["data"]["cache"]["latents"] and plan["precision"]["offload_vae"]
    warning = only(diags, "SDX0616")
    assert warning.severity == "warning"
    assert "`offload vae`" in warning.message and "latents are cached (`cache latents`)" in warning.message
    assert warning.span is not None and (warning.span.line, warning.span.column) == (8, 1)
    assert "sampling" in (warning.help or "") and "cached here" in [label for _, label in warning.related]


def test_offload_text_encoders_with_cached_outputs_warns(tmp_path: Path) -> None:
    plan, diags = _compiled(tmp_path, "lora rank 4\noffload text encoders\ncache te")
    assert plan["data"]["cache"]["text_encoder"] and plan["precision"]["offload_text_encoders"]
    warning = only(diags, "SDX0616")
    assert "`offload text encoders`" in warning.message and "(`cache te`)" in warning.message
    assert warning.span is not None and warning.span.line == 7


def test_no_warning_when_the_component_is_not_cached(tmp_path: Path) -> None:
    _, diags = _compiled(tmp_path, "lora rank 4\noffload text encoders\noffload vae", sets=NO_CACHE)
    assert not [d for d in diags if d.code == "SDX0616"]
    # a random crop changes the pixels every step: latents cannot be cached (by default or not)
    plan, diags = _crop(tmp_path, "lora rank 4\noffload vae")
    assert plan is not None and not plan["data"]["cache"]["latents"]
    assert not [d for d in diags if d.code == "SDX0616"]
    # a trained encoder changes its outputs: they are not cached (offloading it is its own error)
    plan, diags = _crop(tmp_path, "lora rank 4 on unet+te1\noffload text encoders")
    assert plan is None and only(diags, "SDX0612")
    assert not [d for d in diags if d.code == "SDX0616"]


def _crop(tmp_path: Path, words: str) -> tuple[dict[str, Any] | None, list[Diagnostic]]:
    path = tmp_path / "crop.sdx"
    path.write_text(f'sdx 1\nmodel tiny\nprofile {GPU}\ndata "{QUICKSTART}" random crop\nresolution 64\n'
                    f"{words}\n", encoding="utf-8")
    compiled = compile_recipe(path)
    return compiled.plan, compiled.diagnostics


def test_a_cache_by_default_is_named_so(tmp_path: Path) -> None:
    """Decided on the plan's cache value: a cache no recipe word set is 'by default'."""
    path = tmp_path / "r.sdx"
    path.write_text(f'sdx 1\nmodel tiny\nprofile {GPU}\ndata "{QUICKSTART}"\nlora rank 4\noffload vae\n',
                    encoding="utf-8")
    compiled = compile_recipe(path, sets=NO_CACHE)
    assert compiled.plan is not None
    plan = compiled.plan
    plan["data"]["cache"]["latents"] = True  # as a default cache resolves
    layers = Layers(load_recipe(path), "tiny")
    (warning,) = offload_with_cache(plan, layers)
    assert "latents are cached (by default)" in warning.message and not warning.related


def test_the_estimate_counts_no_saving_for_a_moot_offload(tmp_path: Path) -> None:
    cached, _ = _compiled(tmp_path, "lora rank 4\ncache te\ncache latents")
    offloaded, _ = _compiled(tmp_path, "lora rank 4\ncache te\ncache latents\noffload vae\n"
                             "offload text encoders")
    assert offloaded["estimate"]["vram_breakdown"] == cached["estimate"]["vram_breakdown"]
    assert offloaded["estimate"]["vram_bytes"] == cached["estimate"]["vram_bytes"]
    assert offloaded["estimate"]["seconds_per_step"] == cached["estimate"]["seconds_per_step"]


def test_the_code_is_catalogued_and_explained() -> None:
    assert CATALOG["SDX0616"][0] == "warning"
    assert "sampling" in DETAILS["SDX0616"]
