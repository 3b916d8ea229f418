"""Measure a plan's training-step memory peak and FLOPs by simulating one step on fake tensors.

The plan's model is built on the meta device at full size (no weights, no memory), cast to the plan's
dtypes, given its LoRA exactly as the runtime does (``runtime.lora.add_lora``, trainable parameters in
fp32), and then every parameter becomes a CPU ``FakeTensor``. One training micro-batch then runs the
runtime's own step (``runtime.loop``): VAE encode and text-encoder forward when those are not cached,
noise, UNet forward under autocast, loss, backward, gradient clipping, optimizer step.

A ``TorchDispatchMode`` records every tensor storage an op creates and a weak-reference finalizer
removes it when it dies, so the live byte count follows the real allocation pattern (views share
storage; saved tensors stay alive until backward frees them). ``FlopCounterMode`` counts the FLOPs.

What this measures is the training-step peak: weights + trainable + gradients + optimizer state +
activations. The CUDA context, caching-allocator rounding and kernel workspaces are not visible to fake
tensors. Autocast is CPU autocast (CUDA autocast keeps a few ops such as group_norm in fp32).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from runtime import RunError

SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),  # head counts (head dim 64)
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)
SDXL_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
CLIP_L: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
CLIP_BIGG: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENS = 77
BNB_OPTIMIZERS = ("adamw8bit", "lion8bit", "lion")  # bitsandbytes: cannot run on fake tensors
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep fp32 state
BNB_BLOCK = 256  # blockwise quantization: one fp32 absmax per 256 values per state
ACTIVATIONS = "activations"


def _sdpa_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return int(flop_counter.sdpa_flop_count(q, k, v))


def _sdpa_backward_flops(
    g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return int(flop_counter.sdpa_backward_flop_count(g, q, k, v))


# The SDPA kernel that fake CPU tensors dispatch to has no formula in torch's registry: count it as flash.
_CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


class LiveBytes(TorchDispatchMode):  # type: ignore[misc]
    """Live bytes of every tensor storage, by category, with the peak and what made it up; FLOPs.

    FLOPs use the formulas of ``torch.utils.flop_counter`` (what ``FlopCounterMode`` counts with).
    ``FlopCounterMode`` itself is not used: its module tracker keeps tensors alive, which would
    inflate the memory peak several-fold.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[Any]] = {}  # id(storage) -> [bytes, category]
        self.by_category: dict[str, int] = defaultdict(int)
        self.current = 0
        self.peak = 0
        self.peak_categories: dict[str, int] = {}
        self.phase = "setup"
        self.peak_phase = "setup"
        self.count_flops = False
        self.flops = 0
        self.registry: dict[Any, Any] = {
            **flop_counter.flop_registry,
            **{op: flop_counter.shape_wrapper(f) for op, f in _CPU_SDPA_FLOPS.items()},
        }

    def track(self, tensor: torch.Tensor, category: str = ACTIVATIONS) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self.live.get(key)
        if entry is not None:
            if category != ACTIVATIONS and entry[1] != category:  # re-label (a gradient, optimizer state)
                self.by_category[entry[1]] -= entry[0]
                self.by_category[category] += entry[0]
                entry[1] = category
            return
        size = int(storage.nbytes())
        self.live[key] = [size, category]
        weakref.finalize(storage, self._free, key)
        self.by_category[category] += size
        self.current += size
        if self.current > self.peak:
            self.reset_peak()

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.current -= entry[0]
            self.by_category[entry[1]] -= entry[0]

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_categories = {k: v for k, v in self.by_category.items() if v}
        self.peak_phase = self.phase

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.count_flops and (formula := self.registry.get(func._overloadpacket)) is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


# ---- building the model -----------------------------------------------------------------------


