"""A training image's mask and control image, cut exactly like the image.

The compiler paired each image with its companions (sdxlc/resolve/companions.py) and recorded their paths
and sha256 in the sample manifest; here they are read, checked against those hashes and put through the
image's own geometry (`runtime.train.data.place`: resize to cover the bucket, crop, flip), so a mask or a
control image can never disagree with its image by a pixel.

- mask: (1, H, W) float32 in [0, 1] (white = train, black = ignore); from a mask file (its luminance), the
  image's own alpha channel (`mask alpha`), or all 1 for an image without one (it trains unmasked);
- control: (3, H, W) float32 in [-1, 1], the pixels' range (kohya's LLLite training feeds its
  conditioning images in [-1, 1]).

A companion that is gone or does not decode is a RunError naming its path (the batch maker then skips the
image like any undecodable image); one whose bytes changed since planning stops the run (InputChanged).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
from PIL import Image, ImageOps

from runtime import InputChanged, RunError
from runtime.train.images import place, to_rgb
from sdxlc.plan import buckets as bk
from sdxlc.plan.manifest import ManifestImage

ALPHA = "alpha"
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def mask_identity(item: ManifestImage) -> str:
    """What the image's mask is made from, for the latent cache key: "" (none), its file's sha256, or
    `alpha` (the image's own bytes, which the key holds already)."""
    return item.mask_sha256 if item.mask not in ("", ALPHA) else item.mask


def load_mask(item: ManifestImage, crop: bk.Crop, bucket: bk.Bucket, flip: bool,
              decoded: Image.Image | None = None) -> torch.Tensor:
    """The image's loss mask in its training geometry: (1, H, W) in [0, 1]; all 1 without a mask. `mask
    alpha` takes the channel from `decoded`, the image as the batch already decoded it, when given."""
    if not item.mask:
        return torch.ones(1, bucket[1], bucket[0])
    if item.mask == ALPHA:
        image = decoded if decoded is not None else _decode(_read(item.path, item.sha256, item.path, "image"),
                                                            item.path, "image")
        alpha = _alpha(image)
        if alpha is None:
            return torch.ones(1, bucket[1], bucket[0])
        gray = alpha
    else:
        gray = to_rgb(_decode(_read(item.mask, item.mask_sha256, item.path, "mask"), item.mask, "mask"))
        gray = gray.convert("L")
    return _tensor(place(gray, crop, bucket, flip)) / 255.0


def load_control(item: ManifestImage, crop: bk.Crop, bucket: bk.Bucket, flip: bool) -> torch.Tensor:
    """The image's control image in its training geometry: (3, H, W) in [-1, 1]."""
    if not item.control:
        raise RunError(f"{item.path} has no control image (the plan paired none)")
    raw = _read(item.control, item.control_sha256, item.path, "control image")
    image = to_rgb(_decode(raw, item.control, "control image"))
    return _tensor(place(image, crop, bucket, flip)) / 127.5 - 1.0


def load(item: ManifestImage, crop: bk.Crop, bucket: bk.Bucket, flip: bool, mask: bool, control: bool,
         decoded: Image.Image | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(mask, control) of one sample, each only when the run has it (`decoded`: see load_mask)."""
    return (load_mask(item, crop, bucket, flip, decoded) if mask else None,
            load_control(item, crop, bucket, flip) if control else None)


def _read(path: str, sha256: str, image: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise RunError(f"cannot read {what} {path} of {image}: {exc.strerror or type(exc).__name__}") from exc
    if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
        raise InputChanged([f"{path}: its bytes changed since it was planned ({what} of {image})"])
    return raw


def _decode(raw: bytes, path: str, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)
    except _DECODE_ERRORS as exc:
        raise RunError(f"cannot read {what} {path}: {exc}") from exc


def _alpha(image: Image.Image) -> Image.Image | None:
    """The alpha channel (palette transparency too), or None when the image has none."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBa", "La"):
        image = image.convert("RGBA")
    return image.getchannel("A") if "A" in image.getbands() else None


def _tensor(image: Image.Image) -> torch.Tensor:
    """(C, H, W) float32 of a placed image's 8-bit values."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
