"""Content-addressed caches on disk: VAE latents and text-encoder outputs as safetensors files.

A latent's key hashes the image bytes, the bucket, the crop, the flip, the VAE's identity (its config
and a fingerprint of its weights) and the VAE dtype; a text entry's key hashes the processed caption
and the identities of both tokenizers and both encoders. A changed input changes the key, so a stale
entry is never read; identical inputs share entries, across recipes too. Entries are written to a
temporary file and moved into place (os.replace), so a crash never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sdxlc.plan import buckets as bk

KEY_VERSION = 1


@dataclass
class Counts:
    """How many entries a cache encoded and how many it reused (from disk)."""

    encoded: int = 0
    reused: int = 0

    def __str__(self) -> str:
        return f"{self.encoded} encoded, {self.reused} reused"


def fingerprint(module: torch.nn.Module, config: Any = None) -> str:
    """sha256 of a module's config and every tensor of its state (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    if config is not None:
        digest.update(json.dumps(_plain(config), sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8"))
    digest.update(f"{tokenizer.__class__.__name__}:{tokenizer.model_max_length}".encode())
    return digest.hexdigest()


def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def latent_key(image_hash: str, bucket: bk.Bucket, crop: bk.Crop, flip: bool, vae: str, dtype: str) -> str:
    return _key({
        "kind": "latent", "image": image_hash, "bucket": list(bucket),
        "crop": [crop.scaled_w, crop.scaled_h, crop.top, crop.left], "flip": flip, "vae": vae, "dtype": dtype,
    })


def text_key(caption: str, tokenizers: str, encoders: str) -> str:
    return _key({"kind": "text", "caption": caption, "tokenizers": tokenizers, "encoders": encoders})


def _key(fields: dict[str, Any]) -> str:
    text = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(config: Any) -> Any:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config) if hasattr(config, "items") else config


class DiskCache:
    """Entries under `<dir>/<kind>/<key[:2]>/<key>.safetensors`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when it is absent or unreadable (then it is encoded again)."""
        file = self.path(kind, key)
        if not file.is_file():
            return None
        try:
            tensors: dict[str, torch.Tensor] = load_file(str(file))
            return tensors
        except (OSError, ValueError, RuntimeError):  # safetensors raises on a damaged file
            return None

    def store(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        file = self.path(kind, key)
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=file.parent, prefix=".entry-", suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temp)
            os.replace(temp, file)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)


@dataclass
class CacheReport:
    latents: Counts
    text: Counts
    warnings: list[str]

    def lines(self) -> list[str]:
        return [f"latent cache: {self.latents}", f"text-encoder cache: {self.text}", *self.warnings]


def precompute(plan: dict[str, Any]) -> CacheReport:
    """Fill the disk caches the plan asks for (`sdxlc cache`): load the model and data, encode, report."""
    from runtime.model.load import setup_model
    from runtime.train import loop
    from runtime.train.data import setup_data

    loaded = setup_model(plan)
    data = setup_data(plan)
    conditioning = loop.Conditioning(loaded, data, plan["data"]["cache"])
    return CacheReport(conditioning.latent_counts, conditioning.text_counts, list(data.warnings))