def _build_meta(plan: dict[str, Any], resident: dict[str, bool]) -> dict[str, torch.nn.Module]:
    """The plan's components on the meta device in fp32: unet always, te1/te2/vae when resident."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out: dict[str, torch.nn.Module] = {}
    with torch.device("meta"):
        if plan["model"]["kind"] == "tiny":
            from runtime import tiny

            out["unet"] = UNet2DConditionModel(**tiny.UNET_CONFIG)
            if resident["vae"]:
                out["vae"] = AutoencoderKL(**tiny.VAE_CONFIG)
            if resident["te1"]:
                out["te1"] = CLIPTextModel(tiny._text_config(tiny.tiny_tokenizer(), tiny.TE1_HIDDEN))
            if resident["te2"]:
                config = tiny._text_config(
                    tiny.tiny_tokenizer(pad_token="!"), tiny.TE2_HIDDEN, projection_dim=tiny.TE2_HIDDEN
                )
                out["te2"] = CLIPTextModelWithProjection(config)
        else:
            out["unet"] = UNet2DConditionModel(**SDXL_UNET)
            if resident["vae"]:
                out["vae"] = AutoencoderKL(**SDXL_VAE)
            if resident["te1"]:
                out["te1"] = CLIPTextModel(CLIPTextConfig(**CLIP_L))
            if resident["te2"]:
                out["te2"] = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))
    return out


def _fakeify(module: torch.nn.Module, mode: FakeTensorMode) -> None:
    """Replace every meta parameter and buffer by a CPU fake tensor of the same shape and dtype."""
    device = torch.device("cpu")
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (meta original, fake); shared weights

    def convert(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            memo[id(t)] = (t, mode.fake_tensor_converter.from_meta_and_device(mode, t.detach(), device))
        return memo[id(t)][1]

    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(convert(param), requires_grad=param.requires_grad)
        for name, buf in list(sub._buffers.items()):
            if buf is not None:
                sub._buffers[name] = convert(buf)


def _setup(
    plan: dict[str, Any], resident: dict[str, bool], mode: FakeTensorMode
) -> dict[str, torch.nn.Module]:
    """Build, place and LoRA the model as runtime.models.place and runtime.run.setup_model do.

    All casts happen on the meta device: module casts of fake parameters go through
    ``torch.utils.swap_tensors``, which refuses the weak references fake tensors carry.
    """
    from runtime.lora import add_lora

    weight_dtype = DTYPES[plan["precision"]["mixed"]]
    vae_dtype = torch.float32 if plan["precision"]["vae_fp32"] else weight_dtype
    parts = _build_meta(plan, resident)
    quiet = logging.getLogger("diffusers.models.modeling_utils")  # "cast with from_pretrained" advice
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name, module in parts.items():
            module.requires_grad_(False)
            module.to(dtype=vae_dtype if name == "vae" else weight_dtype)
    finally:
        quiet.setLevel(level)
    for name, module in parts.items():
        if name != "unet":
            module.eval()
    unet = parts["unet"]
    with torch.device("meta"):
        add_lora(unet, plan["method"])
    for parameter in unet.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    if plan["training"]["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.train()
    for module in parts.values():
        _fakeify(module, mode)
    return parts


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


# ---- the optimizer ----------------------------------------------------------------------------


def bnb_state_bytes(numel: int, name: str) -> int:
    """Bytes of bitsandbytes optimizer state for one parameter (8-bit blockwise, fp32 below min size)."""
    states = 1 if name.startswith("lion") else 2
    if name == "lion" or numel < BNB_MIN_8BIT_SIZE:
        return states * numel * 4
    return states * (numel + 4 * -(-numel // BNB_BLOCK))


class _StatePlaceholder(torch.optim.Optimizer):  # type: ignore[misc]
    """A bitsandbytes optimizer's state, allocated at its analytic size; the update is a plain SGD step."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, name: str) -> None:
        super().__init__(groups, {"lr": lr})
        self.name = name

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not self.state[p]:
                    self.state[p]["state"] = torch.empty(
                        bnb_state_bytes(p.numel(), self.name), dtype=torch.uint8
                    )
                p.add_(p.grad, alpha=-group["lr"])


def _optimizer(plan: dict[str, Any], unet: torch.nn.Module) -> torch.optim.Optimizer:
    from runtime.loop import make_optimizer
    from runtime.lora import param_groups

    opt = plan["optimizer"]
    groups = param_groups(unet, plan["method"], opt["lr"])
    if opt["name"] in BNB_OPTIMIZERS:
        return _StatePlaceholder(groups, opt["lr"], opt["name"])
    return make_optimizer(opt, groups)


# ---- one step ---------------------------------------------------------------------------------


def _largest_bucket(plan: dict[str, Any]) -> tuple[int, int]:
    """(width, height) in pixels of the largest bucket (the square resolution without buckets)."""
    table = plan["data"]["buckets"].get("table") or []
    sizes = [(int(b["width"]), int(b["height"])) for b in table]
    if not sizes:
        res = int(plan["data"]["resolution"])
        return res, res
    return max(sizes, key=lambda wh: wh[0] * wh[1])


