"""Measure a plan's training-step memory peak and FLOPs by simulating one step on fake tensors.

The plan's pipeline is built on the meta device at full size (no weights, no memory) from the model's own
configs (a folder's, a single file's `config`, the shipped SDXL configs for a hub id, or the tiny
model's), cast to the plan's dtypes, and given its method exactly as the runtime does (``Method.attach``:
LoRA layers, fine-tuned weights in fp32 or bf16, or the new embedding rows). Every parameter then becomes
a CPU ``FakeTensor``, and one training micro-batch runs the runtime's own pieces: VAE encode and text-
encoder forward when those are not cached (with gradients when the method trains the encoders or their
embeddings), noise, UNet forward under autocast, loss, backward, gradient clipping and the optimizer
step, or the fused backward pass's per-weight steps.

``runtime.fake_memory.LiveBytes`` follows every storage to the peak. What this measures is the
training-step peak: weights + trainable + gradients + optimizer state + activations. The CUDA context,
caching-allocator rounding and kernel workspaces are not visible to fake tensors. Autocast is CPU
autocast (CUDA autocast keeps a few ops such as group_norm in fp32). With several processes this is one
process without its DDP buckets or ZeRO/FSDP shards. On the cpu profile the result also counts the plan's
`runtime_state` and leaves out the memory-mapped weights a step never reads (runtime/exact/host.py), so
it compares with a real run's peak RSS.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_leaves

from runtime import RunError
from runtime.exact.fake_memory import LiveBytes, StatePlaceholder, bnb_state_bytes, fakeify
from runtime.exact.host import adjust as adjust_for_host
from runtime.exact.lowvram import release_offloaded
from runtime.methods import registry as methods
from runtime.model.fp8 import apply_base_fp8

__all__ = ["bnb_state_bytes", "measure"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENS = 77
PARTS = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2", "vae": "vae"}


# ---- building the model -----------------------------------------------------------------------


def config_folder(plan: dict[str, Any]) -> Path:
    """The diffusers configs the plan's model is built from: a folder's own, a single file's `config`,
    the shipped SDXL configs for a hub id (whose configs may not be on this machine)."""
    from runtime.formats.single_file import SDXL_CONFIG_DIR

    model = plan["model"]
    if model["kind"] == "diffusers_folder":
        return Path(model["source"])
    if model["kind"] in ("single_file", "pickle") and model.get("config"):
        return Path(model["config"])
    return SDXL_CONFIG_DIR


def _meta_pipeline(plan: dict[str, Any]) -> SimpleNamespace:
    """The plan's whole pipeline on the meta device in fp32, with real tokenizers (embeddings add to them).
    A folder without tokenizers (a config-only folder) borrows the shipped ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from runtime.formats.single_file import SDXL_CONFIG_DIR, load_tokenizers
    from runtime.model import tiny

    quiet = logging.getLogger("transformers.modeling_utils")
    folder = config_folder(plan)
    with torch.device("meta"):
        if plan["model"]["kind"] == "tiny":
            return SimpleNamespace(**tiny.tiny_components())
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            config_1 = CLIPTextConfig.from_pretrained(folder / "text_encoder")
            config_2 = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            text_1, text_2 = CLIPTextModel(config_1), CLIPTextModelWithProjection(config_2)
        finally:
            quiet.setLevel(level)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    has_tokenizer = (folder / "tokenizer" / "tokenizer_config.json").is_file()
    tokenizer, tokenizer_2 = load_tokenizers(folder if has_tokenizer else SDXL_CONFIG_DIR)
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=text_1, text_encoder_2=text_2,
                           tokenizer=tokenizer, tokenizer_2=tokenizer_2)


def resident(plan: dict[str, Any]) -> dict[str, bool]:
    """The components on the device while training: the UNet; an encoder that trains or is not cached;
    the VAE when latents are not cached."""
    cache, targets = plan["data"]["cache"], set(plan["method"]["targets"])
    return {
        "unet": True,
        "te1": "te1" in targets or not cache["text_encoder"],
        "te2": "te2" in targets or not cache["text_encoder"],
        "vae": not cache["latents"],
    }


