"""Artifacts are written as deterministic safetensors: the same tensors and metadata, the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from runtime.formats.safetensors_file import to_bytes, write

SCRIPT = (
    "import sys, torch\nfrom runtime.formats.safetensors_file import write\n"
    "g = torch.Generator().manual_seed(0)\n"
    "tensors = {f'lora_unet_{i}.alpha': torch.randn(4, 8, generator=g).half() for i in range(30)}\n"
    "write(sys.argv[1], tensors, {f'ss_key_{i}': str(i) for i in range(40)})\n"
)


def test_every_dtype_round_trips_through_the_reference_reader(tmp_path: Path) -> None:
    tensors = {"b": torch.randn(3, 4, dtype=torch.bfloat16), "a": torch.arange(5), "h": torch.randn(2).half(),
               "f": torch.randn(2, 2), "empty": torch.zeros(0), "mask": torch.tensor([True, False]),
               "strided": torch.randn(4, 6).t()}
    write(tmp_path / "x.safetensors", tensors, {"ss_network_dim": "4", "modelspec.title": "x"})
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert safe_open(tmp_path / "x.safetensors", "pt").metadata() == {"ss_network_dim": "4",
                                                                        "modelspec.title": "x"}
    assert (tmp_path / "x.safetensors").read_bytes() == to_bytes(tensors, {"modelspec.title": "x",
                                                                          "ss_network_dim": "4"})


def test_two_processes_write_identical_bytes(tmp_path: Path) -> None:
    files = []
    for seed in ("1", "2"):
        files.append(tmp_path / f"{seed}.safetensors")
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", SCRIPT, str(files[-1])], check=True, env=env)
    assert files[0].read_bytes() == files[1].read_bytes()
