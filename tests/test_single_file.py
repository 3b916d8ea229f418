"""Single-file SDXL checkpoints: the diffusers→original converter, offline loading, the compiler's checks."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from runtime import RunError
from runtime.formats.single_file import (
    SDXL_CONFIG_DIR,
    load_single_file,
    load_tokenizers,
    save_single_file,
    to_original,
    write_config,
)
from runtime.model.load import load_pipeline
from runtime.model.tiny import build_tiny_pipeline
from runtime.train.run import execute
from sdxlc.pipeline import compile_recipe
from sdxlc.resolve.model_source import SHIPPED_CONFIG, read_header

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _reference_unet_keys(diffusers_keys: list[str]) -> set[str]:
    """SDXL's UNet keys in original naming, by the fixed prefix table of the well-known conversion
    script (hard-coded to SDXL's topology: 3 levels, 2 resnets down, 3 up)."""
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
           "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    layer: list[tuple[str, str]] = []
    for i in range(3):
        for j in range(2):
            layer.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{3 * i + j + 1}.0."))
            if i > 0:
                layer.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{3 * i + j + 1}.1."))
        for j in range(3):
            layer.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{3 * i + j}.0."))
            if i < 2:
                layer.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{3 * i + j}.1."))
        if i < 2:
            layer.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{3 * (i + 1)}.0.op."))
            layer.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}."))
    layer.append(("output_blocks.2.1.conv.", "output_blocks.2.2.conv."))  # the script's SDXL fix-up
    layer += [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
              ("conv_shortcut", "skip_connection")]
    out = set()
    for key in diffusers_keys:
        base, _, tail = key.rpartition(".")
        if base in top:
            out.add(f"model.diffusion_model.{top[base]}.{tail}")
            continue
        new = key
        if "resnets" in new:
            for a, b in resnet:
                new = new.replace(a, b)
        for a, b in layer:
            new = new.replace(a, b)
        out.add("model.diffusion_model." + new)
    return out


def _full_size_meta() -> dict[str, torch.nn.Module]:
    unet_config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(unet_config),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG_DIR / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder")),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2")
            ),
        }


