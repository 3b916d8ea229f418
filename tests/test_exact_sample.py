"""The sampling peak simulated on fake tensors (runtime/exact/sample.py) against the estimate's
`sample_peak`: every component back on the device, the UNet at the sample size, one VAE decode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from runtime.exact.sample import measure_sampling
from sdxlc.pipeline import compile_recipe  # noqa: E402
from sdxlc.resolve.profiles import load_profile

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
SDXL = 'model "stabilityai/stable-diffusion-xl-base-1.0"'


def sampling_plan(tmp_path: Path, *, model: str = "model tiny", profile: str = "cpu", size: int = 96,
                  precision: str = "fp32", cfg: float = 5.0) -> dict[str, Any]:
    recipe = tmp_path / "s.sdx"
    recipe.write_text(
        f'sdx 1\n{model}\nprofile {profile}\ndata "{DATA}" caption .txt\nresolution 64 no buckets\n'
        f"lora rank 8 alpha 8 on unet {precision} cache te cache latents\nlr 1e-3 adamw\nsteps 10\n"
        f'output "out/s"\nsample every 5 steps "a red circle" size {size} steps 4 cfg {cfg}\n',
        encoding="utf-8",
    )
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [str(d) for d in compiled.errors]
    return compiled.plan


def analytic_sample_peak(plan: dict[str, Any]) -> float:
    """The estimate's sample_peak without what fake tensors cannot see (allocator overhead, context)."""
    terms = plan["estimate"]["vram_breakdown"]
    overhead = load_profile(plan["hardware"]["profile"]).allocator_overhead
    return (terms["sample_peak"] - terms.get("cuda_context", 0)) / (1.0 + overhead)


Sampled = Callable[..., tuple[dict[str, Any], "dict[str, Any] | None"]]


@pytest.fixture(scope="module")
def tiny_sampled(tmp_path_factory: pytest.TempPathFactory) -> Sampled:
    """`tiny_sampled(cfg=5.0)`: the tiny model's sampling plan and its measure_sampling, simulated once in
    this module (several tests read the same pass)."""
    done: dict[float, tuple[dict[str, Any], dict[str, Any] | None]] = {}

    def run(cfg: float = 5.0) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if cfg not in done:
            plan = sampling_plan(tmp_path_factory.mktemp("sampling"), cfg=cfg)
            done[cfg] = (plan, measure_sampling(plan))
        return done[cfg]

    return run


def test_tiny_sampling_peak_agrees_with_the_estimate(tiny_sampled: Sampled) -> None:
    plan, result = tiny_sampled()
    assert result is not None
    assert result["peak_bytes"] == pytest.approx(analytic_sample_peak(plan), rel=0.10)
    assert set(result["phase_bytes"]) == {"text", "unet", "decode"}
    # cached encoders and VAE are parked while training, but sampling has every component back
    assert {"te1_weights", "te2_weights", "vae_weights", "optimizer_state"} <= set(result["breakdown"])
    assert "gradients" not in result["breakdown"]


def test_guidance_doubles_the_unet_pass(tiny_sampled: Sampled) -> None:
    guided = tiny_sampled(cfg=5.0)[1]
    plain = tiny_sampled(cfg=1.0)[1]
    assert guided is not None and plain is not None
    assert guided["phase_bytes"]["unet"] > 1.6 * plain["phase_bytes"]["unet"]
    decode = plain["phase_bytes"]["decode"]
    assert guided["phase_bytes"]["decode"] == pytest.approx(decode, rel=0.01)  # one image is decoded


def test_a_plan_without_prompts_has_no_sampling_peak(tmp_path: Path) -> None:
    plan = sampling_plan(tmp_path)
    plan["sample"]["prompts"] = []
    assert measure_sampling(plan) is None


@pytest.mark.slow
@pytest.mark.full
def test_full_size_sampling_peak_at_1024(tmp_path: Path) -> None:
    plan = sampling_plan(tmp_path, model=SDXL, profile="h200-141gb", size=1024, precision="bf16", cfg=7)
    result = measure_sampling(plan)
    assert result is not None
    assert result["peak_bytes"] == pytest.approx(analytic_sample_peak(plan), rel=0.05)
    assert result["peak_phase"] == "decode"  # the VAE decode at 1024 px outweighs the UNet pass
    gib = 1 << 30
    assert 1.3 * gib < result["phase_bytes"]["decode"] < 1.8 * gib
    assert 0.25 * gib < result["phase_bytes"]["unet"] < 0.45 * gib


def test_plan_exact_prints_the_sampling_peak(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sdxlc.cli.main import main

    sampling_plan(tmp_path)  # writes tmp_path/s.sdx
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "s.sdx"), "--exact"])
    assert result.exit_code == 0, result.output
    section = result.output.split("exact sampling peak", 1)[1]
    assert "peak in decode" in section and "unet +" in section and "estimate" in section


@pytest.mark.parametrize(("profile", "precision"), [("cpu", "fp32"), ("h200-141gb", "bf16")])
def test_a_sampling_finetune_is_estimated_and_measured(tmp_path: Path, profile: str, precision: str) -> None:
    """Under bf16 autocast, the half-precision copies of the fp32 UNet weights live until sampling ends."""
    recipe = tmp_path / "f.sdx"
    recipe.write_text(
        f'sdx 1\nmodel tiny\nprofile {profile}\ndata "{DATA}" caption .txt\nresolution 64 no buckets\n'
        f'finetune unet\n{precision}\ncache te cache latents\nlr 1e-5 adamw\nsteps 10\noutput "out/f"\n'
        'sample every 5 steps "a red circle" size 64 steps 4 cfg 5\n',
        encoding="utf-8",
    )
    plan = compile_recipe(recipe).plan
    assert plan is not None
    result = measure_sampling(plan)
    assert result is not None
    assert result["peak_bytes"] == pytest.approx(analytic_sample_peak(plan), rel=0.10)
    assert "trainable_params" not in result["breakdown"]  # the trained weights are the UNet's weights
