"""Seconds per training step on the CPU: FLOPs at a measured throughput, plus the dispatch work.

On a CPU a small model's step is mostly not arithmetic: every layer a pass runs costs Python and
operator-dispatch time whatever its size, every trained tensor costs the optimizer a few small operations,
every sample costs data loading and collation. So the step is modelled as

    seconds = step FLOPs / (profile TFLOP/s × efficiency)
            + seconds_per_layer_pass × layer passes + seconds_per_lora_layer_pass × LoRA layer passes
            + seconds_per_recomputed_layer × UNet and LoRA layers recomputed (gradient checkpointing)
            + seconds_per_trained_tensor × trained tensors + seconds_per_sample × samples
            + seconds_per_encode × micro-batches that run the VAE or a text encoder
            + seconds_per_micro_batch × micro-batches

where a layer is a weight tensor of a linear, convolution or norm layer of the UNet (and of the text
encoders and the VAE encoder when they run in the step), and the passes are the forward and the backward
pass. Gradient checkpointing's recomputed forward pass has its own constant: besides the layers it runs
again, torch.utils.checkpoint saves and restores state around every checkpointed block (on the tiny model
a checkpointed step takes about twice as long, far more than its extra FLOPs). The counts come from the
model facts (`layer_count`, `lora_layer_count`, `tensor_count`, `lora_flops_per_rank`, computed from the
weights' shapes by `counts`). A LoRA's own products (not in the step FLOPs) run at their own rate,
`seconds_per_lora_flop`: rank-wide products are far less efficient than the base layers'.

The constants live in the model facts' `cpu_time` (`schema/models/tiny.json`: fitted by
`bench/time_vs_measured.py --fit` to the runtime's measured steps; `sdxl.json` keeps its own efficiency
and takes the dispatch constants of `tiny`). docs/ESTIMATE.md gives the fit and its errors. Pure Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdxlc.estimate.model_data import bucket_sizes, latent_px, load_model
from sdxlc.resolve.architecture import Tensors

# the fitted constants, each with the feature it multiplies (`efficiency` is fitted as seconds per FLOP)
FEATURE = {
    "seconds_per_flop": "flops",
    "seconds_per_lora_flop": "lora_flops",
    "seconds_per_layer_pass": "layer_passes",
    "seconds_per_lora_layer_pass": "lora_layer_passes",
    "seconds_per_recomputed_layer": "recomputed_layers",
    "seconds_per_trained_tensor": "trained_tensors",
    "seconds_per_sample": "samples",
    "seconds_per_encode": "encodes",
    "seconds_per_micro_batch": "micro_batches",
}
FITTED = tuple(FEATURE)
INHERITED = tuple(k for k in FITTED if k != "seconds_per_flop")  # what `sdxl` takes from `tiny`
DISPATCH = tuple(k for k in INHERITED if k != "seconds_per_lora_flop")
TEXT_TOKENS = 77
FIT_PEAK_TFLOPS = 0.15  # the cpu profile's fp32 peak, to which a fitted seconds-per-FLOP is related


def _is_layer(name: str) -> bool:
    return name.endswith(".weight") and not name.endswith("_embedding.weight")  # not CLIP token tables


def counts(tensors: dict[str, Tensors], unet_modules: tuple[str, ...], te_modules: tuple[str, ...],
           level: Callable[[str], int]) -> dict[str, Any]:
    """`layer_count`, `tensor_count`, `lora_layer_count` and `lora_flops_per_rank` of a model from its
    weights (facts.py); `level(name)` is the resolution level (0 = the full latent) a UNet weight works at.

    `lora_flops_per_rank`: forward FLOPs of one sample per rank of each UNet module's LoRA, 2·(in·k² + out)
    at every position its layer sees: `per_latent_px` at its level's resolution, `constant` for the
    cross-attention keys and values (77 text tokens) and the time embedding's projections (one)."""
    def matches(module: str, key: str) -> bool:
        return module == key or module.endswith("." + key)

    def lora_layers(part: Tensors, modules: tuple[str, ...]) -> dict[str, int]:
        table = dict.fromkeys(modules, 0)
        for name, shape in part.items():
            if name.endswith(".weight") and len(shape) in (2, 4):
                for key in modules:
                    table[key] += matches(name[: -len(".weight")], key)
        return table

    flops = {m: {"per_latent_px": 0.0, "constant": 0.0} for m in unet_modules}
    for name, shape in tensors["unet"].items():
        if not name.endswith(".weight") or len(shape) not in (2, 4):
            continue
        module = name[: -len(".weight")]
        per_position = 2.0 * (shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) + shape[0])
        for key in unet_modules:
            if not matches(module, key):
                continue
            if ".attn2.to_k" in name or ".attn2.to_v" in name:
                flops[key]["constant"] += per_position * TEXT_TOKENS
            elif key == "time_emb_proj":
                flops[key]["constant"] += per_position
            else:
                flops[key]["per_latent_px"] += per_position / 4 ** level(name)
    return {
        "lora_flops_per_rank": {"unet": {m: {k: round(v, 4) for k, v in f.items()}
                                         for m, f in flops.items()}},
        "layer_count": {part: sum(_is_layer(n) for n in tensors[part])
                        for part in ("unet", "vae_encoder", "te1", "te2")},
        "tensor_count": {part: len(tensors[part]) for part in ("unet", "te1", "te2")},
        "lora_layer_count": {"unet": lora_layers(tensors["unet"], unet_modules),
                             "te1": lora_layers(tensors["te1"], te_modules),
                             "te2": lora_layers(tensors["te2"], te_modules)},
    }


