"""The fit solver on an over-budget 8 GB recipe: which levers `fit auto` pulls, in which order, what it
leaves alone, and what `fit strict` offers instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_estimate import make_plan

from sdxlc.estimate.analytic import estimate
from sdxlc.estimate.levers import enough, levers
from sdxlc.pipeline import Compiled, compile_recipe
from sdxlc.resolve.profiles import load_profile

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
# SDXL LoRA at 1024 px, batch 4, no checkpointing, AdamW (the default): about 32 GiB. Text-encoder outputs and
# latents are cached by default (nothing in the recipe forbids it), so the solver has no cache lever to pull.
BASE = f"""sdx 1
model "org/some-sdxl"
profile rtx4060-8gb
data "{DATA}"
resolution 1024
lora rank 16

"""
GiB = 1 << 30


def _compile(tmp_path: Path, extra: str, profile: str | None = None) -> Compiled:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(BASE + extra, encoding="utf-8")
    return compile_recipe(recipe, profile=profile)


def _solved(plan: dict[str, Any]) -> dict[str, str]:
    return {path: origin["at"] for path, origin in plan["provenance"].items() if origin["source"] == "solver"}


def test_fit_auto_pulls_the_cheapest_levers_in_order_until_it_fits(tmp_path: Path) -> None:
    strict = _compile(tmp_path, "batch 4\n")
    assert [d.code for d in strict.errors] == ["SDX0610"]
    compiled = _compile(tmp_path, "batch 4\nfit auto\n")
    assert not compiled.errors, compiled.errors
    plan = compiled.plan
    solver = [w for w in plan["warnings"] if w.startswith("fit auto:")]
    notes = [w.removeprefix("fit auto: ").split(" (saves")[0] for w in solver]
    assert len(notes) == 3
    assert _solved(plan) == {
        "training.gradient_checkpointing": "gradient_checkpointing",
        "optimizer.name": "optimizer_8bit",
        "training.batch_size": "smaller_batch",
        "training.accumulate": "smaller_batch",
    }
    assert plan["optimizer"]["name"] == "adamw8bit"  # not Adafactor on top of it: one lever per setting
    assert (plan["training"]["batch_size"], plan["training"]["accumulate"]) == (2, 2)
    assert plan["training"]["effective_batch"] == 4
    assert plan["estimate"]["fits"] and plan["estimate"]["vram_bytes"] <= plan["estimate"]["budget_bytes"]
    # the warnings are in the order the levers were applied, each with its saving
    assert "gradient checkpointing" in notes[0]
    saved = [float(w.split("saves about ")[1].split(" GiB")[0]) for w in solver]
    assert saved[0] > 20  # checkpointing is the big one at batch 4 and 1024 px
    assert plan["data"]["cache"]["text_encoder"] and plan["data"]["cache"]["latents"]
    assert plan["provenance"]["data.cache.latents"]["source"] == "default"  # on before the solver ran


def test_fit_auto_stops_as_soon_as_it_fits(tmp_path: Path) -> None:
    plan = _compile(tmp_path, "fit auto\n").plan  # batch 1: checkpointing is enough
    assert plan["estimate"]["fits"]
    assert set(_solved(plan).values()) == {"gradient_checkpointing"}
    assert plan["optimizer"]["name"] == "adamw"


def test_fit_auto_leaves_pinned_settings_and_says_what_would_fit(tmp_path: Path) -> None:
    pinned = "batch 4 accumulate 1\nset training.gradient_checkpointing false\nfit auto\n"
    compiled = _compile(tmp_path, pinned)
    assert [d.code for d in compiled.errors] == ["SDX0610"]
    help_text = compiled.errors[0].help or ""
    assert "checkpointing" in help_text and "batch 2" in help_text
    assert "spill into system RAM" in compiled.errors[0].message  # a GeForce card under a desktop driver


def test_fit_strict_lists_a_combination_that_fits_with_marginal_savings(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, "batch 4\n")
    (error,) = compiled.errors
    assert error.help is not None and error.help.startswith("these together bring it to about 7.1 GiB: ")
    assert "cache text-encoder outputs" not in error.help  # cached by default already
    assert "Other levers: use Adafactor" in error.help


def test_enough_skips_levers_that_move_a_setting_already_moved() -> None:
    plan = make_plan(cache_te=False, cache_latents=False, ckpt=False, optimizer="adamw", batch=4)
    profile = load_profile("rtx4060-8gb")
    options = levers(plan, profile)
    chosen, peak = enough(plan, profile, {lever["name"] for lever in options})
    names = [lever["name"] for lever, _ in chosen]
    assert "optimizer_8bit" in names and "optimizer_factored" not in names
    assert peak <= profile.vram_usable_bytes
    assert sum(saves for _, saves in chosen) == estimate(plan, profile)["vram_bytes"] - peak


@pytest.mark.parametrize("method", ["finetune unet full bf16", "finetune unet"])
def test_finetune_levers_include_full_bf16(method: str) -> None:
    plan = make_plan(optimizer="adamw")
    plan["method"] = {"kind": "finetune", "targets": ["unet"], "full_bf16": method.endswith("bf16"),
                      "fused_backward": False, "block_lr": None}
    names = [lever["name"] for lever in levers(plan, load_profile("rtx4090-24gb"))]
    assert ("full_bf16" in names) == (not method.endswith("bf16"))


def test_vae_slicing_lever_when_latents_are_not_cached(tmp_path: Path) -> None:
    plan = make_plan(cache_latents=False, ckpt=True, batch=4)
    found = {lever["name"]: lever for lever in levers(plan, load_profile("rtx4090-24gb"))}
    assert found["vae_slicing"]["saves_bytes"] > GiB
    sliced = _compile(tmp_path, "batch 4\ncheckpointing\nvae sliced\nno cache latents\n", "rtx4090-24gb").plan
    plain = _compile(tmp_path, "batch 4\ncheckpointing\nno cache latents\n", "rtx4090-24gb").plan
    assert sliced["precision"]["vae_slicing"] and not plain["precision"]["vae_slicing"]
    drop = plain["estimate"]["vram_breakdown"].get("vae_encode_extra", 0) - sliced["estimate"][
        "vram_breakdown"].get("vae_encode_extra", 0)
    assert drop > GiB


def test_the_solver_offers_no_cache_lever_that_is_on_nor_one_the_recipe_turned_off(tmp_path: Path) -> None:
    profile = load_profile("rtx4060-8gb")
    cached = _compile(tmp_path, "batch 4\nfit auto\n").plan
    assert cached is not None
    names = {lever["name"] for lever in levers(cached, profile)}
    assert not names & {"cache_text_encoder", "cache_latents", "offload_text_encoders", "offload_vae"}
    off = _compile(tmp_path, "batch 4\nno cache te no cache latents\nfit auto\n").plan
    assert off is not None
    assert not off["data"]["cache"]["text_encoder"] and not off["data"]["cache"]["latents"]  # pinned off
    assert not {"data.cache.text_encoder", "data.cache.latents"} & set(_solved(off))
