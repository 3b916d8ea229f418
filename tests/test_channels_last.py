"""`training.channels_last`: resolved per profile device (true on CUDA, false on the CPU) unless the
recipe says `channels last`, and applied by the runtime to the UNet's and VAE's convolution weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from methods_common import FINETUNE, method_plan

from runtime.formats.single_file import load_single_file, write_config
from runtime.train.run import run_plan, setup_model

ROOT = Path(__file__).resolve().parent.parent


def compiled_flag(tmp_path: Path, text: str) -> bool:
    from sdxlc.pipeline import compile_recipe

    data = tmp_path / "data"
    data.symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = tmp_path / "r.sdx"
    recipe.write_text('model tiny\ndata "data"\nsteps 4\n' + text, encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    return bool(compiled.plan["training"]["channels_last"])


@pytest.mark.parametrize(("text", "expected"), [
    ("profile cpu\n", False),
    ("profile rtx4090-24gb\n", True),
    ("profile cpu\nchannels last\n", True),
], ids=["cpu-default", "cuda-default", "recipe"])
def test_the_compiler_resolves_the_flag(tmp_path: Path, text: str, expected: bool) -> None:
    assert compiled_flag(tmp_path, text) is expected


def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]


@pytest.mark.parametrize("flag", [True, False])
def test_the_flag_reaches_the_unet_and_vae_weights(make_plan, tmp_path: Path, flag: bool) -> None:  # type: ignore[no-untyped-def]
    models = setup_model(make_plan(tmp_path, training__channels_last=flag))
    for name in ("unet", "vae"):
        weights = conv_weights(getattr(models.pipe, name))
        assert weights, name
        for weight in weights:  # a k×k kernel (k > 1) in channels-last is not NCHW-contiguous
            if flag:
                assert weight.is_contiguous(memory_format=torch.channels_last), name
            assert weight.is_contiguous() is not flag, name


def test_a_channels_last_finetune_trains_and_saves(tmp_path: Path) -> None:
    plan = method_plan(tmp_path, FINETUNE, training__total_steps=2, training__channels_last=True,
                       sample__prompts=["a red circle"])
    result, models = run_plan(plan, progress=False)
    assert result.steps == 2
    loaded = load_single_file(result.lora_path, write_config(models.pipe, tmp_path / "config"))
    trained = models.pipe.unet.state_dict()
    for key, value in loaded.unet.state_dict().items():
        assert torch.equal(value, trained[key]), key
