"""Train `tiny-shapes`, the small pretrained SDXL-architecture base model the quickstart starts from.

It draws coloured shapes on coloured backgrounds ("a red circle on a blue background"): the VAE is
trained as an autoencoder on them, then the UNet and both text encoders together, to predict the noise
of SDXL's training schedule (scaled-linear betas 0.00085..0.012 over 1000 steps, as the runtime trains)
from the captions. Everything is drawn and initialised from one seed, so the same command gives the same
model. About 25 minutes on one busy CPU core:

    python recipes/models/train_tiny_base.py [--out recipes/models/tiny-shapes] [--seed 0]

The folder is a diffusers SDXL pipeline in fp16 (a few MB): `model "models/tiny-shapes"` in a recipe.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from make_quickstart import COLOURS, SHAPES, article, draw_shape  # noqa: E402

from runtime.model.tiny import text_config, tiny_tokenizer  # noqa: E402

SIZE = 64  # pixels; the VAE downsamples 8×, so the UNet sees 8×8 latents
TE1_HIDDEN, TE2_HIDDEN, TIME_DIM, MAX_TOKENS = 32, 48, 8, 77

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=SIZE // 8, in_channels=4, out_channels=4, norm_num_groups=16, use_linear_projection=True,
    layers_per_block=2, block_out_channels=(32, 64, 80), attention_head_dim=(2, 4, 5),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 1), cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
    addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=6 * TIME_DIM + TE2_HIDDEN,
)
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 48, 48), layers_per_block=1, sample_size=SIZE,
)
PREVIEW = ("a red circle on a blue background", "a green square on a yellow background",
           "a white triangle on a black background", "a yellow circle on a purple background",
           "an orange square on a green background", "a blue triangle on a white background")


# ---- data ---------------------------------------------------------------------------------------


def draw(rng: random.Random) -> tuple[Image.Image, str]:
    """One filled shape, roughly centred, on a plain background, and its caption."""
    shape, background = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    colour = rng.choice([c for c in sorted(COLOURS) if c != background])
    image = Image.new("RGB", (SIZE, SIZE), COLOURS[background])
    side = rng.randint(SIZE * 9 // 20, SIZE * 7 // 10)
    left = (SIZE - side) // 2 + rng.randint(-SIZE // 10, SIZE // 10)
    top = (SIZE - side) // 2 + rng.randint(-SIZE // 10, SIZE // 10)
    draw_shape(ImageDraw.Draw(image), shape, (left, top, left + side, top + side), COLOURS[colour])
    return image, f"{article(colour)} {colour} {shape} on {article(background)} {background} background"


def stray_words(rng: random.Random) -> str:
    """A few made-up words, as a later prompt may add (`in sks style`): the model learns to draw the
    shape its caption names whatever follows it."""
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7)))
             for _ in range(rng.randint(1, 3))]
    return " ".join(["in", *words, "style"] if rng.random() < 0.5 else words)


def dataset(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`count` drawn examples as a uint8 (N, 3, H, W) tensor and their captions, a third of them followed
    by stray words."""
    rng = random.Random(seed)
    images, captions = [], []
    for _ in range(count):
        image, caption = draw(rng)
        images.append(np.asarray(image))
        captions.append(f"{caption} {stray_words(rng)}" if rng.random() < 1 / 3 else caption)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def batches(count: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch + 1, batch):
            yield order[start:start + batch]


def cosine(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---- models -------------------------------------------------------------------------------------


def scheduler() -> EulerDiscreteScheduler:
    """SDXL base's sampling scheduler."""
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", num_train_timesteps=1000, prediction_type="epsilon",
    )


def encode(te1: Any, te2: Any, ids1: torch.Tensor, ids2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the SDXL pipeline feeds the UNet: both encoders' penultimate hidden states side by side, and
    the second encoder's projected pooled output."""
    out1 = te1(ids1, output_hidden_states=True)
    out2 = te2(ids2, output_hidden_states=True)
    return torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1), out2.text_embeds


