"""Latents per second from the disk cache vs encoding them again with the VAE:
`python bench/cache_speed.py [--count N] [--full] [--full-count N]`.

Tiny model: the built-in tiny SDXL's VAE at 64x64. With `--full`: a full-size SDXL VAE (the shipped
config, random weights) at 1024x1024, fp32 on the CPU. Each encoded latent (mean and log-variance, as
runtime/train/loop.py caches them) is stored through `runtime.cache.DiskCache`, then read back entry by entry.
Disk reads come from the page cache (the entries were just written); only the VAE forward pass is
timed for encoding, not decoding the image file.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from runtime.cache.store import DiskCache


def measure(vae: torch.nn.Module, size: int, count: int, root: Path, label: str) -> None:
    disk = DiskCache(root / label)
    generator = torch.Generator().manual_seed(0)
    keys = [f"{n:064x}" for n in range(count)]
    started = time.perf_counter()
    with torch.no_grad():
        for key in keys:
            pixels = torch.rand((1, 3, size, size), generator=generator) * 2 - 1
            parameters = vae.encode(pixels).latent_dist.parameters[0]  # type: ignore[operator]
            disk.store("latents", key, {"parameters": parameters})
    encoded = time.perf_counter() - started
    # the encode pass above also stored the entries: time the VAE alone once more on one image
    pixels = torch.rand((1, 3, size, size), generator=generator) * 2 - 1
    with torch.no_grad():
        started = time.perf_counter()
        vae.encode(pixels)  # type: ignore[operator]
        one = time.perf_counter() - started
    started = time.perf_counter()
    loaded = [disk.load("latents", key) for key in keys]
    read = time.perf_counter() - started
    assert all(entry is not None for entry in loaded)
    shape = tuple(loaded[0]["parameters"].shape)  # type: ignore[index]
    nbytes = loaded[0]["parameters"].numel() * 4  # type: ignore[index]
    print(f"{label}: {size}x{size}, {count} latents {shape} ({nbytes / 1024:.0f} KiB each)")
    print(f"  encode+store: {count / encoded:10.2f} latents/s  ({encoded / count * 1000:.1f} ms each; "
          f"VAE alone {one * 1000:.1f} ms)")
    print(f"  disk read:    {count / read:10.2f} latents/s  ({read / count * 1000:.3f} ms each)")
    print(f"  speed-up:     {encoded / read:10.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200, help="latents on the tiny model")
    parser.add_argument("--full", action="store_true", help="also a full-size SDXL VAE at 1024x1024")
    parser.add_argument("--full-count", type=int, default=3)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()} | "
          f"{torch.get_num_threads()} torch threads | torch {torch.__version__}")
    from runtime.model.tiny import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as root:
        vae = build_tiny_pipeline(0).vae.eval()
        measure(vae, 64, args.count, Path(root), "tiny")
        if args.full:
            from diffusers import AutoencoderKL

            config = Path(__file__).resolve().parent.parent / "sdxlc" / "data" / "sdxl_config" / "vae"
            torch.manual_seed(0)
            full = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config))).eval()
            measure(full, 1024, args.full_count, Path(root), "sdxl-vae")


if __name__ == "__main__":
    main()
