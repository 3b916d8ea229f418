"""Analytic VRAM / time estimate."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from sdxlc.estimate import cputime
from sdxlc.estimate.analytic import SAMPLE_KEY, EstimateError, estimate, load_model, lora_param_count
from sdxlc.estimate.levers import levers
from sdxlc.resolve.profiles import SCHEMA_DIR, load_profile

GiB = 1 << 30
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


def make_plan(
    *,
    model: str = "sdxl",
    rank: int = 8,
    targets: tuple[str, ...] = ("unet",),
    modules: tuple[str, ...] = tuple(ATTN),
    mixed: str = "bf16",
    vae_fp32: bool = True,
    resolution: int = 1024,
    buckets: list[tuple[int, int]] | None = None,
    cache_te: bool = True,
    cache_latents: bool = True,
    batch: int = 1,
    accumulate: int = 1,
    ckpt: bool = True,
    optimizer: str = "adamw",
    total_steps: int = 1000,
    prompts: tuple[str, ...] = (),
    sample_size: int = 1024,
    images: int = 20,
) -> dict[str, Any]:
    """A plan with every field the estimator reads (shaped like schema/plan.schema.json)."""
    table = [{"width": w, "height": h, "images": images, "batches": max(1, images // batch)}
             for w, h in (buckets or [])]
    return {
        "model": {"source": model, "kind": "tiny" if model == "tiny" else "hub", "vae": None,
                  "prediction": "epsilon", "tiny_seed": 0, "base_model_version": "sdxl_base_v1-0"},
        "method": {"kind": "lora", "rank": rank, "alpha": float(rank), "targets": list(targets),
                   "unet_modules": list(modules), "dropout": 0.0, "block_lr": None},
        "precision": {"mixed": mixed, "vae_fp32": vae_fp32, "vae_slicing": False},
        "data": {
            "datasets": [{"path": "data", "repeat": 1, "caption_ext": ".txt", "shuffle": False,
                          "keep_tokens": 0, "caption_dropout": 0.0, "flip": False, "regularization": False,
                          "images": images}],
            "resolution": resolution,
            "buckets": {"enabled": bool(buckets), "min": 64, "max": resolution, "step": 64, "table": table},
            "cache": {"text_encoder": cache_te, "latents": cache_latents, "to_disk": False, "dir": ".cache"},
            "images": images, "samples_per_epoch": images,
        },
        "optimizer": {"name": optimizer, "lr": 1e-4, "args": {}, "max_grad_norm": 1.0},
        "training": {"batch_size": batch, "accumulate": accumulate, "effective_batch": batch * accumulate,
                     "batches_per_epoch": max(1, images // batch), "steps_per_epoch": 1,
                     "epochs": total_steps, "total_steps": total_steps, "gradient_checkpointing": ckpt,
                     "seed": 0, "noise_offset": 0.0, "snr_gamma": None, "timestep_min": 0,
                     "timestep_max": 1000},
        "sample": {"prompts": list(prompts), "every_steps": 250 if prompts else None, "width": sample_size,
                   "height": sample_size, "steps": 20, "cfg": 7.0, "seed": 0, "before": False},
    }


def _estimate_schema() -> dict[str, Any]:
    plan_schema = json.loads((SCHEMA_DIR / "plan.schema.json").read_text())
    sub: dict[str, Any] = plan_schema["properties"]["estimate"]
    return sub


def vram(plan: dict[str, Any], profile: str = "rtx3060-12gb") -> int:
    result: int = estimate(plan, load_profile(profile))["vram_bytes"]
    return result


# --- model facts -----------------------------------------------------------------------------------------

def test_model_facts_match_measurements() -> None:
    sdxl, tiny = load_model("sdxl"), load_model("tiny")
    assert sdxl["params"]["unet"] == 2_567_463_684
    assert sdxl["params"]["vae_encoder"] + sdxl["params"]["vae_decoder"] == 83_653_863
    assert (sdxl["params"]["te1"], sdxl["params"]["te2"]) == (123_060_480, 694_659_840)
    assert tiny["params"] == {"unet": 2_102_564, "vae_encoder": 137_544, "vae_decoder": 196_839,
                              "te1": 36_064, "te2": 68_688}
    assert sum(sdxl["lora_params_per_rank"]["unet"][m] for m in ATTN) == 1_451_520
    assert sum(tiny["lora_params_per_rank"]["unet"][m] for m in ATTN) == 15_712
    assert sdxl["lora_params_per_rank"]["unet"]["time_emb_proj"] == 35_520  # the `emb` group
    assert sum(sdxl["lora_params_per_rank"]["unet"].values()) == 2_659_840 + 35_520
    assert sum(sdxl["lora_params_per_rank"]["te1"][m] for m in sdxl["te_lora_modules"]) == 73_728
    assert sum(sdxl["lora_params_per_rank"]["te2"].values()) == 737_280


def test_lora_param_count() -> None:
    assert lora_param_count(make_plan(rank=8), load_model("sdxl")) == 11_612_160
    assert lora_param_count(make_plan(model="tiny", rank=8), load_model("tiny")) == 125_696
    both = make_plan(rank=4, targets=("unet", "te1", "te2"), cache_te=False)
    assert lora_param_count(both, load_model("sdxl")) == 4 * (1_451_520 + 73_728 + 327_680)


def test_unknown_module_is_an_error() -> None:
    with pytest.raises(EstimateError, match="conv1"):
        estimate(make_plan(modules=("to_q", "conv1")), load_profile("rtx3060-12gb"))


# --- fits / does not fit ---------------------------------------------------------------------------------

def test_sdxl_lora_rank8_fits_12gb() -> None:
    # kohya users train SDXL LoRA at 1024, batch 1, bf16, cached TE outputs and checkpointing on 12 GB cards.
    for cache_latents in (True, False):
        result = estimate(make_plan(rank=8, cache_latents=cache_latents), load_profile("rtx3060-12gb"))
        assert result["fits"], result
        assert result["verdict"] == "fits"
        assert 6 * GiB < result["vram_bytes"] < 10 * GiB


def test_sdxl_no_checkpointing_batch4_does_not_fit_8gb() -> None:
    result = estimate(make_plan(rank=8, ckpt=False, batch=4), load_profile("rtx3070-8gb"))
    assert not result["fits"]
    assert result["verdict"] == "does_not_fit"
    # `--exact`: 6.1 GiB of activations per sample without checkpointing
    assert result["vram_breakdown"]["activations"] > 20 * GiB


def test_activations_reproduce_the_exact_simulation() -> None:
    # bench/results/estimate_vs_exact.md (`sdxlc plan --exact`, full-size SDXL, LoRA r8, bf16, 1024²):
    # activations 0.51 GiB (ckpt, batch 1), 2.0 GiB (ckpt, batch 4), 6.1 GiB (no ckpt, batch 1)
    for batch, ckpt, gib in ((1, True, 0.505), (4, True, 2.02), (1, False, 6.12)):
        result = estimate(make_plan(batch=batch, ckpt=ckpt), load_profile("h100-80gb"))
        acts = result["vram_breakdown"]["activations"]
        assert acts == pytest.approx(gib * GiB, rel=0.02)


def test_estimate_object_matches_plan_schema() -> None:
    tiny = make_plan(model="tiny", resolution=64, mixed="fp32")
    for plan in (make_plan(), make_plan(prompts=("a cat",)), tiny):
        for profile in ("rtx3060-12gb", "cpu", "h200-141gb"):
            result = estimate(plan, load_profile(profile))
            jsonschema.validate(result, _estimate_schema())
            assert result["budget_bytes"] == load_profile(profile).vram_usable_bytes


def test_breakdown_adds_up() -> None:
    result = estimate(make_plan(cache_latents=False, cache_te=False), load_profile("rtx4090-24gb"))
    terms = {k: v for k, v in result["vram_breakdown"].items() if k != SAMPLE_KEY}
    assert sum(terms.values()) == result["vram_bytes"]
    for key in ("unet_weights", "te1_weights", "te2_weights", "vae_weights", "trainable_params", "gradients",
                "optimizer_state", "activations", "cuda_context", "allocator_overhead"):
        assert terms[key] > 0, key
    assert terms["unet_weights"] == 2_567_463_684 * 2


def test_verdict_tight() -> None:
    plan = make_plan(rank=8, cache_latents=True)
    need = vram(plan)
    profile = load_profile("rtx3060-12gb")
    tight = dataclasses.replace(profile, vram_usable_bytes=int(need / 0.95))
    assert estimate(plan, tight)["verdict"] == "tight"
    roomy = dataclasses.replace(profile, vram_usable_bytes=int(need / 0.8))
    assert estimate(plan, roomy)["verdict"] == "fits"


# --- monotonic -------------------------------------------------------------------------------------------

def test_bigger_batch_needs_more_memory() -> None:
    sizes = [vram(make_plan(batch=b)) for b in (1, 2, 4, 8)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_checkpointing_needs_less_memory() -> None:
    assert vram(make_plan(ckpt=True)) < vram(make_plan(ckpt=False))


def test_cache_te_needs_less_memory() -> None:
    assert vram(make_plan(cache_te=True)) < vram(make_plan(cache_te=False))
    # a trained text encoder stays resident even when outputs are cached
    trained = make_plan(targets=("unet", "te2"), cache_te=True)
    assert "te2_weights" in estimate(trained, load_profile("rtx3060-12gb"))["vram_breakdown"]
    assert "te1_weights" not in estimate(trained, load_profile("rtx3060-12gb"))["vram_breakdown"]


def test_cache_latents_frees_the_vae() -> None:
    cached = estimate(make_plan(cache_latents=True), load_profile("rtx3060-12gb"))["vram_breakdown"]
    uncached = estimate(make_plan(cache_latents=False), load_profile("rtx3060-12gb"))["vram_breakdown"]
    assert "vae_weights" not in cached and uncached["vae_weights"] == 83_653_863 * 4


def test_rank_resolution_precision_optimizer_order() -> None:
    assert vram(make_plan(rank=8)) < vram(make_plan(rank=64))
    assert vram(make_plan(resolution=768)) < vram(make_plan(resolution=1024))
    assert vram(make_plan(mixed="bf16")) < vram(make_plan(mixed="fp32"))
    order = ["lion8bit", "adamw8bit", "lion", "adamw"]
    cpu = load_profile("cpu")
    states = [estimate(make_plan(optimizer=o), cpu)["vram_breakdown"].get("optimizer_state", 0)
              for o in order]
    assert states == sorted(states) and states[0] == 11_612_160 * 1 and states[-1] == 11_612_160 * 8


def test_largest_bucket_sets_memory() -> None:
    square = vram(make_plan(buckets=[(1024, 1024)]))
    under = vram(make_plan(buckets=[(1024, 1024), (1216, 832), (1344, 768)]))
    over = vram(make_plan(buckets=[(1024, 1024), (1152, 960)]))
    assert under == square  # 1216x832 and 1344x768 have fewer pixels than 1024x1024
    assert over > square  # 1152x960 has more


def test_sampling_peak_is_compared_not_added() -> None:
    plain = estimate(make_plan(), load_profile("rtx4090-24gb"))
    sampled = estimate(make_plan(prompts=("a cat", "a dog")), load_profile("rtx4090-24gb"))
    peak = sampled["vram_breakdown"][SAMPLE_KEY]
    assert sampled["vram_bytes"] == max(plain["vram_bytes"], peak)
    assert sampled["total_seconds"] > plain["total_seconds"]


def test_cpu_has_no_cuda_context() -> None:
    assert "cuda_context" not in estimate(make_plan(), load_profile("cpu"))["vram_breakdown"]


# --- time ------------------------------------------------------------------------------------------------

RECORDED = Path(__file__).resolve().parents[1] / "bench" / "results" / "time_vs_measured.json"


def _recorded() -> tuple[str, list[dict[str, Any]]]:
    """(the measured column the constants were fitted to, the rows) of bench/time_vs_measured.py."""
    data = json.loads(RECORDED.read_text())
    basis = "cpu_seconds" if data["meta"].get("basis") == "cpu_seconds" else "measured"
    return basis, data["rows"]


def test_tiny_cpu_step_time_matches_the_recorded_steps() -> None:
    """The CPU time model (sdxlc/estimate/cputime.py) with tiny.json's constants against the tiny rows that
    bench/time_vs_measured.py recorded (the runtime's real steps, wall clock on a quiet machine): every row
    within 25% (the target of docs/ESTIMATE.md), median error under 15%."""
    basis, rows = _recorded()
    tiny = [r for r in rows if r["family"] == "tiny"]
    assert len(tiny) >= 8
    constants = cputime.constants(load_model("tiny"))
    peak = load_profile("cpu").tflops_for("fp32")
    errors = []
    for row in tiny:
        compute, dispatch = cputime.seconds(row["features"], constants, peak)
        errors.append(abs(compute + dispatch - row[basis]) / row[basis])
        assert errors[-1] <= 0.25, row["name"]
    assert sorted(errors)[len(errors) // 2] < 0.15


def test_recorded_features_are_the_estimates() -> None:
    """The recorded rows' features are what the estimate computes now: a plan like the bench's row gives
    the same step FLOPs, features and seconds, and the quickstart recipe compiles to its recorded row."""
    _, rows = _recorded()
    row = next(r for r in rows if r["name"] == "attn 128 b2 ckpt")
    plan = make_plan(model="tiny", resolution=128, batch=2, mixed="fp32", ckpt=True, sample_size=64)
    plan["hardware"] = {"device": "cpu", "name": "cpu"}
    result = estimate(plan, load_profile("cpu"))
    assert result["step_flops"] == pytest.approx(row["step_flops"], rel=1e-6)
    assert cputime.features(plan, load_model("tiny"), result["step_flops"]) == row["features"]
    assert result["seconds_per_step"] == pytest.approx(row["estimate"], rel=1e-3)
    assert result["vram_bytes"] < 80 << 20  # ~12 MiB of tensors + the runtime state (58 MiB at batch 2, ckpt)


def test_sdxl_cpu_step_time_matches_the_runtime() -> None:
    """A full-size SDXL LoRA step of the runtime on the 2-core CPU (512², batch 1, fp32, checkpointing,
    cached encoders): 66.65 s (bench/gpu_peaks.py --device cpu --model sdxl,
    bench/results/runtime_steps_cpu_sdxl.md). Its dispatch terms are under 1% of it."""
    plan = make_plan(resolution=512, mixed="fp32", ckpt=True)
    plan["hardware"] = {"device": "cpu", "name": "cpu"}
    result = estimate(plan, load_profile("cpu"))
    assert result["seconds_per_step"] == pytest.approx(66.65, rel=0.25)
    assert result["time_breakdown"]["overhead_per_step"] < 0.01 * result["seconds_per_step"]


def test_sdxl_gpu_step_time_is_plausible() -> None:
    # peers.md D: SDXL LoRA, batch 1, 1024: ~1.2 s/it on an RTX 3090, 2.4-2.8 s/it on an RTX 3060
    fwd = estimate(make_plan(), load_profile("rtx3090-24gb"))
    assert 0.7 < fwd["seconds_per_step"] < 2.0
    assert 1.5 < estimate(make_plan(), load_profile("rtx3060-12gb"))["seconds_per_step"] < 4.5
    # forward + input-gradient backward + checkpoint recompute (`--exact` counts 19.6 TFLOP)
    assert fwd["step_flops"] == pytest.approx(3 * 6.76e12, rel=0.01)
    assert fwd["total_seconds"] == pytest.approx(1000 * fwd["seconds_per_step"], rel=0.01)


def test_time_scales_with_batch_and_accumulation() -> None:
    p = load_profile("a100-80gb")
    one = estimate(make_plan(batch=1), p)
    four = estimate(make_plan(batch=2, accumulate=2), p)
    assert four["step_flops"] == pytest.approx(4 * one["step_flops"])
    assert four["seconds_per_step"] > 3 * one["seconds_per_step"]


# --- levers ----------------------------------------------------------------------------------------------

def test_levers_cover_unused_options_cheapest_first() -> None:
    plan = make_plan(cache_te=False, cache_latents=False, ckpt=False, optimizer="adamw", mixed="fp32",
                     batch=4)
    found = levers(plan, load_profile("rtx3060-12gb"))
    names = [lv["name"] for lv in found]
    assert names == ["cache_text_encoder", "cache_latents", "offload_text_encoders", "offload_vae",
                     "gradient_checkpointing", "optimizer_8bit", "optimizer_factored",
                     "mixed_precision_bf16", "smaller_batch", "base_fp8"]
    for lever in found:
        assert lever["saves_bytes"] > 0 and lever["description"]
    by_name = {lv["name"]: lv for lv in found}
    assert by_name["smaller_batch"]["changes"] == {"training.batch_size": 2, "training.accumulate": 2}
    assert by_name["gradient_checkpointing"]["saves_bytes"] > 10 * GiB


def test_levers_skip_what_is_used() -> None:
    plan = make_plan(cache_te=True, cache_latents=True, ckpt=True, optimizer="lion8bit", mixed="bf16",
                     batch=1)
    plan["precision"]["base_fp8"] = True
    assert levers(plan, load_profile("rtx3060-12gb")) == []
    # a trained text encoder cannot be cached away
    te = make_plan(targets=("unet", "te1"), cache_te=False)
    assert "cache_text_encoder" not in [lv["name"] for lv in levers(te, load_profile("rtx3060-12gb"))]


def test_levers_do_not_mutate_the_plan() -> None:
    plan = make_plan(cache_te=False, ckpt=False, batch=4)
    before = json.dumps(plan, sort_keys=True)
    levers(plan, load_profile("rtx3060-12gb"))
    assert json.dumps(plan, sort_keys=True) == before


def test_no_ml_imports() -> None:
    root = Path(__file__).resolve().parent.parent
    heavy = "('torch', 'diffusers', 'transformers', 'bitsandbytes')"
    code = (
        "import sys, sdxlc.estimate.analytic, sdxlc.resolve.profiles; "
        f"print([m for m in {heavy} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for name in ("estimate/analytic.py", "resolve/profiles.py"):
        text = (root / "sdxlc" / name).read_text()
        assert not re.search(r"^\s*(import|from)\s+(torch|diffusers|transformers|bitsandbytes)\b", text, re.M)


def test_sampling_counts_the_parked_encoders_and_vae() -> None:
    # cached encoders and VAE are parked in system RAM while training and come back to sample
    profile = load_profile("h100-80gb")
    cached = estimate(make_plan(prompts=("a cat",)), profile)["vram_breakdown"]
    live_plan = make_plan(prompts=("a cat",), cache_te=False, cache_latents=False)
    live = estimate(live_plan, profile)["vram_breakdown"]
    assert "te1_weights" not in cached and "vae_weights" not in cached
    assert cached[SAMPLE_KEY] == live[SAMPLE_KEY]


def test_time_breakdown_adds_up_to_the_step_and_the_run() -> None:
    plan = make_plan(cache_te=False, cache_latents=False, batch=2, accumulate=2, prompts=("a cat",))
    plan["sample"]["every_steps"] = 100
    profile = load_profile("rtx3090-24gb")
    est = estimate(plan, profile)
    t = est["time_breakdown"]
    assert t["effective_tflops"] == pytest.approx(t["dense_tflops"] * t["efficiency"])
    assert t["dense_tflops"] == profile.tflops_for("bf16") and t["efficiency"] == profile.efficiency
    rate = t["effective_tflops"] * 1e12
    assert t["compute_per_step"] == pytest.approx(est["step_flops"] / rate, rel=1e-5)
    per_step = t["compute_per_step"] + t["overhead_per_step"] + t["communication_per_step"]
    assert est["seconds_per_step"] == pytest.approx(per_step, abs=1e-5)
    assert t["training"] == pytest.approx(per_step * plan["training"]["total_steps"], rel=1e-6)
    assert t["sampling"] > 0 and t["caching"] == 0  # nothing cached: no caching pass
    assert est["total_seconds"] == pytest.approx(t["training"] + t["sampling"] + t["caching"], abs=1e-2)
    cached = estimate(make_plan(cache_te=True, cache_latents=True), profile)["time_breakdown"]
    assert cached["caching"] > 0


def test_an_over_budget_plan_on_a_spilling_card_is_marked() -> None:
    plan = make_plan(ckpt=False, batch=8, cache_te=False)
    geforce, datacenter = load_profile("rtx4060-8gb"), load_profile("t4-16gb")
    assert geforce.spills_to_system_ram and not datacenter.spills_to_system_ram
    assert estimate(plan, geforce)["spills"] is True
    assert estimate(plan, datacenter)["spills"] is False
    assert estimate(make_plan(), geforce)["spills"] is False  # it fits: nothing spills
