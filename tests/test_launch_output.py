"""A run over two processes prints its summary, its warnings and its results once: every process runs
`sdxlc run <output>/plan.json`, and only rank 0 reports (RANK, set by `accelerate launch` in each process).

The two processes are started by `accelerate.debug_launcher` (gloo, CPU) as in tests/test_launch_train.py;
each sets RANK as the launcher would and runs the command line on the written plan for one step.
"""

from __future__ import annotations

from pathlib import Path

from conftest import QUICKSTART

from sdxlc.cli.launch import main_process
from sdxlc.pipeline import compile_recipe
from sdxlc.plan import contract

RECIPE = (f'sdx 1\nmodel tiny\nprofile cpu\ndata "{QUICKSTART}"\nresolution 64 buckets 64..128 step 32\n'
          "lora rank 4\nbatch 2\nsteps 1\nprocesses 2\nlog every 1 no tensorboard\noutput \"out\"\n")


def rank_main(folder: str) -> None:
    """One rank: `sdxlc run PLAN.json`, its output kept in rank<N>.txt."""
    import os

    import torch.distributed as dist
    from accelerate.state import AcceleratorState, GradientState
    from click.testing import CliRunner

    from sdxlc.cli.main import main

    AcceleratorState._reset_state(reset_partial_state=True)  # the parent's single-process state
    GradientState._reset_state()
    rank = dist.get_rank()
    os.environ["RANK"] = str(rank)  # what `accelerate launch` sets in every process it starts
    result = CliRunner().invoke(main, ["run", str(Path(folder) / "out" / "plan.json")])
    Path(folder, f"rank{rank}.txt").write_text(f"exit {result.exit_code}\n{result.output}", encoding="utf-8")


def test_only_rank_0_reports(tmp_path: Path) -> None:
    from accelerate import debug_launcher

    (tmp_path / "r.sdx").write_text(RECIPE, encoding="utf-8")
    compiled = compile_recipe(tmp_path / "r.sdx")
    assert compiled.plan is not None and compiled.manifest is not None, compiled.diagnostics
    plan = compiled.plan
    assert plan["warnings"], "the quickstart images are upscaled at resolution 64: the plan warns"
    contract.write(tmp_path / "out" / "plan.json", plan, compiled.manifest)

    debug_launcher(rank_main, args=(str(tmp_path),), num_processes=2)
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text(encoding="utf-8") for r in (0, 1))
    assert rank0.startswith("exit 0") and rank1.startswith("exit 0"), rank0 + rank1
    both = rank0 + rank1
    assert both.count(f"plan {plan['plan_hash'][:12]}:") == 1  # the summary
    assert both.count("estimate: ") == 1
    assert both.count("running plan ") == 1
    assert both.count("done in ") == 1
    for warning in plan["warnings"]:
        assert both.count(f"warning: {warning}") == 1
    assert "warning:" not in rank1 and "plan " not in rank1


def test_main_process_is_rank_0() -> None:
    assert main_process({})  # not launched: the only process
    assert main_process({"RANK": "0", "LOCAL_RANK": "0"})
    assert not main_process({"RANK": "1", "LOCAL_RANK": "1"})
    assert not main_process({"RANK": "2", "LOCAL_RANK": "0"})  # rank 0 of the second machine
    assert not main_process({"LOCAL_RANK": "1"})
