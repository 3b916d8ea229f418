"""`sdxlc plan --exact`: one training step simulated on fake tensors, against the analytic estimate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from runtime.exact.step import bnb_state_bytes, measure
from sdxlc.pipeline import compile_recipe  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
NOT_SEEN = {"allocator_overhead", "cuda_context", "sample_peak"}  # GPU terms fake tensors cannot see


def plan_for(
    tmp_path: Path,
    *,
    model: str = "model tiny",
    profile: str = "cpu",
    res: int = 64,
    batch: int = 1,
    ckpt: bool = False,
    precision: str = "fp32",
    cache: str = "cache te cache latents",
    optimizer: str = "adamw",
) -> dict[str, Any]:
    recipe = tmp_path / f"r{res}_{batch}_{ckpt}.sdx"
    recipe.write_text(
        f'sdx 1\n{model}\nprofile {profile}\ndata "{DATA}" caption .txt\nresolution {res} no buckets\n'
        f"lora rank 8 alpha 8 on unet {precision} {cache}\nlr 1e-3 {optimizer}\nbatch {batch}\nsteps 10\n"
        f'output "out/t"\n' + ("checkpointing\n" if ckpt else ""),
        encoding="utf-8",
    )
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [str(d) for d in compiled.errors]
    return compiled.plan


def analytic_step_peak(plan: dict[str, Any]) -> int:
    return sum(v for k, v in plan["estimate"]["vram_breakdown"].items() if k not in NOT_SEEN)


@pytest.fixture(scope="module")
def tiny_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[int, bool], tuple[dict[str, Any], dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("exact")
    out = {}
    for batch, ckpt in ((1, False), (4, False), (1, True), (4, True)):
        plan = plan_for(tmp, batch=batch, ckpt=ckpt)
        out[(batch, ckpt)] = (plan, measure(plan))
    return out


def test_tiny_exact_agrees_with_the_estimate(tiny_results: dict[Any, Any]) -> None:
    # The tiny model's activation coefficients are fitted to these measurements at 64x64 (schema/models/
    # tiny.json), and weights, LoRA, gradients and optimizer state are exact counts: 15% allows for the
    # fixed/per-sample split of a two-point fit and the optimizer-step transients the model leaves out.
    for plan, result in tiny_results.values():
        analytic = analytic_step_peak(plan)
        assert analytic == pytest.approx(result["peak_bytes"], rel=0.15), (analytic, result)


def test_tiny_exact_weights_are_exact(tiny_results: dict[Any, Any]) -> None:
    plan, result = tiny_results[(1, False)]
    est = plan["estimate"]["vram_breakdown"]
    got = result["breakdown"]
    assert got["unet_weights"] >= est["unet_weights"]  # + buffers
    assert got["unet_weights"] == pytest.approx(est["unet_weights"], rel=0.01)
    assert got["trainable_params"] == est["trainable_params"]
    assert got["optimizer_state"] == pytest.approx(est["optimizer_state"], rel=0.01)  # + AdamW step counters


def test_tiny_flops_are_counted(tiny_results: dict[Any, Any]) -> None:
    for plan, result in tiny_results.values():
        assert result["step_flops"] > 0
        # The estimate counts a full backward (2x forward); a LoRA backward skips the frozen weights'
        # gradients, so the counted FLOPs are lower, but within a factor of 2.
        assert plan["estimate"]["step_flops"] / 2 < result["step_flops"] <= plan["estimate"]["step_flops"]


def test_peak_grows_with_batch_and_drops_with_checkpointing(tiny_results: dict[Any, Any]) -> None:
    # the tensors: on the cpu profile the peak also holds the process's runtime state, which checkpointing's
    # recompute code raises by 4 MiB (sdxlc/plan/host_memory.py), more than it saves on the tiny model
    peak = {key: result["peak_bytes"] - result["breakdown"].get("runtime_state", 0)
            for key, (_, result) in tiny_results.items()}
    assert peak[(4, False)] > peak[(1, False)]
    assert peak[(4, True)] > peak[(1, True)]
    assert peak[(1, True)] < peak[(1, False)]
    assert peak[(4, True)] < peak[(4, False)]


def test_bnb_state_is_accounted_analytically() -> None:
    assert bnb_state_bytes(1_000_000, "adamw8bit") == 2 * (1_000_000 + 4 * 3907)
    assert bnb_state_bytes(1_000, "adamw8bit") == 8_000  # under min_8bit_size: fp32 state
    assert bnb_state_bytes(1_000_000, "lion") == 4_000_000


@pytest.mark.slow
@pytest.mark.full
def test_full_size_sdxl_1024(tmp_path: Path) -> None:
    plan = plan_for(
        tmp_path,
        model='model "stabilityai/stable-diffusion-xl-base-1.0"',
        profile="h200-141gb",
        res=1024,
        ckpt=True,
        precision="bf16",
    )
    result = measure(plan)
    assert result["peak_bytes"] == pytest.approx(analytic_step_peak(plan), rel=0.10)
    assert 4.5 * (1 << 30) < result["breakdown"]["unet_weights"] < 5 * (1 << 30)
    assert result["step_flops"] > 1e13


# ---- every method -------------------------------------------------------------------------------------

METHOD_RECIPES = {
    "lora_text": "lora rank 8 alpha 8 on unet+te1+te2 fp32 cache latents\nlr 1e-3 adamw",
    "finetune": "finetune unet\nfp32\ncache te cache latents\nlr 1e-5 adamw",
    "finetune_te1": "finetune unet+te1\nfp32\ncache latents\nlr 1e-5 adamw",
    "finetune_fused": "finetune unet fused backward\nfp32\ncache te cache latents\n"
                      "optimizer adafactor\nlr 1e-5",
    "finetune_prodigy": "finetune unet\nfp32\ncache te cache latents\nlr 1 prodigy",
    "embedding": 'embedding "<sks>" init "dog" vectors 2\nfp32\ncache latents\nlr 1e-3 adamw',
}


def method_plan(tmp_path: Path, body: str, profile: str = "cpu", batch: int = 2) -> dict[str, Any]:
    recipe = tmp_path / "m.sdx"
    recipe.write_text(
        f'sdx 1\nmodel tiny\nprofile {profile}\ndata "{DATA}" caption .txt\nresolution 64 no buckets\n'
        f'{body}\nbatch {batch}\nsteps 10\noutput "out/t"\ncheckpointing\n',
        encoding="utf-8",
    )
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [str(d) for d in compiled.errors]
    return compiled.plan


Measured = Callable[..., tuple[dict[str, Any], dict[str, Any]]]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    """`measured(body, profile="cpu")`: the method plan of `body` and its `measure`, simulated once in this
    module (several tests read the same step)."""
    done: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}

    def run(body: str, profile: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
        if (body, profile) not in done:
            plan = method_plan(tmp_path_factory.mktemp("method"), body, profile)
            done[(body, profile)] = (plan, measure(plan))
        return done[(body, profile)]

    return run


@pytest.mark.parametrize("name", sorted(METHOD_RECIPES))
def test_every_method_is_measured_and_agrees_with_the_estimate(measured: Measured, name: str) -> None:
    plan, result = measured(METHOD_RECIPES[name])
    assert result["peak_bytes"] == pytest.approx(analytic_step_peak(plan), rel=0.10), (name, result)
    got, est = result["breakdown"], plan["estimate"]["vram_breakdown"]
    assert got["unet_weights"] == pytest.approx(est["unet_weights"], rel=0.01)
    if plan["method"]["kind"] == "finetune":  # the trained weights are the weights, and they have state
        assert "trainable_params" not in got
        assert got["optimizer_state"] == pytest.approx(est["optimizer_state"], rel=0.02)
    if plan["method"]["kind"] == "embedding":  # only the new rows train: 2 vectors × (32 + 48) × fp32
        assert got["trainable_params"] == 2 * (32 + 48) * 4
        assert {"te1_weights", "te2_weights"} <= set(got)


def test_fused_backward_never_holds_every_gradient(measured: Measured) -> None:
    fused = measured(METHOD_RECIPES["finetune_fused"])[1]
    plain = measured(METHOD_RECIPES["finetune"].replace("adamw", "adafactor"))[1]
    weights = fused["breakdown"]["unet_weights"]
    assert fused["breakdown"].get("gradients", 0) < weights / 4
    assert plain["breakdown"]["gradients"] > weights * 0.9
    assert fused["peak_bytes"] < plain["peak_bytes"] - weights / 2


def test_adafactor_state_elements_match_the_models() -> None:
    from runtime.exact.step import _meta_pipeline
    from sdxlc.estimate.analytic import load_model

    def elements(module: Any) -> int:
        total = 0
        for p in module.parameters():
            shape = p.shape
            total += shape[:-1].numel() + (shape[:-2] + shape[-1:]).numel() if len(shape) >= 2 else p.numel()
        return total

    for kind in ("tiny", "sdxl"):
        pipe = _meta_pipeline({"model": {"kind": kind}})
        counted = {"unet": elements(pipe.unet), "te1": elements(pipe.text_encoder),
                   "te2": elements(pipe.text_encoder_2)}
        assert counted == load_model(kind)["adafactor_state_elements"], kind


def test_cuda_plans_step_all_tensors_at_once(measured: Measured) -> None:
    # On CUDA, torch's AdamW steps every tensor together (foreach): the square roots of all second
    # moments exist at once, one more copy of every trained value.
    body = METHOD_RECIPES["finetune"].replace("fp32", "bf16")
    cuda = measured(body, profile="rtx4090-24gb")[1]
    cpu = measured(METHOD_RECIPES["finetune"])[1]
    trained = cuda["breakdown"]["unet_weights"]  # fp32 master weights
    assert cuda["peak_phase"] == "optimizer"
    assert cuda["breakdown"]["optimizer_step_transient"] >= trained
    assert cpu["breakdown"].get("optimizer_step_transient", 0) < trained / 4


def test_plan_exact_prints_measured_and_estimated_terms(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sdxlc.cli.main import main

    method_plan(tmp_path, METHOD_RECIPES["embedding"])  # writes tmp_path/m.sdx
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "m.sdx"), "--exact"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "exact training-step peak" in out and "measured" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith("    te1_weights")}
    assert rows["te1_weights"][0] == rows["te1_weights"][2]  # same bytes measured and estimated
    assert "exact sampling peak" not in out  # the recipe samples nothing
