"""Measure a plan's sampling peak on fake tensors: what `runtime.sample.write_samples` holds at once.

While the run samples, every component is on the device (the text encoders and the VAE parked during
training come back, `runtime.sample.unparked`), the trained weights and the optimizer state stay, and the
gradients are gone. One image is rendered per prompt: the text encoders encode the prompt (and the empty
negative prompt under classifier-free guidance), the UNet runs without gradients on a batch of 2 (1
without guidance) at the sample size under autocast, and the VAE decodes one latent, also under
autocast. This simulates those three passes at full size with `runtime.fake_memory.LiveBytes`, as
`runtime.exact.measure` does for the training step; the peak is the larger of them plus what stays
resident. The estimate's `sample_peak` without allocator overhead and CUDA context compares with it.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from runtime.exact.fake_memory import LiveBytes
from runtime.exact.step import DTYPES, TOKENS, fake_optimizer, materialise_state, setup_fake, track_weights


def _all_resident(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan with nothing cached, so that every component is built (sampling brings them all back)."""
    out = copy.deepcopy(plan)
    out["data"]["cache"] = {**out["data"]["cache"], "text_encoder": False, "latents": False}
    return out


def measure_sampling(plan: dict[str, Any]) -> dict[str, Any] | None:
    """The live-memory peak of rendering one sample image of the plan, or None when it samples nothing."""
    sample = plan["sample"]
    if not sample["prompts"]:
        return None
    started = time.perf_counter()
    width, height = int(sample["width"]), int(sample["height"])
    cfg_batch = 2 if float(sample["cfg"]) > 1.0 else 1
    weight_dtype = DTYPES[plan["precision"]["mixed"]]
    vae_dtype = torch.float32 if plan["precision"]["vae_fp32"] else weight_dtype
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    pipe, parts = setup_fake(_all_resident(plan), mode)
    tracker = LiveBytes()
    peak: dict[str, Any] = {"bytes": 0}
    phases: dict[str, int] = {}  # transient bytes above what stays resident, per pass

    def begin(phase: str) -> None:
        if tracker.phase in ("text", "unet", "decode"):
            phases[tracker.phase] = tracker.peak - resident
            if tracker.peak > peak["bytes"]:
                peak.update(bytes=tracker.peak, categories=dict(tracker.peak_categories), phase=tracker.phase)
        tracker.phase = phase
        tracker.reset_peak()

    autocast = {"device_type": "cpu", "dtype": weight_dtype, "enabled": weight_dtype != torch.float32}
    with mode, tracker:
        track_weights(plan, parts, tracker)
        optimizer = fake_optimizer(plan, pipe)  # its state stays through sampling; the gradients are freed
        materialise_state(optimizer, tracker)
        for module in parts.values():
            module.eval()
        resident = tracker.current
        with torch.no_grad(), torch.autocast(**autocast):
            begin("text")
            states, pooled = [], None
            for name in ("te1", "te2"):
                encoder = parts[name]
                ids = torch.randint(0, int(encoder.config.vocab_size), (cfg_batch, TOKENS))
                out = encoder(ids, output_hidden_states=True)
                states.append(out.hidden_states[-2].to(weight_dtype))
                pooled = getattr(out, "text_embeds", pooled)
                del out
            assert pooled is not None
            text = torch.cat(states, dim=-1)
            del states
            begin("unet")
            unet = parts["unet"]
            shape = (cfg_batch, unet.config.in_channels, height // 8, width // 8)
            latents = torch.randn(shape, dtype=weight_dtype)
            conditions = {"text_embeds": pooled.to(weight_dtype),
                          "time_ids": torch.randn(cfg_batch, 6, dtype=weight_dtype)}
            noise = unet(latents, torch.full((cfg_batch,), 999), encoder_hidden_states=text,
                         added_cond_kwargs=conditions).sample
            del noise, text, pooled, conditions
            begin("decode")
            vae = parts["vae"]
            image = vae.decode(latents[:1].to(vae_dtype) / vae.config.scaling_factor).sample
            del image, latents
            begin("done")
    del optimizer
    return {
        "peak_bytes": int(peak["bytes"]),
        "breakdown": {k: int(v) for k, v in sorted(peak["categories"].items()) if v},
        "peak_phase": peak["phase"],
        "resident_bytes": int(resident),
        "phase_bytes": phases,
        "seconds": time.perf_counter() - started,
    }
