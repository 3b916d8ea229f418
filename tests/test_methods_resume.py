"""Exact resume for every training method: a run resumed from its checkpoint ends with the very weights
of one never stopped (the checkpoint holds what runtime/methods/registry.py names trainable)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from methods_common import METHODS, method_plan
from safetensors.torch import load_file

from runtime.train import checkpoint
from runtime.train.run import execute

ADAFACTOR = {"name": "adafactor", "lr": 1e-3, "max_grad_norm": 0.0,
             "args": {"relative_step": False, "scale_parameter": False, "warmup_init": False}}
CASES: dict[str, dict[str, Any]] = {
    "finetune": {"method": {**METHODS["finetune"], "targets": ["unet", "te2"], "lr_te1": None},
                 "optimizer": {"name": "adamw", "lr": 1e-3}},
    "finetune-fused": {"method": {**METHODS["finetune"], "targets": ["unet"], "lr_te1": None, "lr_te2": None,
                                  "fused_backward": True}, "optimizer": ADAFACTOR},
    "embedding": {"method": METHODS["embedding"], "optimizer": {"name": "adamw", "lr": 0.1}},
    "te-lora": {"method": {**METHODS["lora"], "dropout": 0.1}, "optimizer": {"name": "adamw", "lr": 1e-2}},
}


def _plan(out: Path, case: str) -> dict[str, Any]:
    spec = CASES[case]
    return method_plan(out, spec["method"], optimizer=spec["optimizer"], sample__prompts=[],
                       training__total_steps=4, save={"every_steps": 2, "keep": 3, "dtype": "fp32"},
                       data__datasets__0__flip=True, schedule={"name": "cosine", "warmup_steps": 1})


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_bit_exact(tmp_path: Path, case: str) -> None:
    whole = _plan(tmp_path / "whole", case)
    execute(whole, progress=False)
    saved = checkpoint.load_state(tmp_path / "whole" / "checkpoints" / "step-000002")
    if case != "te-lora":
        assert any(k.startswith("text_encoder") for k in saved.trainable) == (case != "finetune-fused")
    resumed = _plan(tmp_path / "resumed", case)
    shutil.copytree(saved.folder, tmp_path / "resumed" / "checkpoints" / saved.folder.name)
    execute(resumed, progress=False, resume=checkpoint.find(tmp_path / "resumed", "latest"))
    a = load_file(str(tmp_path / "whole" / "tinylora.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "tinylora.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
