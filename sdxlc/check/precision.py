"""Checks on the compute dtype against the machine: bf16 on a CPU without native bf16 instructions.

The CPU's flags are read from /proc/cpuinfo in pure Python (the compiler never imports torch). What the
planning machine has must not change the plan: the finding is a diagnostic (shown by `sdxlc check`,
`plan` and `run`, never stored in the plan), so two machines compile the same recipe to the same hash.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers

CPUINFO = Path("/proc/cpuinfo")
# x86: AVX512-BF16 dot products, AMX tiles; aarch64 (`Features`): the Armv8.6 BF16 instructions.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str] | None:
    """The CPU's feature flags (x86 `flags`, aarch64 `Features`); None where they cannot be read."""
    return _flags(cpuinfo or CPUINFO)


@lru_cache(maxsize=4)  # read once per process: `fit auto` and the editor compile again and again
def _flags(cpuinfo: Path) -> frozenset[str] | None:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags) if flags else None


def native_bf16(cpuinfo: Path | None = None) -> bool | None:
    """True when this CPU computes bf16 natively, False when it does not, None when unknown."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & NATIVE_BF16_FLAGS)


def bf16_on_slow_cpu(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """bf16 on the CPU runs everywhere, but without native instructions torch emulates it: slow."""
    if plan["hardware"]["device"] != "cpu" or plan["precision"]["mixed"] != "bf16":
        return []
    if native_bf16() is not False:  # native, or flags unknown (not Linux): nothing to say
        return []
    return [
        make(
            "SDX0526",
            "this CPU has no native bf16 instructions (no avx512_bf16 or amx_bf16 flag): "
            "bf16 will run, but emulated and slower than fp32",
            layers.span("precision.mixed"),
            help="use fp32 on this machine, or run the plan on a CPU with AVX512-BF16 or AMX",
        )
    ]


PRECISION_CHECKS = (bf16_on_slow_cpu,)