def setup_fake(
    plan: dict[str, Any], mode: FakeTensorMode
) -> tuple[SimpleNamespace, dict[str, torch.nn.Module]]:
    """Build, place and attach the method as runtime.models.place and runtime.run.setup_model do;
    returns the pipeline and its resident components (fake), by plan name (unet, te1, te2, vae).

    All casts happen on the meta device: module casts of fake parameters go through
    ``torch.utils.swap_tensors``, which refuses the weak references fake tensors carry.
    """
    weight_dtype = DTYPES[plan["precision"]["mixed"]]
    vae_dtype = torch.float32 if plan["precision"]["vae_fp32"] else weight_dtype
    pipe = _meta_pipeline(plan)
    quiet = logging.getLogger("diffusers.models.modeling_utils")  # "cast with from_pretrained" advice
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name, attribute in PARTS.items():
            module = getattr(pipe, attribute)
            module.requires_grad_(False)
            module.to(dtype=vae_dtype if name == "vae" else weight_dtype)
            if name != "unet":
                module.eval()
        # the memory of a LoRA does not depend on where its starting weights come from
        method_only = {**plan, "method": {**plan["method"], "init_from": None}}
        with torch.device("meta"):
            methods.for_plan(method_only).attach(pipe)
        apply_base_fp8(pipe, plan)  # as runtime.train.run.setup_model: after the method's layers
    finally:
        quiet.setLevel(level)
    if plan["training"]["gradient_checkpointing"]:
        pipe.unet.enable_gradient_checkpointing()
    if plan["precision"]["vae_slicing"]:
        pipe.vae.enable_slicing()
    for module in (pipe.unet, *methods.for_plan(plan).text_encoders(pipe)):
        module.train()
    parts = {name: getattr(pipe, PARTS[name]) for name, here in resident(plan).items() if here}
    for module in parts.values():
        fakeify(module, mode)
    return pipe, parts