def constants(model: dict[str, Any]) -> dict[str, Any]:
    """The model's `cpu_time`, its missing dispatch constants taken from `tiny`'s."""
    own: dict[str, Any] = dict(model.get("cpu_time") or {})
    if any(k not in own for k in INHERITED):
        tiny = load_model("tiny")["cpu_time"]
        own = {**{k: tiny[k] for k in INHERITED}, **own}
    return own


def family(model: dict[str, Any]) -> str:
    """Which fitted `cpu_time` a model uses: `tiny` (fitted to the tiny models) or `sdxl`."""
    return str((model.get("cpu_time") or {}).get("family", "sdxl"))


def features(plan: dict[str, Any], model: dict[str, Any], step_flops: float) -> dict[str, float]:
    """What each constant multiplies, per optimizer step."""
    method, training, cache = plan["method"], plan["training"], plan["data"]["cache"]
    accumulate, batch = int(training["accumulate"]), int(training["batch_size"])
    ckpt = bool(training["gradient_checkpointing"])
    passes = 2  # forward and backward; checkpointing's recompute is a feature of its own
    targets = set(method.get("targets") or [])
    kind = method.get("kind", "lora")
    full = kind == "finetune"
    layers, tensors = model["layer_count"], model["tensor_count"]
    lora_table = model["lora_layer_count"]
    layer_passes = float(passes * layers["unet"])
    encodes = 0
    for te in ("te1", "te2"):
        if te in targets or kind == "embedding":  # trained (or learning new rows): forward + backward
            layer_passes += 2 * layers[te]
        elif not cache["text_encoder"]:
            layer_passes += layers[te]
            encodes = 1
    if not cache["latents"]:
        layer_passes += layers["vae_encoder"]
        encodes = 1
    lora_layers = 0
    if kind not in ("finetune", "embedding"):
        if "unet" in targets:
            lora_layers += sum(int(lora_table["unet"].get(m, 0)) for m in method.get("unet_modules") or [])
        for te in ("te1", "te2"):
            if te in targets:
                te_modules = method.get("te_modules") or model["te_lora_modules"]
                lora_layers += sum(int(lora_table[te].get(m, 0)) for m in te_modules)
    lora_flops = 0.0
    if kind == "lora" and "unet" in targets:  # LoRA's own products: forward, both gradients, recompute
        sizes = bucket_sizes(plan)
        mean_px = sum(latent_px(w, h, model) * n for w, h, n in sizes) / sum(n for _, _, n in sizes)
        table = model["lora_flops_per_rank"]["unet"]
        per_sample = sum(float(table[m]["per_latent_px"]) * mean_px + float(table[m]["constant"])
                         for m in method.get("unet_modules") or [] if m in table)
        lora_flops = per_sample * int(method["rank"]) * batch * accumulate * (4 if ckpt else 3)
    if full:
        trained = sum(int(tensors[t]) for t in targets if t in tensors)
    elif kind == "embedding":
        trained = 2
    else:
        trained = 2 * lora_layers
    return {
        "flops": float(step_flops),
        "lora_flops": lora_flops,
        "layer_passes": accumulate * layer_passes,
        "lora_layer_passes": float(accumulate * passes * lora_layers),
        "recomputed_layers": float(accumulate * (layers["unet"] + lora_layers)) if ckpt else 0.0,
        "trained_tensors": float(trained),
        "samples": float(accumulate * batch),
        "encodes": float(accumulate * encodes),
        "micro_batches": float(accumulate),
    }


def seconds(feats: dict[str, float], cpu_time: dict[str, Any], peak_tflops: float) -> tuple[float, float]:
    """(compute, dispatch) seconds of one optimizer step; `peak_tflops` is the profile's."""
    compute = feats["flops"] / (peak_tflops * 1e12 * float(cpu_time["efficiency"]))
    compute += feats["lora_flops"] * float(cpu_time["seconds_per_lora_flop"])
    dispatch = sum(float(cpu_time[k]) * feats[FEATURE[k]] for k in DISPATCH)
    return compute, dispatch


def block(fitted: dict[str, float], note: str) -> str:
    """The `cpu_time` object of schema/models/tiny.json for fitted constants (seconds per FLOP becomes
    an efficiency of the cpu profile's fp32 peak), as the JSON text that file holds."""
    eff = 1.0 / (fitted["seconds_per_flop"] * FIT_PEAK_TFLOPS * 1e12) if fitted["seconds_per_flop"] else 1.0
    lines = ['  "cpu_time": {', '    "family": "tiny",', f'    "efficiency": {eff:.4g},']
    lines += [f'    "{k}": {fitted[k]:.4g},' for k in INHERITED]
    lines += [f'    "fitted": "{note}"', "  },", ""]
    return "\n".join(lines)
