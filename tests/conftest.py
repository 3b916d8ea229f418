"""Shared fixtures for the runtime tests: offline environment, the tiny pipeline, plan dicts."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdxlc.resolve.datasets import DATASET_DEFAULTS

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
# The tiny model gains nothing from more threads, and OpenMP workers that spin-wait make timings erratic
# whenever other processes share the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "recipes" / "data" / "quickstart"

PlanFactory = Callable[..., dict[str, Any]]


def _base_plan(out: Path) -> dict[str, Any]:
    return {
        "plan_version": 1, "sdxlc_version": "0.1.0", "plan_hash": "0" * 64,
        "sources": [{"file": "tests/conftest.py", "sha256": "0" * 64}],
        "model": {"source": "tiny", "kind": "tiny", "vae": None, "prediction": "epsilon", "tiny_seed": 0,
                  "base_model_version": "sdxl_base_v1-0", "files": []},
        "hardware": {"profile": "cpu", "device": "cpu", "name": "CPU", "vram_bytes": 0, "bf16": False,
                     "fp16": False},
        "method": {"kind": "lora", "targets": ["unet"], "block_lr": None, "lr_te1": None, "lr_te2": None,
                   "rank": 4, "alpha": 4, "modules": ["attention"],
                   "unet_modules": ["to_q", "to_k", "to_v", "to_out.0"], "te_modules": [], "dropout": 0.0,
                   "init_from": None, "unsaved_blocks": [], "adapter": "lora", "dora": False, "factor": None},
        "precision": {"mixed": "fp32", "vae_fp32": True, "vae_slicing": False, "base_fp8": False,
                      "offload_text_encoders": False, "offload_vae": False},
        "data": {
            "datasets": [{"path": str(QUICKSTART), "repeat": 1, "caption_ext": ".txt", "shuffle": False,
                          "keep_tokens": 0, "caption_dropout": 0.0, "flip": False, "regularization": False,
                          "images": 0, **{k: v for k, v in DATASET_DEFAULTS.items() if k not in (
                              "repeat", "caption_ext", "shuffle", "keep_tokens", "caption_dropout", "flip",
                              "regularization")}, "source": "folder", "samples": 0,
                          "masks_missing": 0, "control_pairs": 0, "control_missing": 0}],
            "resolution": 64, "buckets": {"enabled": True, "min": 32, "max": 128, "step": 16,
                                                "no_upscale": False, "table": []},
            "cache": {"text_encoder": False, "latents": False, "to_disk": False, "dir": str(out / "cache")},
            "loader": {"workers": 0, "prefetch": 2, "pin_memory": False},
            "images": 0, "samples_per_epoch": 0, "held_out": 0,
        },
        "optimizer": {"name": "adamw", "lr": 1e-3, "args": {}, "max_grad_norm": 1.0},
        "schedule": {"name": "constant", "warmup_steps": 0},
        "training": {"batch_size": 2, "accumulate": 1, "effective_batch": 2, "batches_per_epoch": 1,
                     "steps_per_epoch": 1, "epochs": 1, "total_steps": 4, "gradient_checkpointing": False,
                     "channels_last": False,
                     "seed": 42, "noise_offset": 0.0, "snr_gamma": None, "timestep_min": 0,
                     "timestep_max": 1000, "multires_iterations": 0, "multires_discount": 0.3,
                     "input_perturbation": 0.0, "debiased": False, "zero_terminal_snr": False, "loss": "l2",
                     "huber_c": 0.1, "ema": None},
        "save": {"every_steps": None, "keep": 2, "dtype": "fp32", "private": False, "relative_to": str(out)},
        "sample": {"prompts": ["a red circle on a blue background"], "every_steps": None, "width": 64,
                   "height": 64, "steps": 4, "cfg": 5.0, "seed": 1, "before": False, "controls": []},
        "validate": None,
        "output": {"dir": str(out), "name": "tinylora"},
        "log": {"every_steps": 10, "tensorboard": False, "trackers": []},
        "launch": {"processes": 1, "machines": 1, "world_size": 1, "strategy": "ddp",
                   "distributed_type": "NO",
                   "backend": "gloo", "mixed_precision": "no", "batch_per_process": 2, "batches_per_step": 1,
                   "global_batch": 2, "main_process_port": 29500, "deepspeed": None, "fsdp": None},
        "estimate": {"vram_bytes": 0, "vram_breakdown": {}, "budget_bytes": 0, "fits": True,
                     "verdict": "fits", "step_flops": 0.0, "seconds_per_step": 0.0, "total_seconds": 0.0},
        "provenance": {},
        "warnings": [],
    }


def _apply(plan: dict[str, Any], overrides: dict[str, Any]) -> None:
    """`section={...}` merges into a section; `a__b__c=v` sets one nested value."""
    for name, value in overrides.items():
        if "__" in name:
            *path, leaf = name.split("__")
            node = plan
            for part in path:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[leaf] = value
        elif isinstance(value, dict) and isinstance(plan.get(name), dict):
            plan[name].update(value)
        else:
            plan[name] = value


def _derive(plan: dict[str, Any]) -> None:
    """Fill the counts the compiler derives from the data (images, bucket table, batches, epochs)."""
    from sdxlc.plan import buckets as bk
    from sdxlc.resolve.datasets import scan_dataset

    data, training = plan["data"], plan["training"]
    b = data["buckets"]
    table = bk.make_buckets(data["resolution"], b["min"], b["max"], b["step"]) if b["enabled"] else [
        (data["resolution"], data["resolution"])]
    top = b["max"] if b["enabled"] else data["resolution"]
    sample_buckets: list[tuple[int, int]] = []
    images: dict[tuple[int, int], int] = {}
    for index, dataset in enumerate(data["datasets"]):
        items = scan_dataset(Path(dataset["path"]), dataset["caption_ext"], index).items
        dataset["images"] = len(items)
        dataset["samples"] = len(items) * dataset["repeat"]
        for item in items:
            bucket = bk.place(item.width, item.height, table, b["no_upscale"], data["resolution"], b["step"],
                              top)
            images[bucket] = images.get(bucket, 0) + 1
            sample_buckets += [bucket] * dataset["repeat"]
    counts = {bucket: sample_buckets.count(bucket) for bucket in images}
    b["table"] = [{"width": w, "height": h, "images": images[(w, h)],
                   "batches": bk.batch_count([counts[(w, h)]], training["batch_size"])}
                  for (w, h) in sorted(images, key=lambda wh: (wh[0] / wh[1], wh[0]))]
    data["images"] = sum(images.values())
    data["samples_per_epoch"] = len(sample_buckets)
    _manifest(plan)
    training["batches_per_epoch"] = len(bk.epoch_batches(sample_buckets, training["batch_size"], 0, 0))
    training["effective_batch"] = training["batch_size"] * training["accumulate"]
    plan["launch"].update(batch_per_process=training["batch_size"], batches_per_step=training["accumulate"],
                          global_batch=training["effective_batch"])
    training["steps_per_epoch"] = max(1, training["batches_per_epoch"] // training["accumulate"])
    training["epochs"] = math.ceil(training["total_steps"] / training["steps_per_epoch"])


def _manifest(plan: dict[str, Any]) -> None:
    """The sample manifest, as the compiler writes it: named by the plan, kept in the cache folder."""
    from sdxlc.plan import buckets as bk
    from sdxlc.plan.manifest import store
    from sdxlc.resolve.balance import epoch_counts
    from sdxlc.resolve.data import manifest
    from sdxlc.resolve.datasets import scan_dataset
    from sdxlc.resolve.optimizers import optimizer_table

    data = plan["data"]
    items = [item for index, dataset in enumerate(data["datasets"])
             for item in scan_dataset(Path(dataset["path"]), dataset["caption_ext"], index).items]
    made = manifest(items, epoch_counts(items, data["datasets"]).counts, bk.plan_placement(data))
    store(made, data["cache"]["dir"])
    data["manifest"] = made.summary()
    plan["optimizer"]["class"] = optimizer_table()[plan["optimizer"]["name"]]["class"]


def build_plan(out: Path, **overrides: Any) -> dict[str, Any]:
    """A valid plan for the quickstart data, writing under `out`."""
    import jsonschema

    from sdxlc.plan.contract import plan_hash
    from sdxlc.plan.schemas import load_schema

    plan = _base_plan(Path(out))
    _apply(plan, copy.deepcopy(overrides))
    _derive(plan)
    plan["plan_hash"] = plan_hash(plan)
    jsonschema.validate(plan, load_schema("plan"), cls=jsonschema.Draft202012Validator)
    return plan


@pytest.fixture(scope="session")
def make_plan() -> PlanFactory:
    """`make_plan(out_dir, **overrides)`: see build_plan."""
    return build_plan


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline (seed 0) saved as a diffusers folder."""
    from runtime.model.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_pipeline(0).save_pretrained(folder)
    return folder


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen", action="store_true", help="rewrite the expected files of tests/cases")


@pytest.fixture
def regen(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen"))
