"""Two processes on the CPU (gloo) with parameters outside the DDP-wrapped UNet: a text-encoder LoRA and
an embedding (which trains nothing in the UNet). Their gradients are averaged by the loop's all-reduce,
so the ranks agree and equal one process accumulating the same global batch (see test_launch_train.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from methods_common import METHODS, method_plan

STEPS = 3


def plan_for(out: Path, world: int, kind: str) -> dict[str, Any]:
    launch = {"processes": world, "world_size": world, "distributed_type": "MULTI_GPU" if world > 1 else "NO"}
    training = {"batch_size": 2, "accumulate": 2 // world, "total_steps": STEPS}
    plan = method_plan(out, METHODS[kind], training=training, sample={"prompts": []}, launch=launch,
                       optimizer__lr=1e-2)
    plan["launch"].update(batches_per_step=2, global_batch=4)
    from sdxlc.plan.contract import plan_hash

    plan["plan_hash"] = plan_hash(plan)
    return plan


def trained(models: Any) -> dict[str, torch.Tensor]:
    from runtime.methods.base import trainable_state

    return {name: p.detach().cpu().clone() for name, p in trainable_state(models.pipe).items()}


def rank_main(out: str, kind: str) -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from runtime.train.run import run_plan

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    state = PartialState(cpu=True)
    _, models = run_plan(plan_for(Path(out) / "run2", 2, kind), progress=False)
    torch.save(trained(models), Path(out) / f"rank{state.process_index}.pt")


@pytest.mark.parametrize("kind", ["lora", "embedding"])
def test_two_processes_equal_one_process(tmp_path: Path, kind: str) -> None:
    from accelerate import debug_launcher
    from accelerate.state import AcceleratorState, GradientState

    from runtime.train.run import run_plan

    debug_launcher(rank_main, args=(str(tmp_path), kind), num_processes=2)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys() and any(k.startswith("text_encoder") for k in rank0)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    _, models = run_plan(plan_for(tmp_path / "run1", 1, kind), progress=False)
    for name, value in trained(models).items():
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-6, msg=name)
