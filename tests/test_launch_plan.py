"""Multi-process plans: the recipe words, the per-process and global step arithmetic, the checks, the
per-GPU estimate and the accelerate config and command generated from the plan (docs/SCALE.md)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.train.data import rank_batches
from sdxlc.cli import launch
from sdxlc.pipeline import compile_recipe

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "data" / "quickstart"
HEAD = (f'sdx 1\nmodel tiny\ndata "{QUICKSTART}" repeat 2\n'
        "resolution 96 buckets 64..160 step 32\nlora rank 4\n")
SDXL = HEAD.replace("model tiny", 'model "stabilityai/stable-diffusion-xl-base-1.0"')


def compile_text(tmp_path: Path, text: str, *sets: str, profile: str | None = None) -> Any:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(text, encoding="utf-8")
    return compile_recipe(recipe, sets, profile)


def plan_of(tmp_path: Path, text: str, *sets: str, profile: str | None = None) -> dict[str, Any]:
    compiled = compile_text(tmp_path, text, *sets, profile=profile)
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    plan: dict[str, Any] = compiled.plan
    return plan


def codes(tmp_path: Path, text: str, *sets: str, profile: str | None = None) -> list[str]:
    return [d.code for d in compile_text(tmp_path, text, *sets, profile=profile).diagnostics]


# --- arithmetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("world", "accumulate"), [(1, 1), (2, 1), (2, 2), (3, 1), (4, 2), (5, 3)])
def test_steps_per_epoch_divide_the_batches_by_accumulate_times_processes(
    tmp_path: Path, world: int, accumulate: int
) -> None:
    plan = plan_of(tmp_path, HEAD + f"batch 2 accumulate {accumulate}\nepochs 3\nprocesses {world}\n")
    training, section = plan["training"], plan["launch"]
    assert training["batches_per_epoch"] == 12  # 24 samples in batches of 2, over all ranks
    per_epoch = math.ceil(12 / (accumulate * world))
    assert training["steps_per_epoch"] == per_epoch
    assert training["total_steps"] == 3 * per_epoch
    assert section["world_size"] == world
    assert section["batches_per_step"] == accumulate * world
    assert section["global_batch"] == training["effective_batch"] == 2 * accumulate * world
    assert section["batch_per_process"] == 2
    # what each rank runs is what the plan counted: its share of every epoch, in whole steps
    micro_steps = len(rank_batches([[i] for i in range(12)], 0, world))
    assert math.ceil(micro_steps / accumulate) == per_epoch


def test_steps_stay_optimizer_steps_and_the_epochs_follow(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, HEAD + "batch 2\nsteps 30\ngpus 4\n")
    assert plan["training"]["total_steps"] == 30
    assert plan["training"]["steps_per_epoch"] == 3
    assert plan["training"]["epochs"] == 10


def test_one_process_is_the_default_and_changes_nothing(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, HEAD + "batch 2\nsteps 30\n")
    assert plan["launch"] == {
        "processes": 1, "machines": 1, "world_size": 1, "strategy": "ddp", "distributed_type": "NO",
        "backend": "gloo", "mixed_precision": "no", "batch_per_process": 2, "batches_per_step": 1,
        "global_batch": 2, "main_process_port": 29500, "deepspeed": None, "fsdp": None,
    }
    assert plan["training"]["steps_per_epoch"] == 12


def test_machines_multiply_the_processes(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SDXL + "batch 1\nsteps 10\ngpus 8\nmachines 2\n", profile="a100-80gb")
    assert plan["launch"]["world_size"] == 16
    assert plan["launch"]["backend"] == "nccl"
    assert plan["launch"]["distributed_type"] == "MULTI_GPU"
    assert plan["launch"]["mixed_precision"] == "bf16"


def test_deepspeed_config_is_fully_decided(tmp_path: Path) -> None:
    text = SDXL + "batch 2 accumulate 3\nsteps 10\ngpus 4\nstrategy deepspeed-zero2\nclip 0.5\n"
    plan = plan_of(tmp_path, text, profile="a100-80gb")
    ds = plan["launch"]["deepspeed"]
    assert plan["launch"]["distributed_type"] == "DEEPSPEED"
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert (ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (3, 24)
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True}
    assert "auto" not in str(ds)
    assert plan["launch"]["fsdp"] is None


# --- checks --------------------------------------------------------------------------------------


def test_sharding_a_lora_is_a_warning(tmp_path: Path) -> None:
    for strategy in ("deepspeed-zero2", "fsdp"):
        found = codes(tmp_path, SDXL + f"steps 10\ngpus 2\nstrategy {strategy}\n", profile="a100-80gb")
        assert "SDX0560" in found


def test_cpu_processes_are_for_testing(tmp_path: Path) -> None:
    assert codes(tmp_path, HEAD + "steps 10\nprocesses 2\n") == ["SDX0561"]
    assert codes(tmp_path, HEAD + "steps 10\n") == []


def test_sharding_needs_cuda_and_machines_need_gpus(tmp_path: Path) -> None:
    assert "SDX0562" in codes(tmp_path, HEAD + "steps 10\nprocesses 2\nstrategy fsdp\n")
    assert "SDX0563" in codes(tmp_path, HEAD + "steps 10\nmachines 2\n")


def test_a_step_larger_than_the_epoch_is_a_warning(tmp_path: Path) -> None:
    assert "SDX0564" in codes(tmp_path, HEAD + "batch 4 accumulate 4\nsteps 10\nprocesses 2\n")


# --- estimate ------------------------------------------------------------------------------------


def test_zero2_and_fsdp_shard_the_per_gpu_memory(tmp_path: Path) -> None:
    def breakdown(strategy: str, gpus: int) -> dict[str, int]:
        plan = plan_of(tmp_path, SDXL + f"steps 10\ngpus {gpus}\nstrategy {strategy}\n", profile="a100-80gb")
        result: dict[str, int] = plan["estimate"]["vram_breakdown"]
        return result

    one, ddp = breakdown("ddp", 1), breakdown("ddp", 4)
    zero2, fsdp = breakdown("deepspeed-zero2", 4), breakdown("fsdp", 4)
    assert ddp["ddp_gradient_buckets"] == ddp["gradients"] == one["gradients"]
    assert zero2["optimizer_state_zero2_shard"] == -(-one["optimizer_state"] // 4)
    assert zero2["gradients_zero2_shard"] == -(-one["gradients"] // 4)
    assert zero2["unet_weights"] == one["unet_weights"] and "optimizer_state" not in zero2
    assert fsdp["unet_weights_fsdp_shard"] == -(-one["unet_weights"] // 4)


def test_time_per_step_adds_gradient_traffic(tmp_path: Path) -> None:
    def seconds(gpus: int) -> float:
        plan = plan_of(tmp_path, SDXL + f"steps 10\ngpus {gpus}\n", profile="a100-80gb")
        value: float = plan["estimate"]["seconds_per_step"]
        return value

    assert seconds(1) < seconds(2) < seconds(1) * 1.5


# --- the accelerate config and command ----------------------------------------------------------


def test_cpu_config_is_multi_gpu_with_gloo_never_cpu_flag(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, HEAD + "steps 4\nprocesses 2\n")
    config = launch.accelerate_config(plan, env={})
    assert config["distributed_type"] == "MULTI_GPU"
    assert config["num_processes"] == 2 and config["num_machines"] == 1
    assert config["use_cpu"] is False
    assert config["mixed_precision"] == "no"
    assert "deepspeed_config" not in config and "fsdp_config" not in config


def test_deepspeed_and_fsdp_go_through_accelerates_plugins(tmp_path: Path) -> None:
    ds = plan_of(tmp_path, SDXL + "steps 4\ngpus 4\nstrategy deepspeed-zero2\n", profile="a100-80gb")
    config = launch.accelerate_config(ds, env={})
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 2
    assert config["mixed_precision"] == "bf16"
    fsdp = plan_of(tmp_path, SDXL + "steps 4\ngpus 4\nstrategy fsdp\n", profile="a100-80gb")
    config = launch.accelerate_config(fsdp, env={})
    assert config["distributed_type"] == "FSDP"
    assert config["fsdp_config"]["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert config["fsdp_config"]["fsdp_auto_wrap_policy"] == "SIZE_BASED_WRAP"
    assert config["fsdp_config"]["fsdp_use_orig_params"] is True


def test_several_machines_read_rank_and_address_from_the_environment(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SDXL + "steps 4\ngpus 8\nmachines 2\n", profile="a100-80gb")
    with pytest.raises(launch.LaunchError, match="MAIN_PROCESS_IP"):
        launch.accelerate_config(plan, env={})
    env = {"MACHINE_RANK": "1", "MAIN_PROCESS_IP": "10.0.0.1", "MAIN_PROCESS_PORT": "29555"}
    config = launch.accelerate_config(plan, env=env)
    assert (config["machine_rank"], config["main_process_ip"], config["main_process_port"]) == (
        1, "10.0.0.1", 29555)
    assert config["num_processes"] == 16 and config["num_machines"] == 2
    assert launch.config_path(plan, env).name == "accelerate-machine1.json"


def test_launch_command_runs_sdxlc_under_accelerate(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, HEAD + "steps 4\nprocesses 2\n")
    command = launch.launch_command(plan, tmp_path / "a.json", ["run", "r.sdx", "--set", "training.seed=1"])
    assert command == [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(tmp_path / "a.json"), "-m", "sdxlc.cli",
                       "run", "r.sdx", "--set", "training.seed=1"]


def test_relaunch_does_nothing_for_one_process_or_inside_a_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single = plan_of(tmp_path, HEAD + "steps 4\n")
    assert launch.relaunch(single, ["run", "r.sdx"]) is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    double = plan_of(tmp_path, HEAD + "steps 4\nprocesses 2\n")
    assert launch.relaunch(double, ["run", "r.sdx"]) is None


def test_rank_batches_interleave_and_pad_from_the_start() -> None:
    batches = [[i] for i in range(5)]
    assert rank_batches(batches, 0, 2) == [[0], [2], [4]]
    assert rank_batches(batches, 1, 2) == [[1], [3], [0]]
    assert rank_batches(batches, 2, 3) == [[2], [0]]
    assert rank_batches(batches, 0, 1) == batches
