"""How a training image's pixels are made from its file: any mode to RGB, and the training geometry
(resize to cover the bucket, crop, flip). runtime/train/data.py cuts the image with these, and
runtime/train/companions.py its mask and control image, so the two can never disagree."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from sdxlc.plan import buckets as bk

WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels from any mode: alpha composited onto white; grayscale, palette, CMYK, 16-bit converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, WHITE + (255,))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def place(image: Image.Image, crop: bk.Crop, bucket: bk.Bucket, flip: bool) -> Image.Image:
    """The image's training geometry: resized to cover the bucket, cut at the crop, maybe mirrored. Its
    mask and control image go through the same (runtime/train/companions.py)."""
    image = image.resize((crop.scaled_w, crop.scaled_h), Image.Resampling.LANCZOS)
    image = image.crop((crop.left, crop.top, crop.left + bucket[0], crop.top + bucket[1]))
    return ImageOps.mirror(image) if flip else image
