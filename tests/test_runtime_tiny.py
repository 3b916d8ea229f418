"""The built-in tiny model: SDXL topology, stable parameter counts, deterministic from its seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from runtime.methods import lora
from runtime.model.tiny import build_tiny_pipeline, parameter_counts, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MEASURED = {"unet": 2_102_564, "vae": 334_383, "te1": 36_064, "te2": 68_688}


CARD = ROOT / "schema" / "models" / "tiny.json"


def model_card() -> dict[str, Any]:
    return json.loads(CARD.read_text()) if CARD.is_file() else {}


def expected_counts() -> dict[str, int]:
    params = model_card().get("params")
    if not params:
        return MEASURED
    return {"unet": params["unet"], "vae": params["vae_encoder"] + params["vae_decoder"],
            "te1": params["te1"], "te2": params["te2"]}


def test_parameter_counts_match_the_model_card() -> None:
    pipe = build_tiny_pipeline(0)
    assert parameter_counts(pipe) == expected_counts() == MEASURED
    params = model_card().get("params", {})
    if "vae_encoder" in params:
        encoder = sum(p.numel() for m in (pipe.vae.encoder, pipe.vae.quant_conv) for p in m.parameters())
        assert encoder == params["vae_encoder"]


def test_lora_size_matches_the_model_card() -> None:
    per_rank = model_card().get("lora_params_per_rank", {}).get("unet")
    if per_rank is None:
        per_rank = {"to_q": 3712, "to_k": 4144, "to_v": 4144, "to_out.0": 3712}
    modules = ["to_q", "to_k", "to_v", "to_out.0"]
    pipe = build_tiny_pipeline(0)
    method = {"targets": ["unet"], "rank": 8, "alpha": 8, "dropout": 0.0, "unet_modules": modules}
    lora.add_lora(pipe.unet, method)
    trainable = sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad)
    assert trainable == 8 * sum(per_rank[m] for m in modules) == 125_696


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a, b, c = build_tiny_pipeline(3), build_tiny_pipeline(3), build_tiny_pipeline(4)
    pairs = zip(a.unet.state_dict().values(), b.unet.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)


def test_sdxl_topology() -> None:
    pipe = build_tiny_pipeline(0)
    config = pipe.unet.config
    assert config.layers_per_block == 2 and len(config.block_out_channels) == 3
    assert config.down_block_types[0] == "DownBlock2D" and config.addition_embed_type == "text_time"
    assert tuple(config.transformer_layers_per_block) == (1, 1, 2)
    assert pipe.text_encoder.config.hidden_size != pipe.text_encoder_2.config.hidden_size
    widths = pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size
    assert config.cross_attention_dim == sum(widths)
    assert len(pipe.vae.config.block_out_channels) == 4


def test_tokenizers_are_byte_level_clip() -> None:
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(pad_token="!")
    assert len(tokenizer) == 514
    assert tokenizer("a").input_ids == [512, 320, 513]  # bos, "a</w>" (same id as real CLIP), eos
    padded = tokenizer_2(["a"], padding="max_length", max_length=77).input_ids[0]
    assert len(padded) == 77 and padded[-1] == 0  # tokenizer_2 pads with "!" like SDXL's
