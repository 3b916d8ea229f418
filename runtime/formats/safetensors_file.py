"""Deterministic safetensors files: the same tensors and metadata give the same bytes in every process.

`safetensors.torch.save_file` writes its JSON header from a hash map, so the order of the metadata and
tensor entries (and with it the file's bytes) changes from one process to the next. Artifacts written
here follow the format exactly (an 8-byte little-endian header length, a JSON header with `__metadata__`
and each tensor's dtype, shape and data offsets, padded with spaces to 8 bytes, then the raw
little-endian data) with every key sorted, so a plan run twice writes byte-identical files that any
safetensors reader (ComfyUI, A1111, diffusers) loads.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The whole file: header and data, keys in sorted order."""
    header, names = _header(tensors, metadata)
    return header + b"".join(_raw(_plain(tensors[name])) for name in names)


def write(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write the file at `path` one tensor at a time, so a 7 GB checkpoint is never copied whole in memory
    (callers make it atomic: `sdxlc.plan.files.atomic_path`)."""
    header, names = _header(tensors, metadata)
    with open(path, "wb") as handle:
        handle.write(header)
        for name in names:
            handle.write(_raw(_plain(tensors[name])))


def _header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[bytes, list[str]]:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    names, offset = sorted(tensors), 0
    for name in names:
        tensor = tensors[name]
        if tensor.dtype not in DTYPES:
            raise ValueError(f"cannot store {name}: dtype {tensor.dtype} has no safetensors name")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, names


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous()


def _raw(tensor: torch.Tensor) -> bytes:
    if tensor.numel() == 0:
        return b""
    data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    if sys.byteorder == "big" and tensor.element_size() > 1:  # safetensors is little-endian
        width = tensor.element_size()
        data = b"".join(data[i:i + width][::-1] for i in range(0, len(data), width))
    return data


def addnet_hash(path: str | Path) -> str:
    """sha256 of a safetensors file's tensor data, its header left out: kohya's `sshs_model_hash` and the
    hash A1111 shows for a LoRA (its first 12 hex digits), unchanged when only the metadata changes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
