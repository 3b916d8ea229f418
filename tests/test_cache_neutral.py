"""Caching is an optimisation, not a different run: with the text-encoder outputs and the latents cached,
a run trains on the same latents, noise and timesteps as one that encodes every batch, so its losses and
weights agree to float rounding (the training noise is drawn in the latents' logical order, whatever the
memory layout of cached or freshly encoded latents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from runtime.train import checkpoint
from runtime.train.loss import make_noise
from runtime.train.run import execute


def _run(make_plan: Any, out: Path, cached: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    plan = make_plan(out, training__total_steps=3, sample={"prompts": []},
                     save={"every_steps": 3, "keep": 1},
                     data__cache={"text_encoder": cached, "latents": cached, "to_disk": False,
                                  "dir": str(out / "cache")})
    result = execute(plan, progress=False)
    losses = checkpoint.load_state(checkpoint.folder_for(out, 3)).position.losses
    return list(losses), load_file(str(result.lora_path))


def test_a_cached_run_trains_exactly_as_an_uncached_one(make_plan: Any, tmp_path: Path) -> None:
    cached_losses, cached_weights = _run(make_plan, tmp_path / "cached", cached=True)
    plain_losses, plain_weights = _run(make_plan, tmp_path / "plain", cached=False)
    assert cached_losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-6)
    assert cached_weights.keys() == plain_weights.keys()
    for key, value in cached_weights.items():
        torch.testing.assert_close(value, plain_weights[key], rtol=1e-3, atol=1e-5)


def test_the_noise_does_not_depend_on_the_latents_memory_layout() -> None:
    training = {"noise_offset": 0.0, "multires_iterations": 0, "multires_discount": 0.3}
    latents = torch.zeros(2, 4, 8, 8)
    torch.manual_seed(0)
    contiguous = make_noise(latents, training)
    torch.manual_seed(0)
    channels_last = make_noise(latents.to(memory_format=torch.channels_last), training)
    assert torch.equal(contiguous, channels_last)
