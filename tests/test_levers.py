"""The low-VRAM levers (`base fp8`, `offload text encoders`, `offload vae`): what the runtime does with
them on the tiny model, what the estimate and `--exact` count, and what the fit solver picks
(docs/ESTIMATE.md "Low-VRAM levers")."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from check_helpers import only
from methods_common import FINETUNE, LORA_TE, fixed_batch_losses, method_plan
from test_estimate import make_plan

from sdxlc.check.lowvram import LOWVRAM_CHECKS
from sdxlc.estimate.analytic import estimate
from sdxlc.estimate.levers import levers
from sdxlc.lang.diagnostics import Diagnostic
from sdxlc.lang.layers import Layers
from sdxlc.lang.lower import load_recipe
from sdxlc.pipeline import Compiled, _compile_once, compile_recipe
from sdxlc.resolve.core import resolve
from sdxlc.resolve.profiles import load_profile

GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "data" / "quickstart"
LORA_UNET = {**LORA_TE, "targets": ["unet"], "te_modules": [], "lr_te1": None, "lr_te2": None}


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """bf16 runs after fp32 runs in one test process need accelerate's process-wide state cleared."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --- the runtime --------------------------------------------------------------------------------------


def test_base_fp8_trains_the_tiny_lora_with_float8_frozen_weights(tmp_path: Path) -> None:
    from runtime.model.fp8 import FP8, weight_bytes

    seen: set[torch.dtype] = set()
    unets: list[torch.nn.Module] = []

    def probe(module: torch.nn.Module, _args: Any, _out: Any) -> None:
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and weight is not None and not weight.requires_grad:
            seen.add(weight.dtype)
        if type(module).__name__ == "UNet2DConditionModel" and not unets:
            unets.append(module)

    plain = method_plan(tmp_path / "fp32", LORA_UNET)  # fp32: CPU bf16 is slow where the CPU lacks it
    fp8 = method_plan(tmp_path / "fp8", LORA_UNET, precision__base_fp8=True)
    handle = torch.nn.modules.module.register_module_forward_hook(probe)
    try:
        fp8_losses = fixed_batch_losses(fp8, 2)
    finally:
        handle.remove()
    assert FP8 in seen  # the frozen UNet and encoder linears ran with float8 weights
    plain_losses = fixed_batch_losses(plain, 1)
    assert all(math.isfinite(x) for x in fp8_losses)
    assert fp8_losses[0] == pytest.approx(plain_losses[0], rel=0.05)
    assert fp8_losses[-1] < fp8_losses[0]  # and it still learns the fixed batch

    lora = [p for p in unets[0].parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # peft's layers never became float8
    fp32_bytes = sum(p.numel() * 4 for p in unets[0].parameters())
    assert weight_bytes(unets[0]) < 0.4 * fp32_bytes  # 1 byte for 4 in 99% of the UNet's values


def test_fp8_layers_match_their_full_precision_gradients() -> None:
    from runtime.model.fp8 import store_fp8

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 16, 4)).requires_grad_(False)
    for module in model:  # weights that float8 holds exactly: the comparison is of the arithmetic only
        if hasattr(module, "weight"):
            module.weight.copy_(module.weight.to(torch.float8_e4m3fn).float())
    reference = copy.deepcopy(model)
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    reference(y).square().sum().backward()
    assert store_fp8(model) == 1  # the first layer holds the model's first parameter: it stays
    assert model[2].weight.dtype == torch.float8_e4m3fn
    model(x).square().sum().backward()
    assert x.grad is not None and y.grad is not None
    torch.testing.assert_close(x.grad, y.grad)


def test_offloaded_encoders_visit_the_device_only_to_encode() -> None:
    from runtime.model.offload import apply_offload, offloaded
    from runtime.model.tiny import build_tiny_pipeline
    from runtime.train.conditioning import encode_text

    pipe = build_tiny_pipeline(0)
    moves: list[tuple[str, str]] = []
    plan = {"precision": {"offload_text_encoders": True, "offload_vae": False}}
    assert apply_offload(pipe, plan) == ["text_encoder", "text_encoder_2"]
    assert offloaded(pipe.text_encoder) and not offloaded(pipe.vae)
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(pipe, name)
        module.to = lambda device, name=name, module=module: (moves.append((name, str(device))), module)[1]
    # "meta" stands in for the GPU: the recorded moves are what a CUDA run does
    states, pooled = encode_text(SimpleNamespace(pipe=pipe, device=torch.device("meta")), ["a cat"])
    assert states.device.type == "meta" and pooled.device.type == "meta"
    assert moves == [("text_encoder", "meta"), ("text_encoder_2", "meta"),
                     ("text_encoder_2", "cpu"), ("text_encoder", "cpu")]


# --- the plan and its checks ---------------------------------------------------------------------------


