"""execute(plan) end to end on the tiny model: files, kohya format, loading back, folder models."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from a1111_infotext import parse
from peft.tuners.lora import LoraLayer
from PIL import Image
from safetensors import safe_open

from runtime import RunError, execute
from runtime.gen.sample import render
from runtime.model.load import Models
from runtime.model.tiny import build_tiny_pipeline
from runtime.train.run import RunResult, run_plan
from sdxlc.plan.share import shareable

KOHYA_KEY = re.compile(r"lora_unet_(input_blocks_\d+|middle_block|output_blocks_\d+)_\d+_[a-z0-9_]+"
                       r"\.(lora_down\.weight|lora_up\.weight|alpha)")


@pytest.fixture(scope="module")
def trained(make_plan, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], RunResult, Models]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("run")
    plan = make_plan(out, training__total_steps=8, optimizer__lr=1e-2, save={"every_steps": 3, "keep": 1},
                     sample__every_steps=4)
    result, models = run_plan(plan, progress=False)
    return plan, result, models


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_run_writes_lora_plan_checkpoints_and_samples(trained) -> None:  # type: ignore[no-untyped-def]
    plan, result, _ = trained
    out = Path(plan["output"]["dir"])
    assert result.lora_path == out / "tinylora.safetensors" and result.lora_path.is_file()
    assert json.loads(result.plan_path.read_text()) == plan
    assert result.steps == 8 and np.isfinite(result.final_loss) and np.isfinite(result.average_loss)
    steps = sorted(p.name for p in out.glob("tinylora-step*.safetensors"))
    assert steps == ["tinylora-step000006.safetensors"]  # saved at 3 and 6, keep 1
    assert not list(out.glob(".*.tmp"))
    assert [p.name for p in result.samples] == ["tinylora-step000004-00.png", "tinylora-step000008-00.png"]
    for sample in result.samples:
        assert sample.parent == out / "samples"
        with Image.open(sample) as image:
            assert image.size == (64, 64)
            assert parse(image.text["parameters"])["Prompt"] == plan["sample"]["prompts"][0]
            assert json.loads(image.text["sdxlc"])["steps"] == plan["sample"]["steps"]


def test_lora_is_kohya_format_with_metadata(trained) -> None:  # type: ignore[no-untyped-def]
    plan, result, _ = trained
    tensors, meta = read_lora(result.lora_path)
    assert tensors and all(KOHYA_KEY.fullmatch(k) for k in tensors)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert tensors["lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.lora_up.weight"].shape[1] == 4
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_steps"] == "8"
    assert meta["sdxlc_plan_hash"] == plan["plan_hash"]
    assert json.loads(meta["sdxlc_plan"]) == shareable(plan)  # without local paths
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    _, step_meta = read_lora(Path(plan["output"]["dir"]) / "tinylora-step000006.safetensors")
    assert step_meta["ss_steps"] == "6"


def test_lora_loads_in_diffusers_and_reproduces_the_trained_model(trained) -> None:  # type: ignore[no-untyped-def]
    plan, result, models = trained
    tensors, _ = read_lora(result.lora_path)
    settings = plan["sample"]
    prompt = settings["prompts"][0]
    pipe = build_tiny_pipeline(plan["model"]["tiny_seed"])
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe, settings, prompt, output_type="np")
    pipe.load_lora_weights(str(result.lora_path))
    layers = [m for m in pipe.unet.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == len(tensors) // 3  # every module in the file found its layer
    assert sum(p.numel() for m in layers for p in (*m.lora_A.parameters(), *m.lora_B.parameters())) == sum(
        t.numel() for k, t in tensors.items() if not k.endswith(".alpha"))
    loaded = render(pipe, settings, prompt, output_type="np")
    models.pipe.set_progress_bar_config(disable=True)
    in_memory = render(models.pipe, settings, prompt, output_type="np")
    assert np.abs(loaded - base).mean() > 1e-3
    np.testing.assert_allclose(loaded, in_memory, atol=1e-4)


def test_diffusers_folder_model(make_plan, tiny_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, model={"kind": "diffusers_folder", "source": str(tiny_folder)},
                     training__total_steps=2, sample__prompts=[])
    result = execute(plan, progress=False)
    tensors, meta = read_lora(result.lora_path)
    assert meta["ss_steps"] == "2" and len(tensors) == 3 * 136
    assert result.samples == []


def test_vae_override_from_a_folder(make_plan, tiny_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, model__vae=str(tiny_folder), training__total_steps=1, sample__prompts=[])
    assert execute(plan, progress=False).lora_path.is_file()


def test_missing_model_folder_is_a_run_error(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, model={"kind": "diffusers_folder", "source": str(tmp_path / "nowhere")})
    with pytest.raises(RunError, match="does not exist"):
        execute(plan, progress=False)


def test_a_tampered_plan_is_refused(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path)
    plan["optimizer"]["lr"] = 0.5
    with pytest.raises(RunError, match="plan_hash"):
        execute(plan, progress=False)


def test_plain_log_lines_when_not_a_terminal(make_plan, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, training__total_steps=4, log__every_steps=2, sample__prompts=[])
    execute(plan)
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/4", "4/4"]
    assert all(re.search(r"loss \d\.\d{4}\s+lr \S+\s+[\d.]+ it/s\s+rss \d+ MiB", line) for line in steps)