def _conditioning(
    parts: dict[str, torch.nn.Module], models: Any, batch: int, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, prompt embeddings, pooled) as runtime.loop.Conditioning.encode makes them."""
    from runtime.loop import encode_pixels, sample_latents

    config = parts["unet"].config
    if "vae" in parts:  # pixels arrive in fp32 from the loader
        parameters = encode_pixels(models, torch.randn(batch, 3, height, width))
    else:  # cached latent distributions (mean and log-variance)
        parameters = torch.randn(
            batch, 2 * config.in_channels, height // 8, width // 8, dtype=models.vae_dtype
        )
    if "te1" in parts:  # runtime.loop.encode_text on token ids
        states, pooled = [], None
        with torch.no_grad():
            for name in ("te1", "te2"):
                encoder = parts[name]
                out = encoder(
                    torch.randint(0, encoder.config.vocab_size, (batch, TOKENS)), output_hidden_states=True
                )
                states.append(out.hidden_states[-2])
                pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            raise RunError("text_encoder_2 gives no pooled projection (text_embeds)")
        text = torch.cat(states, dim=-1)
    else:  # cached encoder outputs
        pooled_width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        text = torch.randn(batch, TOKENS, config.cross_attention_dim, dtype=models.weight_dtype)
        pooled = torch.randn(batch, pooled_width, dtype=models.weight_dtype)
    dtype = models.weight_dtype
    return sample_latents(models, parameters), text.to(dtype), pooled.to(dtype)


def measure(plan: dict[str, Any]) -> dict[str, Any]:
    """Simulate one training micro-batch of the plan; its live-memory peak and FLOPs per optimizer step."""
    from runtime.loop import batch_loss
    from runtime.models import training_noise_scheduler

    if plan["method"]["kind"] != "lora":
        raise RunError(f"--exact measures LoRA plans only, not {plan['method']['kind']!r}")
    if set(plan["method"]["targets"]) - {"unet"}:
        raise RunError("--exact measures UNet LoRA only (text-encoder LoRA is not in the runtime yet)")
    started = time.perf_counter()
    cache = plan["data"]["cache"]
    resident = {
        "te1": not cache["text_encoder"],
        "te2": not cache["text_encoder"],
        "vae": not cache["latents"],
    }
    training = plan["training"]
    batch, accumulate = int(training["batch_size"]), int(training["accumulate"])
    width, height = _largest_bucket(plan)
    weight_dtype = DTYPES[plan["precision"]["mixed"]]
    mode = FakeTensorMode(allow_non_fake_inputs=True)

    parts = _setup(plan, resident, mode)
    unet = parts["unet"]
    tracker = LiveBytes()
    notes: list[str] = []
    with mode, tracker:
        for name, module in parts.items():
            for p in module.parameters():
                tracker.track(p, "trainable_params" if p.requires_grad else f"{name}_weights")
            for b in module.buffers():
                tracker.track(b, f"{name}_weights")
        models: Any = SimpleNamespace(
            pipe=SimpleNamespace(
                vae=parts.get("vae", SimpleNamespace(config=SimpleNamespace(scaling_factor=0.13025)))
            ),
            device=torch.device("cpu"),
            weight_dtype=weight_dtype,
            vae_dtype=torch.float32 if plan["precision"]["vae_fp32"] else weight_dtype,
            noise_scheduler=training_noise_scheduler(plan["model"]["prediction"]),
        )
        optimizer = _optimizer(plan, unet)
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
        for p in trainable:  # a first step with zero gradients materialises the optimizer state
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for state in optimizer.state.values():
            for value in tree_leaves(state):
                if isinstance(value, torch.Tensor):
                    tracker.track(value, "optimizer_state")
        if plan["optimizer"]["name"] in BNB_OPTIMIZERS:
            notes.append(f"{plan['optimizer']['name']} (bitsandbytes) state allocated at its analytic size")
        for p in trainable:
            p.register_post_accumulate_grad_hook(lambda q: tracker.track(q.grad, "gradients"))
            if accumulate > 1:  # later micro-batches start with the gradients of the earlier ones
                p.grad = torch.zeros_like(p)
                tracker.track(p.grad, "gradients")
        tracker.reset_peak()
        tracker.count_flops = True
        tracker.phase = "encode"
        latents, states, pooled = _conditioning(parts, models, batch, width, height)
        time_ids = torch.randn(batch, 6)
        tracker.phase = "forward"
        loss = batch_loss(_Autocast(unet, weight_dtype), models, training, latents, states, pooled, time_ids)
        tracker.phase = "backward"
        loss.backward()
        tracker.phase = "optimizer"
        if plan["optimizer"]["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(trainable, plan["optimizer"]["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    breakdown = {k: int(v) for k, v in sorted(tracker.peak_categories.items()) if v}
    return {
        "peak_bytes": int(tracker.peak),
        "breakdown": breakdown,
        "step_flops": float(tracker.flops) * accumulate,
        "seconds": time.perf_counter() - started,
        "peak_phase": tracker.peak_phase,
        "notes": notes,
    }