def test_full_size_key_counts_match_the_reference_layout() -> None:
    models = _full_size_meta()
    state = to_original(models)
    unet_keys = {k for k in state if k.startswith("model.diffusion_model.")}
    assert len(unet_keys) == 1680
    assert unet_keys == _reference_unet_keys(list(models["unet"].state_dict()))
    assert sum(k.startswith("first_stage_model.") for k in state) == 248
    assert sum(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in state) == 196
    assert sum(k.startswith("conditioner.embedders.1.model.") for k in state) == 389
    assert len(state) == 2513
    big_g = "conditioner.embedders.1.model."
    assert state[big_g + "text_projection"].shape == (1280, 1280)
    assert state[big_g + "transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "model.diffusion_model.output_blocks.8.0.skip_connection.weight" in state


def test_shipped_config_folder_is_the_one_the_compiler_names() -> None:
    assert SHIPPED_CONFIG == SDXL_CONFIG_DIR
    index = json.loads((SDXL_CONFIG_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert (SDXL_CONFIG_DIR / "tokenizer" / "LICENSE").is_file() or (SDXL_CONFIG_DIR / "LICENSE").is_file()


def test_shipped_tokenizer_is_real_clip() -> None:
    tokenizer, tokenizer_2 = load_tokenizers(SDXL_CONFIG_DIR)
    ids = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a photo of a cat").input_ids == ids
    assert tokenizer_2("a photo of a cat").input_ids == ids
    assert (len(tokenizer), tokenizer.model_max_length) == (49408, 77)
    assert (tokenizer.pad_token_id, tokenizer_2.pad_token_id) == (49407, 0)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model (seed 0) as a single file, with its config folder (no weights in it)."""
    root = tmp_path_factory.mktemp("single")
    pipe = build_tiny_pipeline(0)
    write_config(pipe, root / "tiny_config")
    path = save_single_file(root / "tiny.safetensors", to_original(pipe), {"format": "pt"})
    return path, root / "tiny_config"


def test_tiny_round_trip_is_bit_identical(tiny_file: tuple[Path, Path]) -> None:
    path, config = tiny_file
    assert not list(config.rglob("*.safetensors"))
    original, loaded = build_tiny_pipeline(0), load_single_file(path, config)
    for name in COMPONENTS:
        a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert read_header(path)["__metadata__"] == {"format": "pt"}


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    save_single_file(tmp_path / "x.safetensors", {"a": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def _recipe(folder: Path, model_line: str, extra: str = "") -> Path:
    recipe = folder / "r.sdx"
    recipe.write_text(
        f"sdx 1\n{model_line}\nprofile cpu\n"
        f'data "{ROOT / "recipes/data/quickstart"}" caption .txt\n'
        "resolution 64 buckets 64..128 step 32\nlora rank 4 on unet\nlr 1e-3 adamw\nbatch 2\nsteps 2\n"
        f'output "out"\nlog every 1\n{extra}'
    )
    return recipe


def _codes(recipe: Path) -> list[str]:
    return [d.code for d in compile_recipe(recipe).diagnostics]


def test_tiny_single_file_trains_offline(tiny_file: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any Hub request would fail
    path, config = tiny_file
    compiled = compile_recipe(_recipe(tmp_path, f'model "{path}" config "{config}"'))
    assert compiled.errors == [], compiled.errors
    plan = compiled.plan
    assert plan is not None
    assert plan["model"]["kind"] == "single_file" and plan["model"]["config"] == str(config)
    result = execute(plan, progress=False)
    assert result.steps == 2 and result.lora_path.is_file()


def test_single_file_defaults_to_the_shipped_config(tiny_file: tuple[Path, Path], tmp_path: Path) -> None:
    # the shipped config is full-size SDXL: the tiny file's shapes do not fit it (SDX0518), its own do
    compiled = compile_recipe(_recipe(tmp_path, f'model "{tiny_file[0]}"'))
    assert [d.code for d in compiled.errors] == ["SDX0518"]
    assert "UNet width is 16 but its config says 320" in compiled.errors[0].message
    assert str(SHIPPED_CONFIG) in compiled.errors[0].message
    compiled = compile_recipe(_recipe(tmp_path, f'model "{tiny_file[0]}" config "{tiny_file[1]}"'))
    assert compiled.plan is not None and compiled.plan["model"]["architecture"] == "tiny"


def test_header_check_rejects_a_non_sdxl_file(tmp_path: Path) -> None:
    save_single_file(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(2, 2)})
    compiled = compile_recipe(_recipe(tmp_path, 'model "lora.safetensors"'))
    assert [d.code for d in compiled.errors] == ["SDX0510"]
    assert "LoRA" in compiled.errors[0].message and "model.diffusion_model" in compiled.errors[0].message
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    assert _codes(_recipe(tmp_path, 'model "junk.safetensors"')) == ["SDX0510"]
    assert _codes(_recipe(tmp_path, 'model "missing.safetensors"')) == ["SDX0510"]


def test_config_checks(tiny_file: tuple[Path, Path], tmp_path: Path) -> None:
    assert _codes(_recipe(tmp_path, f'model "{tiny_file[0]}" config "nowhere"')) == ["SDX0513"]
    assert _codes(_recipe(tmp_path, f'model tiny config "{tiny_file[1]}"')) == ["SDX0514"]


def _pickle_file(tiny_file: tuple[Path, Path], tmp_path: Path) -> Path:
    state = {k: v.clone() for k, v in to_original(build_tiny_pipeline(0)).items()}
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def test_pickle_refused_without_allow_pickle_and_loaded_with_it(tiny_file: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    ckpt = _pickle_file(tiny_file, tmp_path)
    refused = compile_recipe(_recipe(tmp_path, f'model "{ckpt.name}" config "{tiny_file[1]}"'))
    assert [d.code for d in refused.errors] == ["SDX0512"]
    assert "allow pickle" in (refused.errors[0].help or "")
    allowed = compile_recipe(_recipe(tmp_path, f'model "{ckpt.name}" config "{tiny_file[1]}" allow pickle'))
    assert allowed.errors == [] and allowed.plan is not None
    model = allowed.plan["model"]
    assert (model["kind"], model["allow_pickle"]) == ("pickle", True)
    pipe, original = load_pipeline(model), build_tiny_pipeline(0)
    for name in COMPONENTS:
        a, b = getattr(original, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo unsafe",))


def test_pickle_with_code_is_refused_at_load(tiny_file: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        pickle.dump({"state_dict": {"model.diffusion_model.x": _Payload()}}, handle, protocol=2)
    model = {"kind": "pickle", "source": str(path), "config": str(tiny_file[1]), "allow_pickle": True,
             "vae": None, "prediction": "epsilon"}
    with pytest.raises(RunError, match="weights_only=True"):
        load_pipeline(model)


def test_init_normal(tmp_path: Path) -> None:
    model = {"kind": "tiny", "source": "tiny", "tiny_seed": 0, "vae": None, "prediction": "v_prediction",
             "init_std": 0.01}
    pipe = load_pipeline(model)
    weight = pipe.unet.conv_in.weight.detach()
    assert abs(float(weight.std()) - 0.01) < 0.003
    assert float(pipe.unet.conv_in.bias.detach().abs().max()) == 0.0
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    base = build_tiny_pipeline(0)
    assert torch.equal(base.vae.encoder.conv_in.weight, pipe.vae.encoder.conv_in.weight)
    recipe = _recipe(tmp_path, "model tiny init normal 0.02")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None and compiled.plan["model"]["init_std"] == 0.02
    found = [(d.code, d.severity) for d in compiled.diagnostics if d.code == "SDX0515"]
    assert found == [("SDX0515", "warning")]


def test_no_torch_in_the_compiler_module() -> None:
    text = (ROOT / "sdxlc" / "resolve" / "model_source.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(torch|safetensors)", text, re.M)
