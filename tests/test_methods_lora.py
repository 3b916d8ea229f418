"""LoRA on the text encoders and on ff/conv layers: kohya keys and metadata, diffusers loading (every key
consumed, the image changes), and continuing from a LoRA file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from methods_common import LORA_TE, method_plan
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file

from runtime import RunError
from runtime.gen.sample import render
from runtime.methods import lora
from runtime.model.tiny import build_tiny_pipeline
from runtime.train.run import run_plan, setup_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any, Any]:
    out = tmp_path_factory.mktemp("te-lora")
    plan = method_plan(out, LORA_TE, optimizer__lr=2e-2, training__total_steps=3,
                       training={"noise_offset": 0.05, "snr_gamma": 5.0, "loss": "huber"},
                       optimizer={"args": {"weight_decay": 0.01}})
    result, models = run_plan(plan, progress=False)
    return plan, result, models


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def modules_of(tensors: dict[str, torch.Tensor], prefix: str) -> set[str]:
    return {k.removesuffix(".lora_down.weight") for k in tensors if k.startswith(prefix)
            and k.endswith(".lora_down.weight")}


def test_te_and_conv_keys_and_metadata(trained) -> None:  # type: ignore[no-untyped-def]
    plan, result, _ = trained
    tensors, meta = read(result.lora_path)
    te1, te2 = modules_of(tensors, "lora_te1_"), modules_of(tensors, "lora_te2_")
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in te1
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2" in te2
    assert len(te1) == len(te2) == 2 * 6  # two layers of q, k, v, out, fc1, fc2 in the tiny encoders
    unet = modules_of(tensors, "lora_unet_")
    assert {"lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_3_0_op",
            "lora_unet_output_blocks_2_2_conv", "lora_unet_input_blocks_4_0_skip_connection",
            "lora_unet_middle_block_1_transformer_blocks_0_ff_net_0_proj"} <= unet
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"].shape[1:] == (16, 3, 3)
    trained_b = tensors["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"]
    assert trained_b.abs().sum() > 0  # the text-encoder LoRA learned (its B starts at zero)
    assert meta["ss_network_args"] == '{"conv_dim": "4", "conv_alpha": "4"}'
    assert meta["ss_text_encoder_lr"] == "[0.001, 0.0005]"  # kohya's SDXL list: te1, te2
    assert meta["ss_network_train_unet_only"] == "False"
    noise_and_loss = (meta["ss_noise_offset"], meta["ss_min_snr_gamma"], meta["ss_loss_type"])
    assert noise_and_loss == ("0.05", "5.0", "huber")
    assert meta["ss_optimizer"] == "adamw(weight_decay=0.01)"
    for key in ("ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_ip_noise_gamma",
                "ss_debiased_estimation", "ss_zero_terminal_snr", "ss_huber_c"):
        assert key in meta
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_loads_in_diffusers_every_key_consumed(trained) -> None:  # type: ignore[no-untyped-def]
    plan, result, models = trained
    tensors, _ = read(result.lora_path)
    settings = {**plan["sample"], "steps": 3}
    prompt = plan["sample"]["prompts"][0]
    pipe = build_tiny_pipeline(plan["model"]["tiny_seed"])
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe, settings, prompt, output_type="np")
    pipe.load_lora_weights(str(result.lora_path))
    for part, prefix in ((pipe.unet, "lora_unet_"), (pipe.text_encoder, "lora_te1_"),
                         (pipe.text_encoder_2, "lora_te2_")):
        layers = [m for m in part.modules() if isinstance(m, LoraLayer)]
        assert len(layers) == len(modules_of(tensors, prefix)), prefix
    loaded = render(pipe, settings, prompt, output_type="np")
    models.pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(loaded, render(models.pipe, settings, prompt, output_type="np"), atol=1e-4)
    assert np.abs(loaded - base).mean() > 1e-3


def test_text_encoder_lora_alone_changes_the_image(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan, result, _ = trained
    tensors, meta = read(result.lora_path)
    te_only = tmp_path / "te.safetensors"
    save_file({k: v for k, v in tensors.items() if k.startswith("lora_te")}, str(te_only), metadata=meta)
    settings, prompt = {**plan["sample"], "steps": 3}, plan["sample"]["prompts"][0]
    pipe = build_tiny_pipeline(plan["model"]["tiny_seed"])
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe, settings, prompt, output_type="np")
    pipe.load_lora_weights(str(te_only))
    assert not any(isinstance(m, LoraLayer) for m in pipe.unet.modules())
    assert np.abs(render(pipe, settings, prompt, output_type="np") - base).mean() > 1e-4


def test_continue_from_a_lora_file(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, result, _ = trained
    tensors, _ = read(result.lora_path)
    plan = method_plan(tmp_path, {**LORA_TE, "init_from": str(result.lora_path)})
    started = lora.kohya_state_dict(setup_model(plan).pipe, torch.float32)
    assert started.keys() == tensors.keys()
    assert all(torch.equal(started[k], tensors[k].float()) for k in tensors)
    smaller = method_plan(tmp_path, {**LORA_TE, "init_from": str(result.lora_path), "modules": ["attention"],
                                     "unet_modules": ["to_q"], "te_modules": ["q_proj"]})
    with pytest.raises(RunError, match="does not fit the plan's LoRA"):
        setup_model(smaller)
