"""sdxlc trains SDXL only: other families are an error at the `model` line (SDX0517), told from a folder's
model_index.json and configs, a single file's tensor names or a well-known hub id, all without torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_folders import MID_UNET, config_folder

from sdxlc.pipeline import compile_recipe
from sdxlc.resolve.model_family import folder_problem, hub_problem, single_file_kind

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"


def recipe(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "r.sdx"
    path.write_text(
        f'sdx 1\nmodel {model}\nprofile h100-80gb\ndata "{DATA}" caption .txt\nresolution 512 no buckets\n'
        'lora rank 8 on unet bf16 cache te cache latents\nlr 1e-4\nbatch 1\nsteps 10\noutput "out"\n',
        encoding="utf-8",
    )
    return path


def errors(tmp_path: Path, model: str) -> list[tuple[str, str, int]]:
    compiled = compile_recipe(recipe(tmp_path, model))
    return [(d.code, d.message, d.span.line if d.span else 0) for d in compiled.errors]


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        (
            {"_class_name": "StableDiffusionPipeline"},
            "model_index.json says StableDiffusionPipeline (SD 1.x/2.x)",
        ),
        ({"_class_name": "FluxPipeline"}, "FluxPipeline (FLUX)"),
        ({"_class_name": "StableDiffusion3Pipeline"}, "(Stable Diffusion 3)"),
        ({"_class_name": "PixArtSigmaPipeline"}, "PixArtSigmaPipeline (PixArt)"),
        ({"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]}, "SDXL refiner"),
    ],
)
def test_other_pipelines_are_an_error_at_the_model_line(
    tmp_path: Path, changes: dict[str, object], said: str
) -> None:
    folder = config_folder(tmp_path / "model", index=changes)
    [(code, message, line)] = errors(tmp_path, f'"{folder}"')
    assert (code, line) == ("SDX0517", 2)
    assert said in message


def test_unet_configs_that_are_not_sdxl(tmp_path: Path) -> None:
    sd2 = config_folder(tmp_path / "sd2", unet={"cross_attention_dim": 1024, "addition_embed_type": None})
    assert "addition_embed_type None" in (folder_problem(sd2) or "")
    cross = config_folder(tmp_path / "cross", unet={"cross_attention_dim": 768})
    assert "cross_attention_dim 768, not the text encoders' 768 + 1280" in (folder_problem(cross) or "")
    inpaint = config_folder(tmp_path / "inpaint", unet={"in_channels": 9})
    assert "9 input channels" in (folder_problem(inpaint) or "")
    odd = config_folder(tmp_path / "odd", unet={"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"})
    assert [code for code, _, _ in errors(tmp_path, f'"{odd}"')] == ["SDX0517"]


def test_sdxl_folders_compile(tmp_path: Path) -> None:
    base = config_folder(tmp_path / "base")
    img2img = config_folder(tmp_path / "img2img", index={"_class_name": "StableDiffusionXLImg2ImgPipeline"})
    mid = config_folder(tmp_path / "mid", unet=MID_UNET)
    for folder, architecture in ((base, "sdxl"), (img2img, "sdxl"), (mid, "custom")):
        compiled = compile_recipe(recipe(tmp_path, f'"{folder}"'))
        assert compiled.plan is not None, [str(d) for d in compiled.errors]
        assert compiled.plan["model"]["architecture"] == architecture


def test_hub_ids() -> None:
    assert hub_problem("runwayml/stable-diffusion-v1-5") == (
        "`runwayml/stable-diffusion-v1-5` is SD 1.5: sdxlc trains SDXL only"
    )
    assert "is SD 2.1" in (hub_problem("stabilityai/stable-diffusion-2-1") or "")
    assert "FLUX" in (hub_problem("black-forest-labs/FLUX.1-dev") or "")
    assert "Stable Diffusion 3" in (hub_problem("stabilityai/stable-diffusion-3-medium-diffusers") or "")
    assert "refiner" in (hub_problem("stabilityai/stable-diffusion-xl-refiner-1.0") or "")
    assert hub_problem("stabilityai/stable-diffusion-xl-base-1.0") is None
    assert hub_problem("someone/their-sdxl-finetune") is None  # unknown ids: loaded as SDXL, never fetched


def test_hub_id_error_and_architecture(tmp_path: Path) -> None:
    assert [c for c, _, _ in errors(tmp_path, '"runwayml/stable-diffusion-v1-5"')] == ["SDX0517"]
    compiled = compile_recipe(recipe(tmp_path, '"stabilityai/stable-diffusion-xl-base-1.0"'))
    assert compiled.plan is not None and compiled.plan["model"]["architecture"] == "sdxl"


def write_header_only(path: Path, keys: list[str]) -> Path:
    """A valid safetensors file holding one fp16 value per key."""
    header = {
        k: {"dtype": "F16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]} for i, k in enumerate(keys)
    }
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(2 * len(keys)))
    return path


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        (
            ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x"],
            "Stable Diffusion 1.x",
        ),
        (
            ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.ln_final.weight"],
            "Stable Diffusion 2.x",
        ),
        (["double_blocks.0.img_attn.qkv.weight"], "FLUX"),
        (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "Stable Diffusion 3"),
        (
            ["model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.0.model.ln_final.weight"],
            "SDXL refiner",
        ),
    ],
)
def test_single_files_of_other_families(tmp_path: Path, keys: list[str], said: str) -> None:
    assert said in (single_file_kind(keys) or "")
    write_header_only(tmp_path / "m.safetensors", keys)
    [(code, message, line)] = errors(tmp_path, '"m.safetensors"')
    assert (code, line) == ("SDX0510", 2)
    assert said in message
