"""Hardware profiles: one JSON file per device class under ``schema/profiles/``.

Pure standard library (plus jsonschema, loaded lazily by :func:`validate_profile_file`). Never imports torch:
``probe_auto`` asks ``nvidia-smi`` instead.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
PROFILES_DIR = SCHEMA_DIR / "profiles"
PROFILE_SCHEMA = SCHEMA_DIR / "profile.schema.json"

MiB = 1 << 20

NVIDIA_SMI_QUERY = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]


class ProfileError(Exception):
    """An unknown or unreadable profile. ``suggestions`` holds close profile names, best first."""

    def __init__(self, message: str, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestions: list[str] = list(suggestions or [])


@dataclass(frozen=True)
class Profile:
    """One hardware class. Byte counts are exact integers; TFLOP/s are dense peaks."""

    name: str
    display_name: str
    vendor: str
    device: str  # "cuda" | "cpu"
    tier: str  # "consumer" | "datacenter" | "cpu"
    architecture: str
    compute_capability: str | None
    vram_total_bytes: int
    vram_usable_bytes: int
    bf16: bool
    fp16: bool
    fp8: bool
    tf32: bool
    bf16_tflops: float | None
    fp16_tflops: float | None
    fp32_tflops: float
    memory_bandwidth_gbps: float
    spills_to_system_ram: bool
    efficiency: float
    context_bytes: int
    allocator_overhead: float
    match: tuple[str, ...]
    notes: tuple[str, ...]
    # bytes a CPU run's process holds beyond its tensors, by model family (sdxlc/plan/host_memory.py)
    runtime_state: tuple[tuple[str, int], ...] = ()

    def runtime_state_for(self, family: str) -> int:
        """The measured runtime state of a model family on this profile (0 where none is measured)."""
        return dict(self.runtime_state).get(family, 0)

    @property
    def title(self) -> str:
        """Human-readable card name (same as ``display_name``)."""
        return self.display_name

    @property
    def usable_vram_bytes(self) -> int:
        """Same as ``vram_usable_bytes``: the memory budget a training process can really get."""
        return self.vram_usable_bytes

    def tflops_for(self, dtype: str) -> float:
        """Dense TFLOP/s for a compute dtype (``fp32``, ``bf16`` or ``fp16``); falls back to fp32."""
        value: float | None = None
        if dtype == "bf16":
            value = self.bf16_tflops
        elif dtype == "fp16":
            value = self.fp16_tflops
        return value if value else self.fp32_tflops

    def to_hardware(self) -> dict[str, Any]:
        """The plan's ``hardware`` object for this profile."""
        return {
            "profile": self.name,
            "name": self.display_name,
            "device": self.device,
            "vram_bytes": self.vram_usable_bytes,
            "bf16": self.bf16,
            "fp16": self.fp16,
        }


def _from_dict(data: dict[str, Any]) -> Profile:
    def opt_float(key: str) -> float | None:
        value = data[key]
        return None if value is None else float(value)

    return Profile(
        name=str(data["name"]),
        display_name=str(data["display_name"]),
        vendor=str(data["vendor"]),
        device=str(data["device"]),
        tier=str(data["tier"]),
        architecture=str(data["architecture"]),
        compute_capability=None if data["compute_capability"] is None else str(data["compute_capability"]),
        vram_total_bytes=int(data["vram_total_bytes"]),
        vram_usable_bytes=int(data["vram_usable_bytes"]),
        bf16=bool(data["bf16"]),
        fp16=bool(data["fp16"]),
        fp8=bool(data["fp8"]),
        tf32=bool(data["tf32"]),
        bf16_tflops=opt_float("bf16_tflops"),
        fp16_tflops=opt_float("fp16_tflops"),
        fp32_tflops=float(data["fp32_tflops"]),
        memory_bandwidth_gbps=float(data["memory_bandwidth_gbps"]),
        spills_to_system_ram=bool(data["spills_to_system_ram"]),
        efficiency=float(data["efficiency"]),
        context_bytes=int(data["context_bytes"]),
        allocator_overhead=float(data["allocator_overhead"]),
        match=tuple(str(m) for m in data["match"]),
        notes=tuple(str(n) for n in data["notes"]),
        runtime_state=tuple((str(k), int(v)) for k, v in sorted(data.get("runtime_state", {}).items())),
    )


