"""The cpu profile's view of a run's resident memory (sdxlc/plan/host_memory.py): the `runtime_state` term,
and the memory-mapped weights a step never reads, in the estimate and in `--exact` alike
(bench/results/memory_vs_rss.md measures both against peak RSS)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sdxlc.pipeline import compile_recipe
from sdxlc.plan.host_memory import ADAPTER_STATE, UNET_CONV_CHANNELS, runtime_state, unet_convs_on_onednn
from sdxlc.resolve.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "data" / "quickstart"
SDXL = '"stabilityai/stable-diffusion-xl-base-1.0"'  # the shipped configs size it: nothing is downloaded
NO_CACHE = ("cache.text_encoder=false", "cache.latents=false")
MiB = 1 << 20
# schema/models/sdxl.json: parameters, and the token-embedding tables (49,408 rows × width)
TE1, TE2, TOKENS1, TOKENS2 = 123_060_480, 694_659_840, 49408 * 768, 49408 * 1280
VAE_ENCODER = 34_163_664


def _plan(tmp_path: Path, model: str, profile: str, words: str = "", sets: tuple[str, ...] = NO_CACHE,
          ) -> dict[str, Any]:
    path = tmp_path / "r.sdx"
    path.write_text(f'sdx 1\nmodel {model}\nprofile {profile}\ndata "{QUICKSTART}"\n'
                    f"resolution 64 no buckets\nlora rank 4\n{words}\n", encoding="utf-8")
    compiled = compile_recipe(path, sets=sets)
    assert compiled.plan is not None, [str(d) for d in compiled.diagnostics]
    return compiled.plan


def test_the_cpu_profile_counts_the_runtime_state_per_family(tmp_path: Path) -> None:
    cpu = load_profile("cpu")
    tiny = _plan(tmp_path, "tiny", "cpu")["estimate"]["vram_breakdown"]
    sdxl = _plan(tmp_path, SDXL, "cpu")["estimate"]["vram_breakdown"]
    # a fine-tune at batch 1 without checkpointing; a LoRA adds its peft layers
    assert cpu.runtime_state_for("tiny") == 42.5 * MiB
    assert tiny["runtime_state"] == cpu.runtime_state_for("tiny") + ADAPTER_STATE["tiny"] == 46 * MiB
    assert sdxl["runtime_state"] == cpu.runtime_state_for("sdxl") == 160 * MiB
    gpu = _plan(tmp_path, SDXL, "h200-141gb")["estimate"]["vram_breakdown"]
    assert "runtime_state" not in gpu and load_profile("h200-141gb").runtime_state_for("sdxl") == 0


def test_checkpointing_and_onednn_convolutions_add_their_shares(tmp_path: Path) -> None:
    def state(model: str, words: str) -> int:
        return int(_plan(tmp_path, model, "cpu", words)["estimate"]["vram_breakdown"]["runtime_state"])

    # (a LoRA of the tiny model: 46 MiB at batch 1 without checkpointing) checkpointing's recompute code
    assert state("tiny", "checkpointing") == (46 + 4) * MiB
    # a batch over 1 moves the tiny UNet's convolutions from ATen's kernels to oneDNN: 10 MiB once
    assert state("tiny", "batch 2") == state("tiny", "batch 4") == (46 + 10) * MiB
    assert state("tiny", "batch 4\ncheckpointing") == (46 + 4 + 10) * MiB
    # a fine-tune holds no peft layers
    plan = _plan(tmp_path, "tiny", "cpu", "batch 4\ncheckpointing")
    finetune = {**plan, "method": {**plan["method"], "kind": "finetune"}}
    assert runtime_state(finetune, load_profile("cpu").runtime_state_for("tiny"), 64) == (42.5 + 4 + 10) * MiB
    # the SDXL topology's convolutions run on oneDNN at batch 1 already: its measured bytes hold the share
    assert state(SDXL, "batch 4") == 160 * MiB
    assert state(SDXL, "batch 4\ncheckpointing") == (160 + 4) * MiB


def test_onednn_takes_the_tiny_unet_convolutions_past_atens_threshold() -> None:
    plan = {"model": {"kind": "tiny"}, "training": {"batch_size": 1}}
    # widest input 48 channels x latent pixels; ATen's own kernels up to 20,480 elements
    assert not unet_convs_on_onednn(plan, 8 * 8)
    assert not unet_convs_on_onednn(plan, 20 * 20)  # 19,200
    assert unet_convs_on_onednn(plan, 21 * 21)  # 21,168
    assert unet_convs_on_onednn({**plan, "training": {"batch_size": 2}}, 8 * 8)
    assert unet_convs_on_onednn({"model": {"kind": "diffusers_folder"}, "training": {"batch_size": 1}}, 8 * 8)


def test_the_tiny_unet_convolutions_follow_the_rule_the_state_assumes() -> None:
    """UNET_CONV_CHANNELS is the tiny UNet's widest convolution input at the full latent resolution, and
    ATen runs its convolutions on its own kernels at batch 1 (64 px) and on oneDNN at batch 2."""
    torch = pytest.importorskip("torch")
    from runtime.model import tiny

    unet = tiny.tiny_components()["unet"].eval()
    side = int(unet.config.sample_size)
    inputs: list[tuple[int, int]] = []
    for module in unet.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(lambda _m, args: inputs.append(tuple(args[0].shape[1:3])))

    def kernels(batch: int) -> set[str]:
        extra = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        cond = {"text_embeds": torch.zeros(batch, extra), "time_ids": torch.zeros(batch, 6)}
        context = torch.zeros(batch, 77, unet.config.cross_attention_dim)
        with torch.no_grad(), torch.profiler.profile() as prof:
            unet(torch.zeros(batch, 4, side, side), torch.tensor([10] * batch), encoder_hidden_states=context,
                 added_cond_kwargs=cond)
        return {e.key for e in prof.key_averages() if "conv" in e.key}

    batch1 = kernels(1)
    assert max(c for c, h in inputs if h == side) == UNET_CONV_CHANNELS["tiny"]
    assert "aten::_slow_conv2d_forward" in batch1 and "aten::mkldnn_convolution" not in batch1
    assert "aten::mkldnn_convolution" in kernels(2)


def test_mapped_weights_never_read_leave_the_cpu_terms(tmp_path: Path) -> None:
    terms = _plan(tmp_path, SDXL, "cpu")["estimate"]["vram_breakdown"]
    assert terms["te1_weights"] == (TE1 - TOKENS1) * 4
    assert terms["te2_weights"] == (TE2 - TOKENS2) * 4
    assert terms["vae_weights"] == VAE_ENCODER * 4  # training never runs the decoder
    # bf16 casts the weights on load: a copy, resident whole
    cast = _plan(tmp_path, SDXL, "cpu", "bf16")["estimate"]["vram_breakdown"]
    assert cast["te1_weights"] == TE1 * 2
    # the built-in tiny model is built in memory: every weight is resident
    tiny = _plan(tmp_path, "tiny", "cpu")["estimate"]["vram_breakdown"]
    assert tiny["te1_weights"] == 36_064 * 4
    # a GPU copies the weights to the device
    gpu = _plan(tmp_path, SDXL, "h200-141gb", "fp32")["estimate"]["vram_breakdown"]
    assert gpu["te1_weights"] == TE1 * 4


def test_exact_adds_the_same_runtime_state_and_leaves_out_the_same_bytes() -> None:
    torch = pytest.importorskip("torch")
    from runtime.exact.host import adjust
    from runtime.model import tiny

    with torch.device("meta"):
        parts_all = tiny.tiny_components()
    parts = {"te1": parts_all["text_encoder"], "te2": parts_all["text_encoder_2"], "vae": parts_all["vae"]}
    plan = {
        "model": {"kind": "diffusers_folder", "architecture": "tiny"},
        "hardware": {"device": "cpu"},
        "precision": {"mixed": "fp32"},
        "method": {"kind": "lora", "targets": ["unet"]},
        "data": {"cache": {"text_encoder": False, "latents": False}},
        "estimate": {"vram_breakdown": {"runtime_state": 50 * MiB}},
    }
    measured = {"peak_bytes": 100 * MiB, "resident_bytes": 90 * MiB, "phase_peaks": {"forward": 100 * MiB},
                "breakdown": {"te1_weights": 36_064 * 4, "te2_weights": 68_688 * 4, "vae_weights": 1_337_532},
                "notes": []}
    result = copy.deepcopy(measured)
    adjust(plan, parts, result)
    unread = (514 * 32 + 514 * 48 + 196_839) * 4  # token embeddings of both encoders, the VAE decoder
    assert result["breakdown"]["runtime_state"] == 50 * MiB
    assert result["peak_bytes"] == 150 * MiB - unread
    assert result["phase_peaks"]["forward"] == result["peak_bytes"]
    assert result["breakdown"]["te1_weights"] == (36_064 - 514 * 32) * 4
    assert result["breakdown"]["vae_weights"] == 1_337_532 - 196_839 * 4
    gpu = copy.deepcopy(measured)
    adjust({**plan, "hardware": {"device": "cuda"}, "estimate": {"vram_breakdown": {}}}, parts, gpu)
    assert gpu == measured
