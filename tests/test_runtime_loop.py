"""The step and the loop: learning happens, every plan option is honoured, failures are named."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from accelerate.utils import set_seed

from runtime import RunError
from runtime.methods.lora import param_groups
from runtime.model.load import training_noise_scheduler
from runtime.train import loop
from runtime.train.conditioning import Conditioning, encode_pixels
from runtime.train.data import setup_data
from runtime.train.run import run_plan, setup_model
from sdxlc.resolve.optimizers import optimizer_table


def test_loss_goes_down_on_a_fixed_batch(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, optimizer__lr=1e-2)
    set_seed(0)
    models, data = setup_model(plan), setup_data(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    batch = conditioning.batch(data.epoch(0)[0], random.Random(0))
    latents, states, pooled = conditioning.encode(batch)
    unet = models.pipe.unet.train()
    optimizer = loop.make_optimizer(plan["optimizer"], param_groups(unet, plan["method"], 1e-2))
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same noise and timesteps every step: a fixed batch
        loss = loop.batch_loss(unet, models, plan["training"], latents, states, pooled, batch.time_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses


def test_every_option_runs_exactly_the_planned_steps(make_plan, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(
        tmp_path, model__prediction="v_prediction", sample__prompts=[],
        training={"total_steps": 3, "accumulate": 2, "snr_gamma": 5.0, "noise_offset": 0.05,
                  "gradient_checkpointing": True, "timestep_min": 100, "timestep_max": 900},
        data={"cache": {"text_encoder": True, "latents": True, "to_disk": False, "dir": str(tmp_path / "c")}},
        data__datasets__0__flip=True, data__datasets__0__caption_dropout=0.3,
        optimizer={"name": "adamw8bit", "args": {"min_8bit_size": 16}},
        schedule={"name": "cosine", "warmup_steps": 1},
    )
    calls = {"unet": 0, "te1": 0, "vae": 0, "timesteps": []}
    setup = setup_model

    def counting_setup(p: dict[str, Any]) -> Any:
        loaded = setup(p)

        def unet_hook(module: Any, args: Any) -> None:
            calls["unet"] += 1
            calls["timesteps"] += args[1].tolist()

        def counter(name: str) -> Any:
            return lambda *_: calls.__setitem__(name, calls[name] + 1)

        loaded.pipe.unet.register_forward_pre_hook(unet_hook)
        loaded.pipe.text_encoder.register_forward_pre_hook(counter("te1"))
        loaded.pipe.vae.encoder.register_forward_pre_hook(counter("vae"))
        return loaded

    from runtime.train import run

    monkeypatch.setattr(run, "setup_model", counting_setup)
    result, _ = run_plan(plan, progress=False)
    captions = {p.read_text().strip() for p in Path(plan["data"]["datasets"][0]["path"]).glob("*.txt")}
    assert result.steps == 3 and calls["unet"] == 3 * 2  # steps × accumulated batches
    assert calls["te1"] == len(captions) + 1  # each caption once, plus the empty one for dropout
    assert calls["vae"] == 12 * 2  # each image once per orientation
    assert all(100 <= t < 900 for t in calls["timesteps"])
    assert torch.isfinite(torch.tensor(result.final_loss))


def test_shuffled_captions_cannot_use_the_text_cache(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, data__datasets__0__shuffle=True, data__cache__text_encoder=True)
    with pytest.raises(RunError, match="shuffled captions"):
        run_plan(plan, progress=False)


def test_a_diverging_loss_stops_the_run_at_its_step(make_plan, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(tmp_path, training__total_steps=5)
    real = loop.batch_loss
    count = {"n": 0}

    def diverging(*args: Any) -> torch.Tensor:
        count["n"] += 1
        loss = real(*args)
        return loss * float("nan") if count["n"] == 3 else loss

    monkeypatch.setattr(loop, "batch_loss", diverging)
    with pytest.raises(RunError, match="at step 3"):
        run_plan(plan, progress=False)
    assert not (tmp_path / "tinylora.safetensors").exists()


@pytest.mark.parametrize(("name", "kind"), [
    ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("adamw8bit", bnb.optim.AdamW8bit),
    ("lion8bit", bnb.optim.Lion8bit), ("lion", bnb.optim.Lion),
])
def test_optimizers(name: str, kind: type) -> None:
    weight = torch.nn.Parameter(torch.randn(64, 64))
    args = {"min_8bit_size": 16} if name.endswith("8bit") else {"weight_decay": 0.0}
    if name == "sgd":  # the compiler resolves SGD's Nesterov momentum into the plan
        args |= {"momentum": 0.9, "nesterov": True}
    spec = {"name": name, "class": optimizer_table()[name]["class"], "lr": 1e-3, "args": args}
    optimizer = loop.make_optimizer(spec, [{"params": [weight]}])
    assert isinstance(optimizer, kind)
    (weight**2).sum().backward()
    optimizer.step()
    if name.endswith("8bit"):
        assert optimizer.state[weight]["state1"].dtype == torch.uint8
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[0]["nesterov"]


def test_schedule_warms_up_over_the_planned_steps() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    plan = {"schedule": {"name": "linear", "warmup_steps": 4}, "training": {"total_steps": 8}}
    schedule = loop.make_schedule(plan, optimizer)
    lrs = []
    for _ in range(8):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25])


def test_min_snr_weights() -> None:
    class Stub:
        noise_scheduler = training_noise_scheduler("epsilon")

    timesteps = torch.tensor([0, 10, 500, 999])
    alphas = Stub.noise_scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    weights = loop.snr_weights(Stub, timesteps, 5.0)  # type: ignore[arg-type]
    assert torch.allclose(weights, torch.clamp(snr, max=5.0) / snr)
    assert weights[0] < 1 and weights[-1] == 1
    Stub.noise_scheduler = training_noise_scheduler("v_prediction")
    assert torch.allclose(loop.snr_weights(Stub, timesteps, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))  # type: ignore[arg-type]


def test_vae_slicing_encodes_one_image_at_a_time_to_the_same_latents(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sliced = setup_model(make_plan(tmp_path, precision__vae_slicing=True))
    whole = setup_model(make_plan(tmp_path))
    assert sliced.pipe.vae.use_slicing and not whole.pipe.vae.use_slicing
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    seen: list[int] = []
    hook = sliced.pipe.vae.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        one_by_one = encode_pixels(sliced, pixels)
    finally:
        hook.remove()
    assert seen == [1, 1, 1]
    torch.testing.assert_close(one_by_one, encode_pixels(whole, pixels), rtol=1e-4, atol=1e-5)


def test_placement_casts_before_it_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """An fp32 checkpoint is cast to the run dtype before it goes to the device, never after."""
    from runtime.model import load as runtime_models

    calls: list[str] = []
    module = torch.nn.Linear(4, 4)
    real_to = module.to

    def recording_to(*args: Any, **kwargs: Any) -> torch.nn.Module:
        calls.append("dtype" if "dtype" in kwargs else "device")
        return real_to(*args, **kwargs)

    monkeypatch.setattr(module, "to", recording_to)
    runtime_models._move(module, torch.device("cpu"), torch.bfloat16)
    assert calls == ["dtype", "device"] and module.weight.dtype == torch.bfloat16
    calls.clear()
    runtime_models._move(module, torch.device("cpu"), torch.bfloat16)  # already bf16: no cast
    assert calls == ["device"]
