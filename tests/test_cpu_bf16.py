"""bf16 on the CPU: the mission line compiles for `profile cpu` and trains through `sdxlc run`, its UNet
forward under bf16 autocast; `full bf16` runs there too; fp16 stays refused; the warning for a CPU
without native bf16 depends on /proc/cpuinfo but never reaches the plan."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from sdxlc.check import precision
from sdxlc.cli.main import main
from sdxlc.pipeline import compile_recipe

ROOT = Path(__file__).resolve().parent.parent
MISSION = "lora rank 8 on unet bf16 cache te; lr 1e-4 lion; block_lr 0, 1e-4 x9, 5e-5 x3, 1e-4 x9, 1e-4"


def recipe(tmp_path: Path, method: str, steps: int = 3) -> Path:
    (tmp_path / "data").symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    path = tmp_path / "cpu.sdx"
    path.write_text(f'sdx 1\nmodel tiny\nprofile cpu\ndata "data" caption .txt\nresolution 64 no buckets\n'
                    f'{method}\nbatch 2\nsteps {steps}\nseed 7\noutput "out"\n')
    return path


Seen = list[tuple[bool, torch.dtype, torch.dtype]]


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """accelerate keeps one process-wide state: a run in bf16 after an fp32 run in the same test process
    (never the case for `sdxlc run`, one run per process) needs it cleared, before and after."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def autocast_seen() -> Iterator[Seen]:
    """(autocast on, its dtype, output dtype) of every UNet attention projection's forward."""
    seen: Seen = []

    def hook(module: torch.nn.Module, _args: Any, out: Any) -> None:
        if type(module).__name__ == "Linear" and getattr(module, "_sdxlc_probe", False):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


def _probe_unet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mark the UNet's base `to_q` layers once the model is placed, so the hook records only them."""
    from runtime.model import load

    placed = load.place

    def place(pipe: Any, plan: dict[str, Any], device: torch.device) -> tuple[torch.dtype, torch.dtype]:
        dtypes = placed(pipe, plan, device)
        for name, module in pipe.unet.named_modules():
            if name.endswith("to_q"):
                module._sdxlc_probe = True
        return dtypes

    monkeypatch.setattr(load, "place", place)


def test_mission_line_trains_in_bf16_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 autocast_seen: Seen) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _probe_unet(monkeypatch)
    path = recipe(tmp_path, MISSION)
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["precision"]["mixed"] == "bf16" and plan["hardware"]["device"] == "cpu"
    assert plan["optimizer"]["class"] == "bitsandbytes.optim.Lion"
    assert plan["launch"]["mixed_precision"] == "bf16"
    losses = [float(x) for x in re.findall(r"loss (\S+)", result.output)]
    assert losses and all(math.isfinite(x) for x in losses)
    # the forward really ran under CPU bf16 autocast, on bf16 frozen weights
    assert autocast_seen and all(seen == (True, torch.bfloat16, torch.bfloat16) for seen in autocast_seen)
    with safe_open(str(out / "cpu.safetensors"), "pt") as f:
        ups = {k: f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")}
    assert ups and any(bool(t.abs().sum() > 0) for t in ups.values())  # zero-initialised, so it trained


def test_full_bf16_fine_tune_runs_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = recipe(tmp_path, "finetune unet full bf16\nbf16\nlr 1e-4 adamw", steps=2)
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    losses = [float(x) for x in re.findall(r"loss (\S+)", result.output)]
    assert losses and all(math.isfinite(x) for x in losses)
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["method"]["full_bf16"] is True and plan["precision"]["mixed"] == "bf16"
    assert (tmp_path / "out" / "cpu.safetensors").is_file()


def test_fp16_on_the_cpu_is_refused_naming_bf16(tmp_path: Path) -> None:
    compiled = compile_recipe(recipe(tmp_path, "lora rank 4 fp16"))
    assert compiled.plan is None
    [error] = [d for d in compiled.errors if d.code == "SDX0524"]
    assert "fp16 is not supported" in error.message and "bf16" in (error.help or "")
    assert error.span is not None and error.span.line == 6


@pytest.mark.parametrize(("flags", "native"), [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile", True),
    ("flags\t\t: fpu sse2 avx2 amx_bf16", True),
    ("Features\t: fp asimd bf16 i8mm", True),
    ("flags\t\t: fpu sse2 avx2 fma", False),
    ("processor\t: 0", None),
])
def test_native_bf16_reads_cpuinfo_flags(tmp_path: Path, flags: str, native: bool | None) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\n{flags}\n\nprocessor\t: 1\n{flags}\n")
    assert precision.native_bf16(info) is native
    assert precision.native_bf16(tmp_path / "missing") is None


def test_slow_bf16_warning_is_positioned_and_leaves_the_plan_alone(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = recipe(tmp_path, MISSION)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    native = compile_recipe(path)
    monkeypatch.setattr(precision, "CPUINFO", info)
    emulated = compile_recipe(path)
    assert native.plan is not None and emulated.plan is not None
    warnings = [d for d in emulated.diagnostics if d.code == "SDX0526"]
    assert len(warnings) == 1 and warnings[0].severity == "warning"
    assert warnings[0].span is not None and (warnings[0].span.line, warnings[0].span.column) == (6, 21)
    if precision.native_bf16() is not False:
        assert not [d for d in native.diagnostics if d.code == "SDX0526"]
    assert emulated.plan == native.plan  # the planning machine never changes the plan or its hash
    (tmp_path / "fp32").mkdir()
    fp32 = compile_recipe(recipe(tmp_path / "fp32", "lora rank 8"))
    assert fp32.plan is not None and not [d for d in fp32.diagnostics if d.code == "SDX0526"]
