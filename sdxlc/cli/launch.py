"""Launch a plan over several processes: the accelerate config, the `accelerate launch` command, and
`relaunch`, which runs `sdxlc run` again under that command (docs/SCALE.md).

Users never write an accelerate config: it is generated from the plan's `launch` section, written under
the output folder and printed with the command, which can be copied into a cluster job script.

On the CPU several processes train over gloo: the config says MULTI_GPU and the runtime creates
`Accelerator(cpu=True)` (`--cpu --num_processes N` would silently start one process).

No torch import: this runs before the training stack is loaded.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Set by torchrun / accelerate launch in every process they start, and by relaunch for its child.
INSIDE_LAUNCH = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SDXLC_LAUNCHED")
# What a multi-machine launch reads from the environment of each machine (docs/SCALE.md).
MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT = "MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT"


class LaunchError(Exception):
    """The environment lacks what a multi-machine launch needs."""


def world_size(plan: Mapping[str, Any]) -> int:
    launch = plan["launch"]
    return int(launch["processes"]) * int(launch["machines"])


def inside_launch(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by a launcher (so it must train, not launch again)."""
    env = os.environ if env is None else env
    return any(name in env for name in INSIDE_LAUNCH)


def main_process(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process reports for the run (its summary, the plan's warnings, where the results
    are): the only process, or rank 0 of a launched run. torchrun and `accelerate launch` set RANK (the
    global rank) in every process they start; LOCAL_RANK stands in where a launcher sets only that."""
    env = os.environ if env is None else env
    rank = env.get("RANK", env.get("LOCAL_RANK", "0")).strip()
    return rank in ("", "0")


def accelerate_config(plan: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config `accelerate launch --config_file` reads, from the plan's `launch` section.

    Machine rank, the main machine's address and the port come from MACHINE_RANK, MAIN_PROCESS_IP and
    MAIN_PROCESS_PORT when set (a multi-machine run needs the first two on every machine).
    """
    env = os.environ if env is None else env
    launch = plan["launch"]
    machines = int(launch["machines"])
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": launch["distributed_type"],
        "num_processes": world_size(plan),
        "num_machines": machines,
        "machine_rank": int(env.get(MACHINE_RANK, "0")),
        "main_process_port": int(env.get(MAIN_PROCESS_PORT, str(launch["main_process_port"]))),
        "mixed_precision": launch["mixed_precision"],
        "use_cpu": False,  # a CPU run of N processes is MULTI_GPU + Accelerator(cpu=True), never --cpu
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "debug": False,
    }
    if machines > 1:
        if MAIN_PROCESS_IP not in env or MACHINE_RANK not in env:
            raise LaunchError(f"a run over {machines} machines needs {MACHINE_RANK} (0 on the main machine) "
                              f"and {MAIN_PROCESS_IP} (its address) in the environment of every machine")
        config["main_process_ip"] = env[MAIN_PROCESS_IP]
    if launch["deepspeed"] is not None:
        deepspeed = launch["deepspeed"]
        config["deepspeed_config"] = {
            "zero_stage": deepspeed["zero_optimization"]["stage"],
            "gradient_accumulation_steps": deepspeed["gradient_accumulation_steps"],
            "gradient_clipping": deepspeed["gradient_clipping"],
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": False,
        }
    if launch["fsdp"] is not None:
        fsdp = launch["fsdp"]
        config["fsdp_config"] = {
            "fsdp_version": fsdp["fsdp_version"],
            "fsdp_sharding_strategy": fsdp["sharding_strategy"],
            "fsdp_auto_wrap_policy": fsdp["auto_wrap_policy"].upper(),
            "fsdp_min_num_params": fsdp["min_num_params"],
            "fsdp_backward_prefetch": fsdp["backward_prefetch"],
            "fsdp_state_dict_type": fsdp["state_dict_type"],
            "fsdp_use_orig_params": fsdp["use_orig_params"],
            "fsdp_sync_module_states": fsdp["sync_module_states"],
            "fsdp_cpu_ram_efficient_loading": fsdp["cpu_ram_efficient_loading"],
            "fsdp_offload_params": fsdp["cpu_offload"],
        }
    return config


def config_path(plan: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Path:
    """Where the config of this machine is written: one file per machine rank (a shared output folder
    must not have machines overwrite each other's rank)."""
    env = os.environ if env is None else env
    rank = int(env.get(MACHINE_RANK, "0"))
    name = "accelerate.json" if int(plan["launch"]["machines"]) == 1 else f"accelerate-machine{rank}.json"
    return Path(plan["output"]["dir"]) / "launch" / name


def launch_command(plan: Mapping[str, Any], config_file: Path, argv: Sequence[str]) -> list[str]:
    """`accelerate launch --config_file CONFIG -m sdxlc.cli ARGV`, with this interpreter, so the command
    runs in the same environment whether or not `accelerate` is on PATH. `argv` are the arguments of
    `sdxlc` (`run recipe.sdx --set …`)."""
    del plan  # everything the launcher needs is in the config file
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "sdxlc.cli", *argv]


def write_config(plan: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Path:
    path = config_path(plan, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(accelerate_config(plan, env), indent=2) + "\n", encoding="utf-8")
    return path


def relaunch(plan: Mapping[str, Any], argv: Sequence[str], echo: Any = None) -> int | None:
    """Run `sdxlc ARGV` again under `accelerate launch` when the plan wants several processes and this
    process is not already one of them: write the config, print the command, run it and return its exit
    code. None when this process should train itself (one process, or already launched).

    `echo` prints a line (stderr by default).
    """
    if world_size(plan) <= 1 or inside_launch():
        return None
    say = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        path = write_config(plan)
    except LaunchError as exc:
        say(f"error: {exc}")
        return 2
    command = launch_command(plan, path, argv)
    launch = plan["launch"]
    say(f"launching {world_size(plan)} processes ({launch['strategy']}, {launch['machines']} machine(s)) "
        f"with the accelerate config {path}:")
    say("  " + shlex.join(command))
    env = {**os.environ, "SDXLC_LAUNCHED": "1"}
    try:
        return subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:
        return 130
