"""Hardware profiles: files, loading, did-you-mean, nvidia-smi probing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sdxlc.resolve.profiles import (
    PROFILES_DIR,
    Profile,
    ProfileError,
    list_profiles,
    load_profile,
    match_gpu,
    probe_auto,
    validate_profile_file,
)

GiB = 1 << 30

REQUIRED = [
    "rtx3070-8gb", "rtx4060-8gb", "rtx3060-12gb", "rtx2060-12gb", "rtx4060ti-16gb", "rtx4080-16gb",
    "rtx3090-24gb", "rtx4090-24gb", "rtx5090-32gb", "t4-16gb", "v100-16gb", "v100-32gb", "a10g-24gb",
    "l4-24gb", "a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb", "cpu",
]


def test_required_profiles_exist() -> None:
    names = list_profiles()
    for name in REQUIRED:
        assert name in names


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_profile_validates(path: Path) -> None:
    assert validate_profile_file(path) == []


@pytest.mark.parametrize("name", list_profiles())
def test_profile_values_are_sane(name: str) -> None:
    p = load_profile(name)
    assert isinstance(p, Profile)
    assert 0 < p.vram_usable_bytes < p.vram_total_bytes
    assert p.vram_total_bytes - p.vram_usable_bytes <= 2 * GiB
    if p.device == "cuda":
        assert p.compute_capability is not None and p.context_bytes >= 512 << 20
        assert p.fp16 and p.fp16_tflops and p.fp16_tflops > p.fp32_tflops
        assert p.bf16 == (p.bf16_tflops is not None) == (float(p.compute_capability) >= 8.0)
        assert p.spills_to_system_ram == (p.tier == "consumer")
        assert p.match
    else:
        assert p.compute_capability is None and p.context_bytes == 0 and not p.bf16
        assert 0.1 <= p.fp32_tflops <= 0.2


def test_memory_classes() -> None:
    assert load_profile("rtx3060-12gb").vram_total_bytes == 12 * GiB
    assert load_profile("rtx3070-8gb").vram_total_bytes == 8 * GiB
    assert load_profile("cpu").vram_total_bytes == 16 * GiB
    assert load_profile("h200-141gb").vram_total_bytes > 140 * GiB


def test_aliases() -> None:
    p = load_profile("rtx4090-24gb")
    assert p.title == p.display_name and p.usable_vram_bytes == p.vram_usable_bytes


def test_hardware_object() -> None:
    hw = load_profile("rtx3060-12gb").to_hardware()
    assert hw == {"profile": "rtx3060-12gb", "name": "NVIDIA GeForce RTX 3060 12 GB", "device": "cuda",
                  "vram_bytes": load_profile("rtx3060-12gb").vram_usable_bytes, "bf16": True, "fp16": True}


def test_tflops_for_falls_back_to_fp32() -> None:
    t4 = load_profile("t4-16gb")
    assert t4.tflops_for("bf16") == t4.fp32_tflops
    assert t4.tflops_for("fp16") == 65.0


def test_unknown_profile_suggests() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("rtx309")
    assert info.value.suggestions[0] == "rtx3090-24gb"
    assert "rtx309" in str(info.value)
    with pytest.raises(ProfileError) as info:
        load_profile("a100-40")
    assert "a100-40gb" in info.value.suggestions


@pytest.mark.parametrize(
    ("gpu", "mib", "expected"),
    [
        ("NVIDIA GeForce RTX 3060", 12288, "rtx3060-12gb"),
        ("NVIDIA GeForce RTX 4060 Ti", 16380, "rtx4060ti-16gb"),
        ("NVIDIA GeForce RTX 4060", 8188, "rtx4060-8gb"),
        ("NVIDIA GeForce RTX 4090", 24564, "rtx4090-24gb"),
        ("NVIDIA A100-SXM4-80GB", 81920, "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", 40960, "a100-40gb"),
        ("Tesla V100-SXM2-32GB", 32510, "v100-32gb"),
        ("Tesla T4", 15360, "t4-16gb"),
        ("NVIDIA L4", 23034, "l4-24gb"),
        ("NVIDIA H100 80GB HBM3", 81559, "h100-80gb"),
        ("NVIDIA H200", 143771, "h200-141gb"),
        ("NVIDIA L40S", 46068, "a100-40gb"),  # unknown datacenter card: closest memory, not "L4"
        ("NVIDIA GeForce RTX 3050", 8192, "rtx3070-8gb"),  # unknown GeForce: closest consumer memory
    ],
)
def test_match_gpu(gpu: str, mib: int, expected: str) -> None:
    assert match_gpu(gpu, mib).name == expected


def _fake_smi(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_probe_auto_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = probe_auto()
    assert isinstance(result, str)
    assert "nvidia-smi" in result and "PATH" in result


def test_probe_auto_with_fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(tmp_path, 'echo "NVIDIA GeForce RTX 3090, 24576"\necho "NVIDIA GeForce RTX 3090, 24576"')
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    result = probe_auto()
    assert isinstance(result, Profile) and result.name == "rtx3090-24gb"


def test_probe_auto_failing_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."
    _fake_smi(tmp_path, f'echo "{message}" >&2\nexit 9')
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    result = probe_auto()
    assert isinstance(result, str) and "could not communicate" in result
