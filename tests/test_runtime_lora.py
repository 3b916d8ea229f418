"""LoRA: diffusers → SDXL (SAI) names, kohya blocks, block_lr groups, file writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from runtime import RunError
from runtime.methods import lora
from runtime.model.tiny import UNET_CONFIG, build_tiny_pipeline
from runtime.train.run import run_plan, setup_model


class Config:
    layers_per_block = UNET_CONFIG["layers_per_block"]
    up_block_types = UNET_CONFIG["up_block_types"]


TB = "transformer_blocks"


@pytest.mark.parametrize(("diffusers", "sai"), [
    (f"down_blocks.1.attentions.0.{TB}.0.attn1.to_q", f"input_blocks.4.1.{TB}.0.attn1.to_q"),
    ("down_blocks.2.attentions.1.proj_in", "input_blocks.8.1.proj_in"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    (f"mid_block.attentions.0.{TB}.1.attn2.to_out.0", f"middle_block.1.{TB}.1.attn2.to_out.0"),
    (f"up_blocks.0.attentions.2.{TB}.0.ff.net.2", f"output_blocks.2.1.{TB}.0.ff.net.2"),
    ("up_blocks.1.attentions.0.proj_out", "output_blocks.3.1.proj_out"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.2.resnets.2.norm2", "output_blocks.8.0.out_layers.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_out", "out.2"),
])
def test_sai_names_follow_the_sdxl_layout(diffusers: str, sai: str) -> None:
    assert lora.sai_name(diffusers, Config) == sai


def test_blocks() -> None:
    assert lora.block_index("time_embed.0") == lora.block_index("label_emb.0.0") == 0
    assert lora.block_index("input_blocks.0.0") == 1 and lora.block_index("input_blocks.8.1.proj_in") == 9
    assert lora.block_index("middle_block.1.proj_in") == 11
    assert lora.block_index("output_blocks.0.1.proj_in") == 13
    assert lora.block_index("output_blocks.8.0.out_layers.3") == 21
    assert lora.block_index("out.2") == 22
    with pytest.raises(RunError):
        lora.block_index("input_blocks.9.1.proj_in")


def block_lr_for_test() -> list[float]:
    """Input blocks frozen, a distinct lr for every other block."""
    return [0.0] * 10 + [1e-2 + i * 1e-4 for i in range(13)]


def test_block_lr_groups(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    values = block_lr_for_test()
    plan = make_plan(tmp_path, method__block_lr=values)
    unet = setup_model(plan).pipe.unet
    groups = lora.param_groups(unet, plan["method"], plan["optimizer"]["lr"])
    assert [g["block"] for g in groups] == [11, 13, 14, 15, 16, 17, 18]  # middle 1, output 0-5 hold attention
    for group in groups:
        assert group["lr"] == values[group["block"]]
    grouped = {id(p) for g in groups for p in g["params"]}
    for name, layer in lora.lora_layers(unet).items():
        block = lora.block_index(lora.sai_name(name, unet.config))
        for parameter in lora.lora_parameters(layer):
            assert parameter.requires_grad == (block > 9) == (id(parameter) in grouped)


def test_block_lr_zero_freezes_blocks(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, method__block_lr=block_lr_for_test(), training__total_steps=3,
                     sample__prompts=[], save__dtype="fp32")
    from accelerate.utils import set_seed

    set_seed(plan["training"]["seed"])
    initial = lora.kohya_state_dict(setup_model(plan).pipe.unet, torch.float32)
    result, _ = run_plan(plan, progress=False)
    with safe_open(str(result.lora_path), "pt") as f:
        trained = {k: f.get_tensor(k) for k in f.keys()}
    assert trained.keys() == initial.keys()
    frozen = [k for k in trained if k.startswith("lora_unet_input_blocks_")]
    moving = [k for k in trained if k.endswith("lora_up.weight") and k not in frozen]
    assert frozen and moving
    assert all(torch.equal(trained[k], initial[k]) for k in frozen)
    assert all(not torch.equal(trained[k], initial[k]) for k in moving)


def test_all_zero_block_lr_is_an_error(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, method__block_lr=[0.0] * 23)
    with pytest.raises(RunError, match="nothing to train"):
        lora.param_groups(setup_model(plan).pipe.unet, plan["method"], 1e-3)


def test_kohya_state_dict_and_atomic_save(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline(0)
    method = {"targets": ["unet"], "rank": 4, "alpha": 2.0, "dropout": 0.0,
              "unet_modules": ["to_q", "proj_in"]}
    lora.add_lora(pipe.unet, method)
    path = lora.save_lora(tmp_path / "x.safetensors", pipe.unet, torch.float16, {"k": "v"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # no temp file left
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"k": "v"}
        down = f.get_tensor("lora_unet_input_blocks_4_1_proj_in.lora_down.weight")
        alpha = f.get_tensor("lora_unet_input_blocks_4_1_proj_in.alpha")
    assert down.dtype == torch.float16 and down.shape[0] == 4 and float(alpha) == 2.0
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_q.lora_up.weight" in keys
    assert len(keys) == 3 * len(lora.lora_layers(pipe.unet))


def test_unknown_targets_are_errors() -> None:
    pipe = build_tiny_pipeline(0)
    with pytest.raises(RunError, match="match no text-encoder module"):
        lora.add_text_lora(pipe.text_encoder, {"rank": 4, "alpha": 4, "dropout": 0.0, "te_modules": ["to_q"]})
    with pytest.raises(RunError, match="match no UNet module"):
        lora.add_lora(pipe.unet, {"targets": ["unet"], "rank": 4, "alpha": 4, "dropout": 0.0,
                                  "unet_modules": ["no_such_layer"]})


def test_prune_checkpoints(tmp_path: Path) -> None:
    for step in (2, 4, 10, 6):
        (tmp_path / f"n-step{step:06d}.safetensors").write_bytes(b"")
    (tmp_path / "n.safetensors").write_bytes(b"")
    lora.prune_checkpoints(tmp_path, "n", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "n-step000006.safetensors", "n-step000010.safetensors", "n.safetensors"]
