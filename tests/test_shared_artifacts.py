"""What a saved file tells whoever it is shared with: no local path, kohya's `ss_*` keys, `save private`,
and LoRA blocks frozen by `block_lr 0` left out of the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from methods_common import LORA_TE, method_plan
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from runtime.methods import lora
from runtime.model.tiny import build_tiny_pipeline
from runtime.train.run import execute, setup_model
from sdxlc.plan.share import shareable
from sdxlc.resolve.method import unsaved_blocks

ROOT = Path(__file__).resolve().parent.parent
BLOCK_LR = [0.0] * 10 + [5e-4] * 3 + [1e-3] * 10  # input blocks frozen, middle at half the rate
CAPTIONS = {"shuffle": True, "keep_tokens": 1, "caption_dropout": 0.1, "tag_dropout": 0.2}


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """A LoRA on the UNet and both encoders with its input blocks frozen, trained for two steps."""
    out = tmp_path_factory.mktemp("shared")
    method = {**LORA_TE, "modules": ["attention"], "unet_modules": ["to_q", "to_k", "to_v", "to_out.0"],
              "te_modules": ["q_proj", "k_proj", "v_proj", "out_proj"], "block_lr": BLOCK_LR,
              "unsaved_blocks": unsaved_blocks(BLOCK_LR, LORA_TE["targets"], None)}
    plan = method_plan(out, method, training__total_steps=2, training__timestep_min=100,
                       training__timestep_max=900, sample__prompts=[],
                       **{f"data__datasets__0__{key}": value for key, value in CAPTIONS.items()})
    return out, plan, execute(plan, progress=False).lora_path


def test_no_metadata_value_holds_a_local_path(frozen_run) -> None:  # type: ignore[no-untyped-def]
    out, plan, path = frozen_run
    _, meta = read(path)
    for prefix in (str(out), str(Path.home()), str(ROOT)):
        assert not [key for key, value in meta.items() if prefix in value], prefix
    stored = json.loads(meta["sdxlc_plan"])
    assert stored == shareable(plan) and stored["plan_hash"] == plan["plan_hash"]
    assert stored["output"]["dir"] == "." and stored["data"]["cache"]["dir"] == "cache"
    assert stored["data"]["datasets"][0]["path"] == "quickstart"  # outside the recipe folder: its name


def test_kohya_keys_follow_the_plan(frozen_run) -> None:  # type: ignore[no-untyped-def]
    _, plan, path = frozen_run
    _, meta = read(path)
    assert meta["ss_min_timestep"] == "100" and meta["ss_max_timestep"] == "900"
    assert meta["ss_shuffle_caption"] == "True" and meta["ss_keep_tokens"] == "1"
    assert meta["ss_caption_dropout_rate"] == "0.1" and meta["ss_caption_tag_dropout_rate"] == "0.2"
    assert meta["ss_caption_dropout_every_n_epochs"] == "0"
    assert meta["ss_text_encoder_lr"] == "[0.001, 0.0005]"  # kohya's per-encoder list
    assert json.loads(meta["ss_network_args"]) == {
        "down_lr_weight": ",".join(["0"] * 9), "mid_lr_weight": "0.5,0.5,0.5",
        "up_lr_weight": ",".join(["1"] * 9)}
    images = plan["data"]["datasets"][0]["images"]
    assert json.loads(meta["ss_dataset_dirs"]) == {"quickstart": {"n_repeats": 1, "img_count": images}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {}
    (dataset,) = json.loads(meta["ss_datasets"])
    (subset,) = dataset["subsets"]
    assert subset["image_dir"] == "quickstart" and subset["shuffle_caption"] and subset["keep_tokens"] == 1
    assert meta["ss_sd_model_name"] == "tiny" and meta["ss_output_name"] == "tinylora"
    assert meta["ss_network_weights"] == "None"


def test_blocks_frozen_at_zero_are_left_out_and_the_file_loads(frozen_run) -> None:  # type: ignore[no-untyped-def]
    _, plan, path = frozen_run
    assert plan["method"]["unsaved_blocks"] == list(range(10))
    tensors, _ = read(path)
    assert not [k for k in tensors if k.startswith("lora_unet_input_blocks_")]
    assert [k for k in tensors if k.startswith("lora_unet_middle_block_")]
    assert [k for k in tensors if k.startswith("lora_unet_output_blocks_")]
    assert [k for k in tensors if k.startswith("lora_te2_")]
    pipe = build_tiny_pipeline(plan["model"]["tiny_seed"])
    pipe.load_lora_weights(str(path))
    layers = [m for m in pipe.unet.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == len([k for k in tensors if k.startswith("lora_unet_") and k.endswith(".alpha")])


def test_a_lora_without_its_frozen_blocks_can_be_continued(frozen_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, path = frozen_run
    tensors, _ = read(path)
    plan = method_plan(tmp_path, {**LORA_TE, "modules": ["attention"],
                                  "unet_modules": ["to_q", "to_k", "to_v", "to_out.0"],
                                  "te_modules": ["q_proj", "k_proj", "v_proj", "out_proj"],
                                  "init_from": str(path)})
    pipe = setup_model(plan).pipe
    started = lora.kohya_state_dict(pipe, torch.float32)
    assert all(torch.equal(started[k], tensors[k].float()) for k in tensors)
    fresh = [k for k in started if k.startswith("lora_unet_input_blocks_") and k.endswith("lora_up.weight")]
    assert fresh and all(not started[k].any() for k in fresh)  # the blocks the file left out start as no-ops


def test_save_private_keeps_only_kohya_keys_and_the_plan_hash(  # type: ignore[no-untyped-def]
    make_plan, tmp_path: Path
) -> None:
    plan = make_plan(tmp_path, training__total_steps=1, sample__prompts=[], save__private=True)
    _, meta = read(execute(plan, progress=False).lora_path)
    assert "sdxlc_plan" not in meta and "sdxlc_lineage" not in meta
    assert meta["sdxlc_plan_hash"] == plan["plan_hash"]
    assert all(key.startswith(("ss_", "modelspec.")) or key == "sdxlc_plan_hash" for key in meta)
    assert not [key for key, value in meta.items() if str(tmp_path) in value or str(ROOT) in value]


def test_shareable_makes_paths_relative_or_names_and_keeps_prompts() -> None:
    plan = {
        "save": {"relative_to": "/home/ann/recipes", "private": False},
        "output": {"dir": "/home/ann/recipes/out/style"},
        "model": {"source": "/models/sd_xl_base_1.0.safetensors", "vae": "madebyollin/sdxl-vae-fp16-fix"},
        "data": {"datasets": [{"path": "/home/ann/recipes/data/10_sks dog"}, {"path": "D:\\photos\\cats"}]},
        "sources": [{"file": "/home/ann/recipes/style.sdx", "git": {"path": "recipes/style.sdx"}}],
        "sample": {"prompts": ["/r/earthporn style"]},
        "warnings": ["2 image(s) are upscaled: /home/ann/recipes/data/10_sks dog/a.png (64x64 < 96x96); "
                     "/mnt/big/b.png (1x1 < 2x2)"],
    }
    shared = shareable(plan)
    assert shared["output"]["dir"] == "out/style" and shared["save"]["relative_to"] == "."
    assert shared["model"] == {"source": "sd_xl_base_1.0.safetensors", "vae": "madebyollin/sdxl-vae-fp16-fix"}
    assert [d["path"] for d in shared["data"]["datasets"]] == ["data/10_sks dog", "cats"]
    assert shared["sources"] == [{"file": "style.sdx", "git": {"path": "recipes/style.sdx"}}]
    assert shared["sample"] == plan["sample"]
    assert shared["warnings"] == [
        "2 image(s) are upscaled: data/10_sks dog/a.png (64x64 < 96x96); b.png (1x1 < 2x2)"]
    assert plan["output"]["dir"] == "/home/ann/recipes/out/style"  # the plan itself is unchanged


def test_the_plan_says_what_is_private_and_which_blocks_are_left_out(tmp_path: Path) -> None:
    from sdxlc.pipeline import compile_recipe

    (tmp_path / "data").symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = tmp_path / "r.sdx"
    head = 'model tiny\ndata "data"\nsteps 4\nlr 1e-3\nblock_lr 0 x10, 1e-3 x13\n'
    recipe.write_text(head + "save private\n", encoding="utf-8")
    plan = compile_recipe(recipe).plan
    assert plan is not None
    assert plan["save"]["private"] is True and plan["save"]["relative_to"] == str(tmp_path.resolve())
    assert plan["method"]["unsaved_blocks"] == list(range(10))
    assert plan["provenance"]["save.private"]["source"] == "recipe"
    recipe.write_text(head, encoding="utf-8")
    plan = compile_recipe(recipe).plan
    assert plan is not None and plan["save"]["private"] is False
