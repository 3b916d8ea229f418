"""The built-in tiny model: an SDXL-architecture pipeline with tiny widths, built in code from a seed.

Same topology as SDXL base (three UNet levels, two resnets per level, no attention at level 0, a
four-level VAE, two CLIP text encoders of different widths, `text_time` size conditioning), so the
same training, saving and loading code paths run on it as on the real model.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TE1_HIDDEN = 32
TE2_HIDDEN = 48  # must differ from TE1_HIDDEN: single-file loading tells the encoders apart by width
TIME_DIM = 8
MAX_TOKENS = 77

UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, norm_num_groups=8, use_linear_projection=True,
    layers_per_block=2, block_out_channels=(16, 32, 64), attention_head_dim=(1, 2, 4),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
    addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=6 * TIME_DIM + TE2_HIDDEN,
)

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 32, 32), layers_per_block=2, sample_size=64, scaling_factor=0.13025,
)


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's byte-level BPE, in CLIP's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A 514-token byte-level CLIP tokenizer (no merges); ids 0-511 match real CLIP."""
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=[], pad_token=pad_token,
        model_max_length=MAX_TOKENS,
    )


def text_config(tokenizer: CLIPTokenizer, hidden: int, layers: int = 2, ff_mult: int = 2,
                **extra: int) -> CLIPTextConfig:
    """A small CLIP text encoder's config over `tokenizer` (the tiny model's: 2 layers, 2× feed-forward)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ff_mult * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )


def tiny_components() -> dict[str, Any]:
    """The tiny pipeline's models (initialised on the current default device) and tokenizers."""
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(pad_token="!")
    return {
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "text_encoder": CLIPTextModel(text_config(tokenizer, TE1_HIDDEN)),
        "text_encoder_2": CLIPTextModelWithProjection(
            text_config(tokenizer_2, TE2_HIDDEN, projection_dim=TE2_HIDDEN)
        ),
        "unet": UNet2DConditionModel(**UNET_CONFIG),
        "vae": AutoencoderKL(**VAE_CONFIG),
    }


def build_tiny_pipeline(seed: int) -> StableDiffusionXLPipeline:
    """Build the tiny SDXL pipeline; the same seed always gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = tiny_components()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(**components, scheduler=scheduler, add_watermarker=False)


def parameter_counts(pipe: StableDiffusionXLPipeline) -> dict[str, int]:
    """Parameter counts per component, keyed as in schema/models/*.json."""
    parts = {"unet": pipe.unet, "vae": pipe.vae, "te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
    return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
