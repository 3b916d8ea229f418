"""The estimate's method-specific terms: full fine-tune phases, optimizer-step temporaries, Adafactor's
factored state, text-encoder LoRA copies and a frozen UNet's backward (docs/ESTIMATE.md). The numbers
they pin are `sdxlc plan --exact` measurements of full-size SDXL (bench/results/estimate_vs_exact.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdxlc.pipeline import compile_recipe

GiB = 1 << 30
DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
UNET = 2_567_463_684
NOT_SEEN = {"allocator_overhead", "cuda_context", "sample_peak"}


def plan_of(tmp_path: Path, body: str, *, res: int = 1024, batch: int | str = 1, ckpt: bool = True,
            profile: str = "h200-141gb") -> dict[str, Any]:
    recipe = tmp_path / "e.sdx"
    recipe.write_text(
        f'sdx 1\nmodel "stabilityai/stable-diffusion-xl-base-1.0"\nprofile {profile}\n'
        f'data "{DATA}" caption .txt\nresolution {res} no buckets\n{body}\nbatch {batch}\nsteps 100\n'
        f'output "out/e"\n{"checkpointing" if ckpt else ""}\n',
        encoding="utf-8",
    )
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [str(d) for d in compiled.errors]
    return compiled.plan


def terms(plan: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in plan["estimate"]["vram_breakdown"].items() if k not in NOT_SEEN}


def test_finetune_adamw_on_cuda_peaks_in_the_optimizer_step(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "finetune unet\nbf16\ncache te cache latents\nlr 1e-5 adamw")
    t = terms(plan)
    assert t["gradients"] == UNET * 4
    assert t["optimizer_step_transient"] == UNET * 4  # AdamW's foreach square roots
    assert "activations" not in t  # freed before the step
    assert sum(t.values()) == pytest.approx(47.82 * GiB, rel=0.02)  # --exact


def test_finetune_8bit_without_checkpointing_peaks_at_the_end_of_the_forward(tmp_path: Path) -> None:
    body = "finetune unet{}\nbf16\ncache te cache latents\nlr 1e-5 adamw8bit"
    mixed = terms(plan_of(tmp_path, body.format(""), res=768, batch=4, ckpt=False))
    assert mixed["autocast_weight_copies"] == UNET * 2  # bf16 copies of the fp32 weights
    assert "gradients" not in mixed
    assert sum(mixed.values()) == pytest.approx(33.75 * GiB, rel=0.02)
    full = terms(plan_of(tmp_path, body.format(" full bf16"), res=768, batch=4, ckpt=False))
    assert "autocast_weight_copies" not in full
    assert sum(full.values()) == pytest.approx(24.19 * GiB, rel=0.02)
    carried = terms(plan_of(tmp_path, body.format(""), res=768, batch="4 accumulate 2", ckpt=False))
    assert carried["gradients"] == UNET * 4  # the first micro-batch's gradients wait for the second


def test_finetune_batch1_peaks_with_all_gradients(tmp_path: Path) -> None:
    t = terms(plan_of(tmp_path, "finetune unet\nbf16\ncache te cache latents\nlr 1e-5 adamw8bit",
                      res=768, ckpt=False))
    assert t["gradients"] == UNET * 4
    assert sum(t.values()) == pytest.approx(24.34 * GiB, rel=0.02)


def test_adafactor_finetune_counts_factored_elements(tmp_path: Path) -> None:
    t = terms(plan_of(tmp_path, "finetune unet fused backward full bf16\nbf16\ncache te cache latents\n"
                                "optimizer adafactor\nlr 1e-5"))
    assert t["optimizer_state"] == 4 * 244_330_500  # convolutions are barely factored: 932 MiB
    assert t["gradients"] == 29_491_200 * 2  # one bf16 tensor at a time
    assert t["optimizer_step_transient"] == 3 * 29_491_200 * 4


def test_text_encoder_lora_copies_inputs_only_under_mixed_precision(tmp_path: Path) -> None:
    def acts(precision: str, targets: str) -> int:
        body = f"lora rank 8 alpha 8 on {targets} {precision} cache latents\nlr 1e-4 adamw"
        return terms(plan_of(tmp_path, body))["activations"]

    per_module = 12 * 77 * 768 * 4 + 32 * 77 * 1280 * 4  # layers × tokens × width × fp32, both encoders
    te_base = (27_295_000 + 121_305_000)
    assert acts("bf16", "unet+te1+te2") - acts("bf16", "unet") == te_base + 4 * per_module
    assert acts("fp32", "unet+te1+te2") - acts("fp32", "unet") == 2 * te_base


def test_a_frozen_unet_keeps_fewer_activations(tmp_path: Path) -> None:
    lora = terms(plan_of(tmp_path, "lora rank 8 alpha 8 on unet bf16 cache latents\nlr 1e-4 adamw",
                         res=768, batch=4, ckpt=False))
    embedding = terms(plan_of(tmp_path, 'embedding "<sks>" init "dog"\nbf16\ncache latents\nlr 1e-4 adamw',
                              res=768, batch=4, ckpt=False))
    te = 4 * (27_295_000 + 121_305_000)
    assert embedding["activations"] - te == pytest.approx(0.8 * lora["activations"], rel=0.01)
    assert sum(embedding.values()) == pytest.approx(17.86 * GiB, rel=0.02)  # --exact


def test_full_bf16_keeps_torch_optimizer_state_in_bf16(tmp_path: Path) -> None:
    body = "finetune unet full bf16\nbf16\ncache te cache latents\nlr 1e-5 {}"
    adamw = terms(plan_of(tmp_path, body.format("adamw"), batch=2))
    assert adamw["optimizer_state"] == UNET * 4  # two bf16 moments
    assert sum(adamw.values()) == pytest.approx(23.91 * GiB, rel=0.02)  # --exact
    sgd = terms(plan_of(tmp_path, body.format("sgd"), res=768, batch=2))
    assert sgd["optimizer_state"] == UNET * 2
    assert sgd["optimizer_step_transient"] == 3 * 29_491_200 * 4  # SGD's foreach step works in place
    eight = terms(plan_of(tmp_path, body.format("adamw8bit")))
    assert eight["optimizer_state"] == UNET * 2  # bitsandbytes' 8-bit state does not follow the weights


def test_fused_backward_under_mixed_precision_peaks_with_the_weight_copies(tmp_path: Path) -> None:
    t = terms(plan_of(tmp_path, "finetune unet fused backward\nbf16\ncache te cache latents\n"
                                "optimizer adafactor\nlr 1e-5"))
    assert t["autocast_weight_copies"] == UNET * 2 and "gradients" not in t
    assert sum(t.values()) == pytest.approx(15.83 * GiB, rel=0.02)  # --exact
