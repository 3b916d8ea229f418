"""bench/gpu_peaks.py: its CPU smoke path on the tiny model, and its CUDA bookkeeping with torch.cuda's
memory functions faked (the real CUDA measurements need a GPU)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import estimate_vs_exact as bench  # noqa: E402
import gpu_peaks  # noqa: E402

MiB = 1 << 20


def table_row(text: str, index: int) -> dict[str, str]:
    """Row `index` (1-based) of the markdown table, by column title."""
    lines = text.splitlines()
    header, row = (next(line for line in lines if line.startswith(start)).strip("| ").split(" | ")
                   for start in ("| # |", f"| {index} |"))
    return dict(zip(header, row, strict=True))


def test_cpu_smoke_run_writes_the_table_and_the_rows(tmp_path: Path) -> None:
    out = tmp_path / "results" / "peaks.md"
    gpu_peaks.main(["--device", "cpu", "--model", "tiny", "--method", "lora", "--method", "finetune",
                    "--limit", "1", "--steps", "1", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["meta"]["device"] == "cpu" and data["meta"]["profile"] == "cpu" and data["meta"]["steps"] == 1
    rows = data["rows"]
    # the first LoRA and fine-tune rows of the matrix, at 1/8 of the resolution and in fp32 on the CPU
    assert [r["config"] for r in rows] == [
        ["lora", 64, 1, True, "adamw", "fp32", "te+latents"],
        ["finetune", 128, 1, True, "adamw", "fp32", "te+latents"],
    ]
    for row in rows:
        assert row["status"] == "ok", row
        assert len(row["step_seconds"]) == 1 and row["seconds"] > 0
        assert len(row["losses"]) == 2 and all(math.isfinite(x) for x in row["losses"])  # warm-up + 1
        seen = {k: v for k, v in row["vram_breakdown"].items() if k not in bench.NOT_SEEN}
        assert row["est_peak"] == sum(seen.values()) > 0 and row["est_seconds"] > 0
        assert row["max_allocated"] is None and row["max_reserved"] is None and row["context"] is None
    text = out.read_text(encoding="utf-8")
    assert "2 of 2 rows ran" in text
    for index, row in enumerate(rows, 1):
        cells = table_row(text, index)
        assert (cells["method"], int(cells["px"]), cells["precision"]) == (*row["config"][:2], "fp32")
        assert cells["max alloc GiB"] == cells["max reserved GiB"] == cells["ctx MiB"] == "n/a"  # on the CPU
        measured = float(cells["s/step"])
        assert measured > 0 and measured == pytest.approx(row["seconds"], abs=1e-3)
        assert cells["status"] == "ok"


def test_cuda_without_a_gpu_exits_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "peaks.md"
    with pytest.raises(SystemExit) as exited:
        gpu_peaks.main(["--quick", "--out", str(out)])
    message = str(exited.value.code)
    assert "no CUDA device" in message and "--device cpu --model tiny" in message
    assert not out.exists()


def test_cuda_bookkeeping_with_torch_cuda_faked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CUDA-only branches (peaks per phase, setup peaks, context, the memory columns) on a tiny plan for
    # the H200 profile, torch.cuda's memory functions faked: accelerate runs the step on the CPU here.
    import torch

    allocated = itertools.count(1)  # every read of the allocated peak is higher than the one before
    fakes = {
        "init": lambda: None, "synchronize": lambda: None, "empty_cache": lambda: None,
        "reset_peak_memory_stats": lambda: None, "memory_stats": lambda: {"num_alloc_retries": 2},
        "max_memory_allocated": lambda: next(allocated) * MiB, "max_memory_reserved": lambda: 900 * MiB,
        "memory_reserved": lambda: 800 * MiB, "mem_get_info": lambda: (1000 * MiB, 2000 * MiB),
        "get_device_name": lambda *a: "Fake GPU",
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    config = ("lora", 128, 1, True, "adamw", "bf16", "te")  # the text encoders parked, the VAE encodes
    plan = bench.plan_for(config, tmp_path, model="model tiny")
    assert plan["hardware"]["device"] == "cuda"
    args = argparse.Namespace(profile="h200-141gb", device="cuda", model="tiny", steps=1, quick=False)
    meta = gpu_peaks.environment(args, 100 * MiB, "1.0")
    assert meta["gpu"] == "Fake GPU" and meta["context_at_init"] == (2000 - 1000 - 800 - 100) * MiB
    pipe = gpu_peaks.build_pristine("tiny", "cpu", 0)
    row = {"config": list(config), **gpu_peaks.analytic(plan, bench.NOT_SEEN),
           **gpu_peaks.measure_row(plan, pipe, 1, 100 * MiB)}
    assert row["status"] == "ok", row
    assert set(row["phase_peaks"]) == {"encode", "forward", "backward", "optimizer"}
    assert row["max_allocated"] == max(a for a, _ in row["phase_peaks"].values())
    assert row["peak_phase"] == "optimizer"  # the last phase read: the fake's highest
    assert row["max_reserved"] == row["setup_max_reserved"] == 900 * MiB and row["alloc_retries"] == 2
    assert row["context"] == (2000 - 1000 - 800 - 100) * MiB and row["setup_max_allocated"] is not None
    text = gpu_peaks.render([row], meta)
    cells = table_row(text, 1)
    assert (cells["max reserved GiB"], cells["ctx MiB"], cells["peak in"]) == ("0.88", "100", "optimizer")
    assert cells["res/alloc"] != "n/a" and cells["alloc err"][-1] == cells["res. err"][-1] == "%"
    assert "reserved/allocated median" in text and "Fake GPU" in text