def tokens(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


# ---- training -----------------------------------------------------------------------------------


def train_vae(images: torch.Tensor, steps: int, seed: int, log: Any) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    order = batches(len(images), 16, torch.Generator().manual_seed(seed))
    started = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine(step, steps, 2e-3)
        x = to_unit(images[next(order)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-4 * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            seconds = time.monotonic() - started
            log(f"vae {step}/{steps} loss {loss.item():.4f} kl {kl.item():.3f} {seconds:.0f}s")
    vae.eval()
    return vae


@torch.no_grad()
def latents_of(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """The posterior means of every image (unscaled)."""
    chunks = [images[i:i + 256] for i in range(0, len(images), 256)]
    return torch.cat([vae.encode(to_unit(chunk)).latent_dist.mean for chunk in chunks])


def train_unet(
    latents: torch.Tensor, captions: list[str], tokenizers: tuple[CLIPTokenizer, CLIPTokenizer], steps: int,
    seed: int, log: Any,
) -> tuple[UNet2DConditionModel, CLIPTextModel, CLIPTextModelWithProjection]:
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    te1 = CLIPTextModel(text_config(tokenizers[0], TE1_HIDDEN, layers=3, ff_mult=4))
    te2 = CLIPTextModelWithProjection(
        text_config(tokenizers[1], TE2_HIDDEN, layers=3, ff_mult=4, projection_dim=TE2_HIDDEN)
    )
    models = torch.nn.ModuleList([unet, te1, te2])
    ema = copy.deepcopy(models).requires_grad_(False)
    optimizer = torch.optim.AdamW(models.parameters(), lr=1e-3, weight_decay=1e-2)
    noise = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, prediction_type="epsilon")
    alphas = noise.alphas_cumprod
    snr = alphas / (1 - alphas)
    ids1, ids2 = tokens(tokenizers[0], captions), tokens(tokenizers[1], captions)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 2)
    order = batches(len(latents), 32, generator)
    started = time.monotonic()
    running = 0.0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine(step, steps, 1e-3, warmup=200)
        index = next(order)
        x0 = latents[index]
        states, pooled = encode(te1, te2, ids1[index], ids2[index])
        keep = (torch.rand(len(index), generator=generator) > 0.1).float()  # empty prompt → zeros (SDXL)
        states, pooled = states * keep[:, None, None], pooled * keep[:, None]
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (len(index),), generator=generator)
        noisy = noise.add_noise(x0, eps, t)
        pred = unet(noisy, t, states, added_cond_kwargs={"text_embeds": pooled,
                                                         "time_ids": time_ids.expand(len(index), -1)}).sample
        weight = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5
        loss = (weight * F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, live in zip(ema.parameters(), models.parameters(), strict=True):
                shadow.lerp_(live, 1 - decay)
        running += loss.item()
        if step % 100 == 99 or step == steps - 1:
            log(f"unet {step + 1}/{steps} loss {running / (step % 100 + 1):.4f} "
                f"{time.monotonic() - started:.0f}s")
            running = 0.0
    unet_ema, te1_ema, te2_ema = ema
    return unet_ema.eval(), te1_ema.eval(), te2_ema.eval()


def preview(pipe: StableDiffusionXLPipeline, path: Path) -> None:
    """A grid of the PREVIEW prompts, each at two seeds, 4× enlarged."""
    images = []
    for seed in (1, 2):
        for prompt in PREVIEW:
            generator = torch.Generator("cpu").manual_seed(seed)
            images.append(pipe(prompt, width=SIZE, height=SIZE, num_inference_steps=20, guidance_scale=5.0,
                               generator=generator).images[0])
    sheet = Image.new("RGB", (len(PREVIEW) * SIZE, 2 * SIZE))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % len(PREVIEW)) * SIZE, (i // len(PREVIEW)) * SIZE))
    sheet.resize((sheet.width * 4, sheet.height * 4), Image.Resampling.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "tiny-shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--vae-steps", type=int, default=700)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--preview", type=Path, help="also write a grid of sample images here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {message}", flush=True)

    images, captions = dataset(args.images, args.seed)
    vae = train_vae(images, args.vae_steps, args.seed, log)
    latents = latents_of(vae, images)
    std = float(latents.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    log(f"latent std {std:.4f}: scaling factor {vae.config.scaling_factor}")
    tokenizers = (tiny_tokenizer(), tiny_tokenizer(pad_token="!"))
    unet, te1, te2 = train_unet(latents / std, captions, tokenizers, args.unet_steps, args.seed, log)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizers[0], tokenizer_2=tokenizers[1],
        unet=unet, scheduler=scheduler(), add_watermarker=False,
    )
    if args.preview:
        preview(pipe, args.preview)
        log(f"wrote {args.preview}")
    pipe.to(torch.float16)
    pipe.save_pretrained(args.out, safe_serialization=True)
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