def _checked(tmp_path: Path, text: str) -> tuple[dict[str, Any], list[Diagnostic]]:
    """The tiny recipe's plan and the diagnostics of the low-VRAM checks alone."""
    path = tmp_path / "r.sdx"
    path.write_text(f'model tiny\ndata "{QUICKSTART}"\n{text}\n', encoding="utf-8")
    lowered = load_recipe(path)
    resolution = resolve(lowered, path)
    assert resolution.plan is not None, resolution.diagnostics
    layers = Layers(lowered, "tiny")
    return resolution.plan, [d for check in LOWVRAM_CHECKS for d in check(resolution.plan, layers)]


def test_words_reach_the_plan_and_offload_is_off_on_the_cpu_profile(tmp_path: Path) -> None:
    plan, diags = _checked(tmp_path, "lora rank 4\nbase fp8\noffload text encoders\noffload vae\nprofile cpu")
    assert plan["precision"]["base_fp8"] is True
    assert not plan["precision"]["offload_text_encoders"] and not plan["precision"]["offload_vae"]
    assert [d.code for d in diags if d.code == "SDX0613"] == ["SDX0613", "SDX0613"]
    gpu, _ = _checked(tmp_path, "lora rank 4\noffload text encoders\noffload vae\nprofile rtx4090-24gb")
    assert gpu["precision"]["offload_text_encoders"] and gpu["precision"]["offload_vae"]


def test_fp8_with_a_finetune_and_offloading_trained_encoders_are_refused(tmp_path: Path) -> None:
    _, diags = _checked(tmp_path, "finetune unet\nbase fp8")
    assert "fine-tune" in only(diags, "SDX0611").message
    _, diags = _checked(tmp_path, "lora rank 4 on unet+te1\noffload text encoders\nprofile rtx4090-24gb")
    assert "te1" in only(diags, "SDX0612").message
    _, diags = _checked(tmp_path, "lora rank 4\nbase fp8\nprocesses 2\nstrategy fsdp\nprofile rtx4090-24gb")
    assert only(diags, "SDX0614").related
    _, diags = _checked(tmp_path, "lora rank 4 dora\nbase fp8")
    assert only(diags, "SDX0615")


# --- the estimate ------------------------------------------------------------------------------------


def test_fp8_halves_the_frozen_weights_and_offload_drops_the_encoders() -> None:
    profile = load_profile("rtx4090-24gb")
    plain = make_plan(cache_te=False, cache_latents=False)
    terms = estimate(plain, profile)["vram_breakdown"]
    fp8 = make_plan(cache_te=False, cache_latents=False)
    fp8["precision"]["base_fp8"] = True
    small = estimate(fp8, profile)["vram_breakdown"]
    assert small["unet_weights"] / terms["unet_weights"] == pytest.approx(0.5, abs=0.01)
    assert 0.5 < small["te2_weights"] / terms["te2_weights"] < 0.6  # bigG's token embedding stays bf16
    off = make_plan(cache_te=False, cache_latents=False)
    off["precision"].update(offload_text_encoders=True, offload_vae=True)
    result = estimate(off, profile)
    assert not {"te1_weights", "te2_weights", "vae_weights"} & set(result["vram_breakdown"])
    # both ways over PCIe each step: 1.6 GB of encoders and 0.3 GB of fp32 VAE at 12 GB/s
    slower = result["seconds_per_step"] - estimate(plain, profile)["seconds_per_step"]
    assert slower == pytest.approx(0.32, abs=0.02)
    # the VAE's 1024 px encode is the peak phase: its weights come back with it, the encoders' do not
    assert result["vram_breakdown"]["offload_reload_extra"] == terms["vae_weights"]
    saved = estimate(plain, profile)["vram_bytes"] - result["vram_bytes"]
    encoders = terms["te1_weights"] + terms["te2_weights"]
    assert saved == pytest.approx(encoders * (1 + profile.allocator_overhead), rel=0.01)


def test_exact_agrees_with_the_estimate_on_what_each_lever_saves(tmp_path: Path) -> None:
    from runtime.exact.step import measure

    skip = {"allocator_overhead", "cuda_context", "sample_peak"}
    peaks: dict[str, tuple[int, int]] = {}
    for name, words in (("plain", ""), ("levers", "base fp8\noffload text encoders\noffload vae\n")):
        recipe = tmp_path / f"{name}.sdx"
        recipe.write_text(f'sdx 1\nmodel tiny\nprofile rtx4090-24gb\ndata "{QUICKSTART}"\nresolution 64\n'
                          f"lora rank 4 no cache te no cache latents\n{words}", encoding="utf-8")
        result, plan, _ = _compile_once(recipe, (), None)
        assert plan is not None, result.diagnostics
        est = sum(v for k, v in plan["estimate"]["vram_breakdown"].items() if k not in skip)
        peaks[name] = (est, int(measure(plan)["peak_bytes"]))
    estimated = peaks["plain"][0] - peaks["levers"][0]
    measured = peaks["plain"][1] - peaks["levers"][1]
    assert measured > 0 and estimated == pytest.approx(measured, rel=0.10), peaks


# --- the fit solver ----------------------------------------------------------------------------------


def _compile(tmp_path: Path, body: str) -> Compiled:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(f'sdx 1\nmodel "org/some-sdxl"\ndata "{QUICKSTART}"\nresolution 1024\n{body}',
                      encoding="utf-8")
    return compile_recipe(recipe)