class _Autocast(torch.nn.Module):  # type: ignore[misc]
    """The UNet forward under autocast, as accelerate's mixed-precision wrapper runs it."""

    def __init__(self, unet: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.unet, self.dtype = unet, dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.unet(*args, **kwargs)
        out.sample = out.sample.float()  # accelerate's convert_outputs_to_fp32
        return out


def fake_optimizer(plan: dict[str, Any], pipe: SimpleNamespace) -> torch.optim.Optimizer:
    import inspect

    from runtime.train.optim import make_optimizer, optimizer_class

    opt = plan["optimizer"]
    groups = methods.for_plan(plan).param_groups(pipe)
    if opt["class"].startswith("bitsandbytes."):  # CUDA kernels only
        return StatePlaceholder(groups, opt["lr"], opt["name"])
    args = opt["args"]
    takes_foreach = "foreach" in inspect.signature(optimizer_class(opt["name"], opt["class"])).parameters
    if plan["hardware"]["device"] == "cuda" and takes_foreach and args.get("foreach") is None \
            and not args.get("fused"):  # what torch chooses for CUDA tensors (fake ones are CPU tensors)
        opt = {**opt, "args": {**args, "foreach": True}}
    return make_optimizer(opt, groups)


# ---- one step ---------------------------------------------------------------------------------


def largest_bucket(plan: dict[str, Any]) -> tuple[int, int]:
    """(width, height) in pixels of the largest bucket (the square resolution without buckets)."""
    table = plan["data"]["buckets"].get("table") or []
    sizes = [(int(b["width"]), int(b["height"])) for b in table]
    if not sizes:
        res = int(plan["data"]["resolution"])
        return res, res
    return max(sizes, key=lambda wh: wh[0] * wh[1])


def _text(
    plan: dict[str, Any], parts: dict[str, torch.nn.Module], batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """runtime.train.conditioning.text_states on token ids: with gradients when the method trains the
    encoders or their embeddings (then every id row holds the new tokens)."""
    new_tokens = len(plan["method"]["tokens"]) if plan["method"]["kind"] == "embedding" else 0
    states, pooled = [], None
    with torch.set_grad_enabled(methods.for_plan(plan).trains_text):
        for name in ("te1", "te2"):
            encoder = parts[name]
            vocab = int(encoder.config.vocab_size)
            ids = torch.randint(0, vocab - new_tokens, (batch, TOKENS))
            if new_tokens:
                ids[:, 1 : 1 + new_tokens] = torch.arange(vocab - new_tokens, vocab)
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        raise RunError("text_encoder_2 gives no pooled projection (text_embeds)")
    return torch.cat(states, dim=-1), pooled


def conditioning(
    plan: dict[str, Any], parts: dict[str, torch.nn.Module], models: Any, batch: int, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, prompt embeddings, pooled) as runtime.train.conditioning.Conditioning.encode makes them."""
    from runtime.train.conditioning import encode_pixels, sample_latents

    config = parts["unet"].config
    if "vae" in parts:  # pixels arrive in fp32 from the loader
        parameters = encode_pixels(models, torch.randn(batch, 3, height, width))
    else:  # cached latent distributions (mean and log-variance)
        parameters = torch.randn(
            batch, 2 * config.in_channels, height // 8, width // 8, dtype=models.vae_dtype
        )
    if "te1" in parts:
        text, pooled = _text(plan, parts, batch)
    else:  # cached encoder outputs
        pooled_width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        text = torch.randn(batch, TOKENS, config.cross_attention_dim, dtype=models.weight_dtype)
        pooled = torch.randn(batch, pooled_width, dtype=models.weight_dtype)
    dtype = models.weight_dtype
    return sample_latents(models, parameters), text.to(dtype), pooled.to(dtype)


def track_weights(plan: dict[str, Any], parts: dict[str, torch.nn.Module], tracker: LiveBytes) -> None:
    """Weights by component; a fine-tune's trained weights count as weights (the estimate's terms)."""
    whole = set(plan["method"]["targets"]) if plan["method"]["kind"] == "finetune" else set()
    for name, module in parts.items():
        for p in module.parameters():
            trained = p.requires_grad and name not in whole
            tracker.track(p, "trainable_params" if trained else f"{name}_weights")
        for b in module.buffers():
            tracker.track(b, f"{name}_weights")


def materialise_state(optimizer: torch.optim.Optimizer, tracker: LiveBytes) -> list[torch.Tensor]:
    """A first step on zero gradients creates the optimizer state; returns the trained parameters."""
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for state in optimizer.state.values():
        for value in tree_leaves(state):
            if isinstance(value, torch.Tensor):
                tracker.track(value, "optimizer_state")
    return trainable


def measure(plan: dict[str, Any]) -> dict[str, Any]:
    """Simulate one training micro-batch of the plan; its live-memory peak and FLOPs per optimizer step."""
    from runtime.methods.finetune import fuse_backward
    from runtime.model.load import training_noise_scheduler
    from runtime.train.loop import batch_loss

    started = time.perf_counter()
    plan = copy.deepcopy(plan)
    training = plan["training"]
    batch, accumulate = int(training["batch_size"]), int(training["accumulate"])
    width, height = largest_bucket(plan)
    weight_dtype = DTYPES[plan["precision"]["mixed"]]
    max_norm = float(plan["optimizer"]["max_grad_norm"])
    fused = bool(plan["method"].get("fused_backward"))
    mode = FakeTensorMode(allow_non_fake_inputs=True)

    pipe, parts = setup_fake(plan, mode)
    tracker = LiveBytes()
    notes: list[str] = []
    with mode, tracker:
        track_weights(plan, parts, tracker)
        vae = parts.get("vae", SimpleNamespace(config=SimpleNamespace(scaling_factor=0.13025)))
        models: Any = SimpleNamespace(
            pipe=SimpleNamespace(vae=vae),
            device=torch.device("cpu"),
            weight_dtype=weight_dtype,
            vae_dtype=torch.float32 if plan["precision"]["vae_fp32"] else weight_dtype,
            noise_scheduler=training_noise_scheduler(plan["model"]["prediction"]),
        )
        optimizer = fake_optimizer(plan, pipe)
        trainable = materialise_state(optimizer, tracker)
        ema = [torch.empty_like(p, dtype=torch.float32) for p in trainable] \
            if plan["training"].get("ema") else []  # runtime/train/ema.py: fp32 copies of the trained weights
        for shadow in ema:
            tracker.track(shadow, "ema_weights")
        if isinstance(optimizer, StatePlaceholder):
            notes.append(f"{plan['optimizer']['name']} (bitsandbytes) state allocated at its analytic size")
        for p in trainable:
            p.register_post_accumulate_grad_hook(lambda q: tracker.track(q.grad, "gradients"))
            if accumulate > 1:  # later micro-batches start with the gradients of the earlier ones
                p.grad = torch.zeros_like(p)
                tracker.track(p.grad, "gradients")
        hooks = fuse_backward(optimizer, max_norm) if fused else []
        tracker.reset_peak()
        resident_bytes = tracker.current  # weights, trained values and optimizer state before the step
        tracker.count_flops = True
        tracker.enter("encode")
        latents, states, pooled = conditioning(plan, parts, models, batch, width, height)
        release_offloaded(plan, parts, tracker)
        time_ids = torch.randn(batch, 6)
        # batches carry control images when a dataset has them (runtime/train/data.py); an LLLite
        # network gets them as the loop hands them over, right before the UNet (other methods: no-op)
        controls = any(dataset.get("control") for dataset in plan["data"]["datasets"])
        control = torch.randn(batch, 3, height, width) if controls else None
        methods.for_plan(plan).before_forward(pipe, SimpleNamespace(control=control))
        tracker.enter("forward")
        unet = _Autocast(parts["unet"], weight_dtype)
        loss = batch_loss(unet, models, training, latents, states, pooled, time_ids)
        tracker.enter("backward")
        loss.backward()  # the fused backward pass steps every weight in here
        tracker.enter("optimizer")
        if not fused:
            if max_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for handle in hooks:
            handle.remove()
    if int(plan.get("launch", {}).get("world_size", 1)) > 1:
        notes.append("measured as one process: DDP's gradient buckets and ZeRO/FSDP shards are not simulated")
    breakdown = {k: int(v) for k, v in sorted(tracker.peak_categories.items()) if v}
    result = {
        "peak_bytes": int(tracker.peak),
        "breakdown": breakdown,
        "step_flops": float(tracker.flops) * accumulate,
        "seconds": time.perf_counter() - started,
        "peak_phase": tracker.peak_phase,
        "notes": notes,
        # the peak of each phase of the step, and what is live before it (a steady-state step)
        "phase_peaks": {k: int(v) for k, v in tracker.phase_peaks.items() if k != "setup"},
        "resident_bytes": int(resident_bytes),
    }
    adjust_for_host(plan, parts, result)  # cpu: runtime state and never-read mapped weights (host.py)
    return result
