"""Full fine-tuning: the single-file checkpoint round trip, the diffusers folder, the fused backward
pass, and block_lr's 23 groups on the full-size SDXL UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from methods_common import FINETUNE, method_plan

from runtime.formats.single_file import SDXL_CONFIG_DIR, load_single_file, write_config
from runtime.methods import finetune
from runtime.model.tiny import build_tiny_pipeline
from runtime.train.run import run_plan

ADAFACTOR = {"name": "adafactor", "lr": 1e-3, "max_grad_norm": 0.0,
             "args": {"relative_step": False, "scale_parameter": False, "warmup_init": False}}
# tensors per kohya block of SDXL base: 0 time/label embeddings, 1 conv_in, 2-9 input blocks 1-8,
# 10-12 middle, 13-21 output blocks 0-8, 22 out (resnets 10 tensors, 12 with a shortcut; transformer
# 6 + 20 per layer; 1, 2 and 10 layers at the three levels)
SDXL_BLOCK_TENSORS = [8, 2, 10, 10, 2, 58, 56, 2, 218, 216, 10, 206, 10, 218, 218, 220, 58, 58, 60,
                      12, 12, 12, 4]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in module.state_dict().items()}


def test_single_file_round_trip_and_diffusers_folder(tmp_path: Path) -> None:
    plan = method_plan(tmp_path, {**FINETUNE, "save_diffusers": True}, training__total_steps=2,
                       sample__prompts=[])
    result, models = run_plan(plan, progress=False)
    pipe = models.pipe
    assert result.lora_path.suffix == ".safetensors" and result.diffusers_path == tmp_path / "tinylora"
    loaded = load_single_file(result.lora_path, write_config(pipe, tmp_path / "config"))
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        trained, back = _state(getattr(pipe, name)), _state(getattr(loaded, name))
        assert trained.keys() == back.keys(), name
        for key in trained:
            assert torch.equal(trained[key], back[key]), (name, key)
    base = build_tiny_pipeline(0)
    assert not torch.equal(_state(base.unet)["conv_in.weight"], _state(pipe.unet)["conv_in.weight"])
    folder = UNet2DConditionModel.from_pretrained(result.diffusers_path, subfolder="unet")
    assert all(torch.equal(v, _state(folder)[k]) for k, v in _state(pipe.unet).items())


def test_fused_backward_matches_the_plain_step(tmp_path: Path) -> None:
    weights = []
    for fused in (False, True):
        plan = method_plan(tmp_path / str(fused), {**FINETUNE, "targets": ["unet"], "lr_te1": None,
                                                   "lr_te2": None, "fused_backward": fused},
                           optimizer=ADAFACTOR, training__total_steps=3, sample__prompts=[])
        result, models = run_plan(plan, progress=False)
        weights.append(_state(models.pipe.unet))
        assert result.steps == 3
    plain, fused_ = weights
    for key in plain:
        torch.testing.assert_close(fused_[key], plain[key], rtol=1e-5, atol=1e-6)


def test_block_lr_zero_blocks_stay_and_others_train(tmp_path: Path) -> None:
    block_lr = [0.0] * 10 + [1e-3] * 13  # embeddings and input blocks frozen
    plan = method_plan(tmp_path, {**FINETUNE, "targets": ["unet"], "lr_te1": None, "lr_te2": None,
                                  "block_lr": block_lr}, training__total_steps=2, sample__prompts=[])
    before = _state(build_tiny_pipeline(0).unet)
    _, models = run_plan(plan, progress=False)
    after = _state(models.pipe.unet)
    frozen = ("conv_in.weight", "time_embedding.linear_1.weight", "down_blocks.1.attentions.0.proj_in.weight")
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    moved = ("mid_block.attentions.0.proj_in.weight", "conv_out.weight", "up_blocks.0.resnets.0.conv1.weight")
    for key in moved:
        assert not torch.equal(before[key], after[key]), key


@pytest.fixture(scope="module")
def sdxl_unet() -> Any:
    config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def test_block_lr_groups_on_the_full_size_sdxl_unet(sdxl_unet: Any) -> None:
    blocks = finetune.unet_blocks(sdxl_unet)
    assert [len(blocks[b]) for b in range(23)] == SDXL_BLOCK_TENSORS
    assert sum(len(named) for named in blocks.values()) == len(list(sdxl_unet.parameters()))
    assert sum(p.numel() for named in blocks.values() for _, p in named) == 2_567_463_684
    assert [name for name, _ in blocks[15]][-1] == "up_blocks.0.upsamplers.0.conv.bias"
    sdxl_unet.requires_grad_(True)
    block_lr = [1e-5 * (b + 1) for b in range(23)]
    block_lr[3] = block_lr[11] = 0.0
    groups = finetune.unet_groups(sdxl_unet, block_lr, 1e-4)
    assert [g["block"] for g in groups] == [b for b in range(23) if b not in (3, 11)]
    kept = [n for b, n in enumerate(SDXL_BLOCK_TENSORS) if b not in (3, 11)]
    assert [len(g["params"]) for g in groups] == kept
    assert all(g["lr"] == block_lr[g["block"]] for g in groups)
    frozen = [p for b in (3, 11) for _, p in blocks[b]]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for g in groups for p in g["params"])
