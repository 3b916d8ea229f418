"""Samples during training: a PNG per prompt with its settings, and a grid per sampling step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from a1111_infotext import parse
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from PIL import Image

from runtime.gen.infotext import infotext, lora_hashes, sampler_name
from runtime.gen.sample import grid, sample_fields
from runtime.train.run import execute


def test_grid_puts_images_side_by_side() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", (32, 16), colour) for colour in colours]
    sheet = grid(images)
    assert sheet.size == (96, 16)
    assert [sheet.getpixel((x, 8)) for x in (0, 40, 95)] == colours
    assert grid(images, columns=2).size == (64, 32)
    with pytest.raises(ValueError):
        grid([])


def test_a1111_infotext_names_the_sampler_quotes_values_and_hashes_the_checkpoint(  # type: ignore[no-untyped-def]
    make_plan, tmp_path: Path
) -> None:
    karras = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)
    assert sampler_name(karras) == "DPM++ 2M Karras"
    assert sampler_name(EulerDiscreteScheduler()) == "Euler"
    assert sampler_name(EulerAncestralDiscreteScheduler()) == "Euler a"
    checkpoint = str(tmp_path / "models" / "sd_xl_base_1.0.safetensors")
    plan = make_plan(tmp_path)
    plan["model"] = {**plan["model"], "kind": "single_file", "source": checkpoint,
                     "files": [{"path": checkpoint, "size": 1, "sha256": "31e35c80fc4829d14" + "0" * 47}]}
    fields = sample_fields(plan, EulerDiscreteScheduler())
    fields["Lora hashes"] = lora_hashes([("style", "0123456789ab"), ("faces, v2", "ba9876543210")])
    text = infotext("a lighthouse, at dusk\nsecond line", "blurry, low quality", fields)
    assert text.splitlines()[-1].endswith('Lora hashes: "style: 0123456789ab, faces v2: ba9876543210"')
    assert parse(text) == {
        "Prompt": "a lighthouse, at dusk\nsecond line", "Negative prompt": "blurry, low quality",
        "Steps": str(plan["sample"]["steps"]), "Sampler": "Euler", "CFG scale": str(plan["sample"]["cfg"]),
        "Seed": str(plan["sample"]["seed"]), "Size": "64x64", "Model hash": "31e35c80fc",
        "Model": "sd_xl_base_1.0", "Lora hashes": "style: 0123456789ab, faces v2: ba9876543210"}


def test_samples_every_n_steps_and_at_the_end(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prompts = ["a red circle on a blue background", "a blue square"]
    settings = {"prompts": prompts, "every_steps": 2, "steps": 2, "width": 64, "height": 48, "seed": 3}
    plan = make_plan(tmp_path, training__total_steps=3, sample=settings)
    result = execute(plan, progress=False)
    folder = tmp_path / "samples"
    names = [f"tinylora-step{step:06d}-{i:02d}.png" for step in (2, 3) for i in (0, 1)]
    assert [p.name for p in result.samples] == names
    assert [p.name for p in result.grids] == ["tinylora-step000002-grid.png", "tinylora-step000003-grid.png"]
    assert all(p.parent == folder for p in [*result.samples, *result.grids])
    for path in result.samples:
        with Image.open(path) as image:
            assert image.size == (64, 48)
            parameters = json.loads(image.text["sdxlc"])
            fields = parse(image.text["parameters"])
            assert "prompt" not in image.text  # ComfyUI's chunk name: left to ComfyUI
            assert fields["Prompt"] == parameters["prompt"] == prompts[parameters["prompt_index"]]
            assert fields["Negative prompt"] == "" and parameters["negative"] is None
            assert {k: fields[k] for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model")} == {
                "Steps": "2", "Sampler": "Euler", "CFG scale": str(plan["sample"]["cfg"]), "Seed": "3",
                "Size": "64x48", "Model": "tiny"}
            assert "Model hash" not in fields  # the tiny model has no checkpoint file
        assert parameters["step"] == int(path.name.split("-step")[1][:6])
        assert {k: parameters[k] for k in ("width", "height", "steps", "cfg", "seed")} == {
            "width": 64, "height": 48, "steps": 2, "cfg": plan["sample"]["cfg"], "seed": 3}
        assert parameters["sampler"] == "EulerDiscreteScheduler" and parameters["model"] == "tiny"
        assert parameters["lora"] == "tinylora" and parameters["plan_hash"] == plan["plan_hash"]
    with Image.open(result.grids[-1]) as sheet:
        assert sheet.size == (2 * 64, 48)
        assert json.loads(sheet.text["sdxlc"])["prompts"] == prompts
        assert parse(sheet.text["parameters"])["Size"] == "128x48"
        pixels = np.asarray(sheet.convert("RGB"))
    for index, path in enumerate(result.samples[2:]):
        with Image.open(path) as image:
            own = np.asarray(image.convert("RGB"))
        np.testing.assert_array_equal(pixels[:, 64 * index:64 * (index + 1)], own)


class _Parked:
    """A component that records where it is moved."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.moves: list[str] = []

    def to(self, device: Any) -> _Parked:
        self.device = torch.device(device)
        self.moves.append(str(device))
        return self


def test_parked_components_come_back_for_sampling_and_leave_after() -> None:
    from types import SimpleNamespace

    from runtime.gen.sample import unparked

    pipe = SimpleNamespace(text_encoder=_Parked("cpu"), text_encoder_2=_Parked("cpu"), vae=_Parked("meta"))
    with unparked(pipe, torch.device("meta")):
        assert pipe.text_encoder.device == pipe.text_encoder_2.device == torch.device("meta")
    assert pipe.text_encoder.moves == ["meta", "cpu"] and pipe.text_encoder_2.moves == ["meta", "cpu"]
    assert pipe.vae.moves == []  # it was not parked
    try:
        with unparked(pipe, torch.device("meta")):
            raise RuntimeError("sampling failed")
    except RuntimeError:
        pass
    assert pipe.text_encoder.device == torch.device("cpu")  # parked again even when sampling fails