def _solved(plan: dict[str, Any]) -> dict[str, str]:
    return {path: origin["at"] for path, origin in plan["provenance"].items() if origin["source"] == "solver"}


def test_fit_auto_stores_the_base_in_fp8_for_a_text_encoder_lora_on_8_gb(tmp_path: Path) -> None:
    strict = _compile(tmp_path, "profile rtx4060-8gb\nlora rank 32 on unet+te1+te2\n")
    (error,) = strict.errors
    assert error.code == "SDX0610" and "float8" in (error.help or "")
    compiled = _compile(tmp_path, "profile rtx4060-8gb\nlora rank 32 on unet+te1+te2\nfit auto\n")
    assert not compiled.errors, compiled.errors
    plan = compiled.plan
    assert plan is not None and plan["estimate"]["fits"]
    assert plan["precision"]["base_fp8"] and _solved(plan)["precision.base_fp8"] == "base_fp8"
    assert plan["estimate"]["vram_bytes"] < 6 * GiB


def test_fit_auto_swaps_adamw_for_adafactor_with_the_fused_pass_on_a_12_gb_finetune(tmp_path: Path) -> None:
    strict = _compile(tmp_path, "profile rtx3060-12gb\nfinetune unet\n")
    (error,) = strict.errors
    assert (error.help or "").startswith("these together bring it to about 7.7 GiB")
    assert "Adafactor with the fused backward pass" in (error.help or "")
    compiled = _compile(tmp_path, "profile rtx3060-12gb\nfinetune unet\nfit auto\n")
    assert not compiled.errors, compiled.errors
    plan = compiled.plan
    assert plan is not None and plan["estimate"]["fits"]
    assert plan["optimizer"]["name"] == "adafactor" and plan["method"]["fused_backward"]
    solved = _solved(plan)
    assert solved["optimizer.name"] == solved["method.fused_backward"] == "optimizer_factored"
    notes = [w for w in plan["warnings"] if w.startswith("fit auto:")]
    assert not any("8-bit" in w for w in notes)  # the 8-bit optimizer it tried first is replaced, not kept


def test_offload_levers_when_the_captions_cannot_be_cached() -> None:
    plan = make_plan(cache_te=False, cache_latents=False, ckpt=True)
    found = {lever["name"]: lever for lever in levers(plan, load_profile("rtx4060-8gb"))}
    assert found["offload_text_encoders"]["saves_bytes"] > GiB
    assert "offload_text_encoders" not in {lv["name"] for lv in levers(plan, load_profile("cpu"))}
    te = make_plan(targets=("unet", "te1"), cache_te=False)
    assert "offload_text_encoders" not in {lv["name"] for lv in levers(te, load_profile("rtx4060-8gb"))}
    finetune = make_plan()
    finetune["method"] = {**FINETUNE, "targets": ["unet"]}
    assert "base_fp8" not in {lv["name"] for lv in levers(finetune, load_profile("rtx4060-8gb"))}


def test_kohya_fp8_base_maps_to_base_fp8_both_ways(tmp_path: Path) -> None:
    from sdxlc.tools.kohya.convert import import_kohya
    from sdxlc.tools.kohya.export import export_files

    command = tmp_path / "cmd.txt"
    command.write_text(f"python sdxl_train_network.py --pretrained_model_name_or_path org/m --train_data_dir "
                       f"{tmp_path} --resolution 1024 --output_dir {tmp_path}/out --mixed_precision bf16 "
                       "--fp8_base", encoding="utf-8")
    imported = import_kohya([command], tmp_path)
    assert "base fp8" in imported.text and imported.changes_training == []
    recipe = tmp_path / "r.sdx"
    recipe.write_text(f'sdx 1\nmodel tiny\nprofile rtx4090-24gb\ndata "{QUICKSTART}"\nlora rank 4\n'
                      "base fp8\noffload vae\n", encoding="utf-8")
    result, plan, _ = _compile_once(recipe, (), None)
    assert plan is not None, result.diagnostics
    config = export_files(plan, tmp_path / "k")["config.toml"]
    assert "fp8_base = true" in config and "offload vae" in config


def test_a_run_resumes_across_offload_and_with_allow_numerics_across_base_fp8(tmp_path: Path) -> None:
    from sdxlc.tools.resume import judge

    old = method_plan(tmp_path, LORA_UNET)
    offload = copy.deepcopy(old)
    offload["precision"].update(offload_text_encoders=True, offload_vae=True)
    assert judge(old, offload).ok
    fp8 = copy.deepcopy(old)
    fp8["precision"]["base_fp8"] = True
    verdict = judge(old, fp8)
    assert not verdict.breaking and list(verdict.needs) == ["numerics"]
    assert judge(old, fp8, frozenset({"numerics"})).ok
    mixed = copy.deepcopy(old)
    mixed["precision"]["mixed"] = "bf16"
    assert judge(old, mixed).breaking  # the trained state's dtypes still break a resume
