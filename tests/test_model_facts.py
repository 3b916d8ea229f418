"""The estimate sizes the model a folder really holds: facts computed from its configs
(sdxlc/estimate/facts.py) equal the committed schema/models/*.json for SDXL and the tiny model, and for
other SDXL-topology models track `sdxlc plan --exact`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from model_folders import MID_UNET, config_folder

from sdxlc.estimate.analytic import load_model
from sdxlc.estimate.facts import structure
from sdxlc.pipeline import compile_recipe
from sdxlc.resolve.architecture import read_configs
from sdxlc.resolve.model_source import SHIPPED_CONFIG

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
NOT_SEEN = {"allocator_overhead", "cuda_context", "sample_peak"}  # GPU terms fake tensors cannot see
COUNTED = (
    "params",
    "adafactor_state_elements",
    "largest_tensor_params",
    "lora_params_per_rank",
    "lora_conv_params_per_rank",
    "lora_weight_elements",
    "layer_count",
    "tensor_count",
    "lora_layer_count",
    "lora_flops_per_rank",
    "te_lora_input_width",
    "te_lora_modules",
    "latent",
    "context",
)
# the quickstart's pretrained base (recipes/models/): wider than the built-in tiny model, one layer deep
QUICKSTART_UNET = {
    "block_out_channels": [32, 64, 80],
    "attention_head_dim": [2, 4, 5],
    "transformer_layers_per_block": [1, 1, 1],
    "norm_num_groups": 16,
}
QUICKSTART_VAE = {"block_out_channels": [16, 32, 48, 48], "layers_per_block": 1, "sample_size": 64}


def plan_for(
    tmp_path: Path,
    model: str,
    *,
    profile: str = "h100-80gb",
    res: int = 512,
    batch: int = 1,
    ckpt: bool = False,
    precision: str = "bf16",
) -> dict[str, Any]:
    recipe = tmp_path / f"r{res}_{batch}_{ckpt}.sdx"
    recipe.write_text(
        f'sdx 1\nmodel {model}\nprofile {profile}\ndata "{DATA}" caption .txt\nresolution {res} no buckets\n'
        f"lora rank 8 alpha 8 on unet {precision} cache te cache latents\nlr 1e-3 adamw\nbatch {batch}\n"
        'steps 10\noutput "out/t"\n' + ("checkpointing\n" if ckpt else ""),
        encoding="utf-8",
    )
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [str(d) for d in compiled.errors]
    return compiled.plan


def step_peak(plan: dict[str, Any]) -> int:
    return sum(v for k, v in plan["estimate"]["vram_breakdown"].items() if k not in NOT_SEEN)


def test_the_shipped_sdxl_configs_give_sdxl_json() -> None:
    computed, committed = structure(read_configs(SHIPPED_CONFIG)), load_model("sdxl")
    for key in (*COUNTED, "flops"):
        assert computed[key] == committed[key], key


def test_a_mid_size_folder_is_sized_from_its_configs(tmp_path: Path) -> None:
    mid = config_folder(tmp_path / "mid", unet=MID_UNET)
    plan, full = (
        plan_for(tmp_path, f'"{mid}"'),
        plan_for(tmp_path, '"stabilityai/stable-diffusion-xl-base-1.0"'),
    )
    assert (plan["model"]["architecture"], full["model"]["architecture"]) == ("custom", "sdxl")
    est, sdxl = plan["estimate"]["vram_breakdown"], full["estimate"]["vram_breakdown"]
    assert est["unet_weights"] == 303_731_332 * 2  # counted from unet/config.json
    assert est["unet_weights"] < sdxl["unet_weights"] / 8
    assert 0.2 < est["activations"] / sdxl["activations"] < 0.4
    assert plan["estimate"]["step_flops"] < full["estimate"]["step_flops"] / 5
    plain = config_folder(tmp_path / "base")  # a full-size SDXL folder uses the committed facts
    assert plan_for(tmp_path, f'"{plain}"')["estimate"] == full["estimate"]


# ---- against the models themselves (torch) -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from runtime.formats.single_file import write_config
    from runtime.model.tiny import build_tiny_pipeline

    return write_config(build_tiny_pipeline(0), tmp_path_factory.mktemp("tiny") / "config")


def test_the_tiny_configs_give_tiny_json(tiny_configs: Path) -> None:
    computed, committed = structure(read_configs(tiny_configs)), load_model("tiny")
    for key in COUNTED:
        assert computed[key] == committed[key], key
    flops, fitted = computed["flops"]["unet_forward"], committed["flops"]["unet_forward"]
    px = 32 * 32  # tiny.json's FLOPs are a three-point fit to FlopCounterMode at 8², 16² and 32² latents

    def at(f: dict[str, float]) -> float:
        return f["constant"] + f["per_latent_px"] * px + f["per_latent_px_squared"] * px**2

    assert at(flops) == pytest.approx(at(fitted), rel=0.01)


def test_tensor_names_and_shapes_are_the_models(tiny_configs: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdxlc.resolve.architecture import all_tensors

    conv_proj = config_folder(tmp_path / "conv", unet={**MID_UNET, "use_linear_projection": False})
    for folder in (tiny_configs, SHIPPED_CONFIG, conv_proj):
        ours = all_tensors(read_configs(folder))
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            models = {
                "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                "te1": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                "te2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")),
            }
        for name, model in models.items():
            shapes = {
                k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")
            }
            assert ours[name] == shapes, (folder, name)
        assert {**ours["vae_encoder"], **ours["vae_decoder"]} == {
            k: tuple(v.shape) for k, v in vae.state_dict().items()
        }


def test_a_saved_tiny_folder_is_the_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from runtime.model.tiny import build_tiny_pipeline

    build_tiny_pipeline(0).save_pretrained(tmp_path / "tiny")
    folder = plan_for(tmp_path, f'"{tmp_path / "tiny"}"', profile="cpu", res=64, precision="fp32")
    builtin = plan_for(tmp_path, "tiny", profile="cpu", res=64, precision="fp32")
    assert folder["model"]["architecture"] == "tiny"
    assert folder["estimate"]["vram_breakdown"] == builtin["estimate"]["vram_breakdown"]


def _quickstart_folder(tmp_path: Path, tiny_configs: Path) -> Path:
    quick = tmp_path / "quickstart"
    quick.mkdir()
    for sub in (
        "model_index.json",
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
    ):
        source = tiny_configs / sub
        (quick / sub).write_bytes(source.read_bytes()) if source.is_file() else _copy(source, quick / sub)
    for sub, changes in (("unet", QUICKSTART_UNET), ("vae", QUICKSTART_VAE)):
        path = quick / sub / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return quick


def _copy(source: Path, target: Path) -> None:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())


def _tracks_exact(plans: dict[str, dict[str, Any]]) -> None:
    pytest.importorskip("peft")
    from runtime.exact.step import measure

    for name, plan in plans.items():
        assert plan["model"]["architecture"] == "custom"
        measured = measure(plan)
        est = plan["estimate"]["vram_breakdown"]
        assert measured["breakdown"]["unet_weights"] == pytest.approx(est["unet_weights"], rel=0.01), name
        # the tolerance the tiny model is held to (tests/test_exact.py)
        assert step_peak(plan) == pytest.approx(measured["peak_bytes"], rel=0.15), (name, measured)


def test_a_quickstart_sized_model_tracks_exact(tiny_configs: Path, tmp_path: Path) -> None:
    quick = f'"{_quickstart_folder(tmp_path, tiny_configs)}"'
    _tracks_exact(
        {
            "batch 1": plan_for(tmp_path, quick, profile="cpu", res=64, precision="fp32"),
            "batch 2": plan_for(tmp_path, quick, profile="cpu", res=64, batch=2, precision="fp32"),
            "checkpointing": plan_for(tmp_path, quick, profile="cpu", res=64, ckpt=True, precision="fp32"),
        }
    )


@pytest.mark.slow
@pytest.mark.full
def test_a_mid_size_model_tracks_exact(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    mid = f'"{config_folder(tmp_path / "mid", unet=MID_UNET)}"'
    _tracks_exact(
        {
            "checkpointing": plan_for(tmp_path, mid, res=512, ckpt=True),
            "batch 2": plan_for(tmp_path, mid, res=512, batch=2),
        }
    )