def list_profiles() -> list[str]:
    """Names of every profile file, sorted."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def suggest(name: str, names: list[str] | None = None) -> list[str]:
    """Profile names close to ``name``: prefix matches first, then difflib's close matches."""
    import difflib  # loaded for a misspelt profile name only

    pool = list_profiles() if names is None else names
    key = name.strip().lower()
    prefixed = [n for n in pool if key and n.startswith(key)]
    close = difflib.get_close_matches(key, pool, n=3, cutoff=0.5)
    out: list[str] = []
    for n in prefixed + close:
        if n not in out:
            out.append(n)
    return out[:3]


@cache
def load_profile(name: str) -> Profile:
    """Load ``schema/profiles/<name>.json``. Raises :class:`ProfileError` with did-you-mean suggestions."""
    names = list_profiles()
    if name not in names:
        raise ProfileError(f"unknown hardware profile {name!r}", suggest(name, names))
    path = PROFILES_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return _from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"cannot read hardware profile {path}: {exc}") from exc


def validate_profile_file(path: Path) -> list[str]:
    """Schema errors of one profile file (empty when valid); also checks name == file stem."""
    import jsonschema

    schema = json.loads(PROFILE_SCHEMA.read_text(encoding="utf-8"))
    data = json.loads(path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)
    ]
    if isinstance(data, dict) and data.get("name") != path.stem:
        errors.append(f"name {data.get('name')!r} differs from the file name {path.stem!r}")
    return errors


def _matches(fragment: str, gpu_name: str) -> bool:
    pattern = r"(?<![A-Za-z0-9])" + re.escape(fragment) + r"(?![A-Za-z0-9])"
    return re.search(pattern, gpu_name, flags=re.IGNORECASE) is not None


def match_gpu(gpu_name: str, memory_mib: int) -> Profile:
    """The profile closest to a GPU as nvidia-smi names it (e.g. ``NVIDIA GeForce RTX 3060``, 12288).

    Name fragments decide first (the longest matching fragment wins, so ``RTX 4060 Ti`` beats ``RTX 4060``);
    among equal matches, or when no name matches, the closest total memory wins.
    """
    memory = memory_mib * MiB
    cuda = [load_profile(n) for n in list_profiles()]
    cuda = [p for p in cuda if p.device == "cuda"]
    scored: list[tuple[int, Profile]] = []
    for p in cuda:
        best = max((len(m) for m in p.match if _matches(m, gpu_name)), default=0)
        if best:
            scored.append((best, p))
    if scored:
        top = max(s for s, _ in scored)
        candidates = [p for s, p in scored if s == top]
    else:
        consumer = re.search(r"geforce|rtx|gtx|titan", gpu_name, flags=re.IGNORECASE) is not None
        candidates = [p for p in cuda if (p.tier == "consumer") == consumer] or cuda
    return min(candidates, key=lambda p: (abs(p.vram_total_bytes - memory), p.name))


def probe_auto(nvidia_smi: str = "nvidia-smi", timeout: float = 10.0) -> Profile | str:
    """Detect GPU 0 with nvidia-smi and map it to a profile; a message string when that is not possible."""
    import shutil

    exe = shutil.which(nvidia_smi)
    if exe is None:
        return "nvidia-smi is not on PATH (no NVIDIA driver installed?)"
    try:
        proc = subprocess.run(
            [exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"running nvidia-smi failed: {exc}"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        why = detail[0] if detail else f"exit status {proc.returncode}"
        return f"nvidia-smi found no usable GPU: {why}"
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        return "nvidia-smi listed no GPU"
    name, _, mem = lines[0].rpartition(",")
    try:
        memory_mib = int(float(mem.strip()))
    except ValueError:
        return f"cannot read the nvidia-smi output {lines[0]!r}"
    return match_gpu(name.strip(), memory_mib)
