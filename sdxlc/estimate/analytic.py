"""Analytic VRAM and time estimate of a resolved plan (the plan's ``estimate`` object).

Architecture facts come from ``schema/models/<model>.json`` or, for any other SDXL-topology model, from its
own configs (``sdxlc/estimate/facts.py``); device facts from a :class:`Profile`. Every
constant and its source is documented in ``docs/ESTIMATE.md``. Pure Python: no torch.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

from sdxlc.estimate import adapters, compiletime, cputime, host, lllite, lowvram
from sdxlc.estimate.facts import derive
from sdxlc.estimate.model_data import EstimateError, get_path, load_model
from sdxlc.estimate.model_data import bucket_sizes as _bucket_sizes
from sdxlc.estimate.model_data import latent_px as _latent_px
from sdxlc.estimate.scale import communication_seconds, launch_shape, shard_terms
from sdxlc.estimate.validation import ema_bytes, validation_seconds
from sdxlc.resolve.architecture import CONFIG_ERRORS, read_configs
from sdxlc.resolve.model_source import SHIPPED_CONFIG, config_folder
from sdxlc.resolve.optimizers import optimizer_table
from sdxlc.resolve.profiles import Profile

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
LORA_DTYPE_BYTES = 4  # LoRA weights and their gradients are kept in fp32
TIGHT_HEADROOM = 0.10
SAMPLE_KEY = "sample_peak"


# Temporaries of an optimizer step. torch's AdamW with `optimizer.implementation` foreach (CUDA's default)
# steps every tensor at once: the square roots of the second moments are one more copy of all trained
# values (SGD's foreach step works in place). The fused kernel keeps none. Per-parameter steps (the
# for-loop, Adafactor, Prodigy, the fused backward pass) hold about three fp32
# temporaries of the tensor being stepped (`--exact` on Adafactor: 2-5 of the largest UNet tensor).
FOREACH_COPIES = {"adamw": 1}
PER_TENSOR_COPIES = 3


def model_name(plan: dict[str, Any]) -> str:
    """The plan's `model.architecture`: ``sdxl``, ``tiny`` or ``custom``; a plan from before that field:
    ``tiny`` for the built-in tiny model, ``sdxl`` for everything else."""
    recorded = plan.get("model", {}).get("architecture")
    if recorded:
        return str(recorded)
    return "tiny" if get_path(plan, "model.kind") == "tiny" else "sdxl"


def model_facts(plan: dict[str, Any]) -> dict[str, Any]:
    """Architecture facts of the plan's model: ``schema/models/<name>.json``, or for a ``custom``
    architecture computed from its configs (sdxlc/estimate/facts.py)."""
    name = model_name(plan)
    if name != "custom":
        return load_model(name)
    model = plan["model"]
    folder = config_folder(str(model["kind"]), str(model["source"]), model.get("config"))
    if folder is None:
        raise EstimateError("a `custom` model architecture needs a config folder")
    stamp = tuple(sorted((str(p), p.stat().st_mtime_ns) for p in folder.glob("*/config.json")))
    return _derived(str(folder), stamp)


@cache
def _derived(folder: str, stamp: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """Facts of a config folder (`stamp`: its configs' modification times, so an edit is seen)."""
    try:
        configs = read_configs(Path(folder))
        return derive(configs, read_configs(SHIPPED_CONFIG), load_model("sdxl"), load_model("tiny"))
    except CONFIG_ERRORS as exc:
        raise EstimateError(f"cannot size the model from {folder}: {exc}") from exc


def trainable_param_count(plan: dict[str, Any], model: dict[str, Any]) -> int:
    """Parameters the optimizer trains: the LoRA, every weight of the fine-tuned models, or the new
    embedding rows (vectors × both encoders' widths). block_lr zeros are not subtracted."""
    kind = plan["method"].get("kind", "lora")
    if kind == "lllite":
        return lllite.param_count(plan, model)
    if kind == "finetune":
        return sum(int(model["params"][t]) for t in get_path(plan, "method.targets"))
    if kind == "embedding":
        context = model["context"]
        return int(get_path(plan, "method.vectors")) * (int(context["te1_width"]) + int(context["te2_width"]))
    return lora_param_count(plan, model)


def lora_param_count(plan: dict[str, Any], model: dict[str, Any]) -> int:
    """Trainable LoRA parameters: rank x per-rank sizes of the targeted modules."""
    rank = int(get_path(plan, "method.rank"))
    targets = set(get_path(plan, "method.targets"))
    table: dict[str, dict[str, int]] = copy.deepcopy(model["lora_params_per_rank"])
    if "conv" in plan["method"].get("modules", []):  # conv layers count when the plan asks for them
        table["unet"].update(model["lora_conv_params_per_rank"]["unet"])
    per_rank = 0
    if "unet" in targets:
        for module in get_path(plan, "method.unet_modules"):
            if module not in table["unet"]:
                known = ", ".join(table["unet"])
                raise EstimateError(f"no LoRA size known for UNet module {module!r} (known: {known})")
            per_rank += table["unet"][module]
    for te in ("te1", "te2"):
        if te in targets:
            te_modules = plan["method"].get("te_modules") or model["te_lora_modules"]
            per_rank += sum(table[te][m] for m in te_modules)
    return adapters.param_count(plan["method"], rank, per_rank)  # LoHa, LoKr, DoRA (estimate/adapters.py)


def _step_transient(plan: dict[str, Any], model: dict[str, Any], trained: int, device: str) -> int:
    """Bytes of temporaries while the optimizer steps (see FOREACH_COPIES)."""
    optimizer = plan["optimizer"]
    args = optimizer.get("args") or {}
    method = plan["method"]
    value_bytes = 2 if method.get("full_bf16") else LORA_DTYPE_BYTES
    implementation = optimizer.get("implementation")  # a plan of an older sdxlc: torch's default
    foreach = implementation == "foreach" if implementation is not None else \
        device == "cuda" and args.get("foreach") is not False and not args.get("fused")
    if foreach and optimizer["name"] in FOREACH_COPIES:
        return FOREACH_COPIES[optimizer["name"]] * trained * value_bytes
    if method.get("kind") != "finetune":  # LoRA and embedding tensors are a few MB at most
        return 0
    return PER_TENSOR_COPIES * min(trained, int(model["largest_tensor_params"])) * 4


def _frozen_or_full(plan: dict[str, Any]) -> str:
    """How the UNet's backward differs from a LoRA's: `frozen` (an embedding or a text-encoder-only
    LoRA: no UNet weight needs its inputs), `full` (a fine-tune: every weight needs them) or `lora`."""
    method = plan["method"]
    if method.get("kind") == "finetune":
        return "full" if "unet" in method["targets"] else "frozen"
    if method.get("kind") == "embedding" or "unet" not in method["targets"]:
        return "frozen"
    return "lora"


def _autocast_copies(plan: dict[str, Any], model: dict[str, Any]) -> int:
    """Autocast's half-precision copies of a fine-tuned UNet's fp32 weights, kept for the backward pass."""
    method = plan["method"]
    half = get_path(plan, "precision.mixed") != "fp32" and not method.get("full_bf16")
    if method.get("kind") == "finetune" and "unet" in method["targets"] and half:
        return int(model["params"]["unet"]) * 2
    return 0


def _finetune_peak(
    plan: dict[str, Any], model: dict[str, Any], terms: dict[str, int], step: int
) -> dict[str, int]:
    """A fine-tune's gradients are as large as its weights, and they never coexist with all the
    activations: the peak is the larger of the end of the forward pass (activations; under mixed
    precision also autocast's half-precision copies of the fp32 weights, kept for backward; gradients
    only when accumulating) and the gradient phase (all gradients + the optimizer step's temporaries,
    at least those of one tensor). The breakdown shows the terms of the larger."""
    out = {k: v for k, v in terms.items() if k not in ("activations", "vae_encode_extra", "gradients")}
    carry = terms["gradients"] if int(get_path(plan, "training.accumulate")) > 1 else 0
    copies = _autocast_copies(plan, model)
    forward = terms["activations"] + terms.get("vae_encode_extra", 0) + copies + carry
    per_tensor = PER_TENSOR_COPIES * int(model["largest_tensor_params"]) * 4
    backward = terms["gradients"] + max(step, per_tensor)
    if forward >= backward:
        out.update(activations=terms["activations"], vae_encode_extra=terms.get("vae_encode_extra", 0),
                   autocast_weight_copies=copies, gradients=carry)
    else:
        out.update(gradients=terms["gradients"], optimizer_step_transient=max(step, per_tensor))
    return {k: v for k, v in out.items() if v > 0}


def _te_lora_copies(plan: dict[str, Any], model: dict[str, Any], batch: int) -> int:
    """Text-encoder LoRA under mixed precision: peft casts each LoRA layer's input to the fp32 LoRA
    weights, and autograd keeps that copy (layers × tokens × input width × 4 bytes per module and sample)."""
    method = plan["method"]
    if method.get("kind", "lora") != "lora" or get_path(plan, "precision.mixed") == "fp32":
        return 0
    modules = method.get("te_modules") or model["te_lora_modules"]
    total = 0
    for te in set(get_path(plan, "method.targets")) & {"te1", "te2"}:
        widths = model["te_lora_input_width"][te]
        total += int(model["context"]["te_layers"][te]) * sum(int(widths[m]) for m in modules)
    return total * int(model["context"]["length"]) * LORA_DTYPE_BYTES * batch


def _unet_forward_flops(model: dict[str, Any], latent_px: float) -> float:
    f = model["flops"]["unet_forward"]
    return float(f["constant"] + f["per_latent_px"] * latent_px + f["per_latent_px_squared"] * latent_px**2)


def _resident(plan: dict[str, Any]) -> dict[str, bool]:
    targets = set(get_path(plan, "method.targets"))
    cache_te = bool(get_path(plan, "data.cache.text_encoder"))
    cache_latents = bool(get_path(plan, "data.cache.latents"))
    return {
        "te1": "te1" in targets or not cache_te,
        "te2": "te2" in targets or not cache_te,
        "vae": not cache_latents,
    }


def _memory(plan: dict[str, Any], profile: Profile) -> tuple[dict[str, int], int]:
    """Training-peak terms (they add up) and the sampling peak (compared, not added)."""
    model = model_facts(plan)
    params = model["params"]
    acts_facts = model["activations"]
    mixed = str(get_path(plan, "precision.mixed"))
    wbytes = DTYPE_BYTES[mixed]
    vae_bytes = 4 if get_path(plan, "precision.vae_fp32") else wbytes
    act_scale = DTYPE_BYTES[mixed] / int(acts_facts["compute_dtype_bytes"])
    batch = int(get_path(plan, "training.batch_size"))
    ckpt = bool(get_path(plan, "training.gradient_checkpointing"))
    targets = set(get_path(plan, "method.targets"))
    resident = _resident(plan)

    trained = trainable_param_count(plan, model)
    vae_params = int(params["vae_encoder"]) + int(params["vae_decoder"])
    method = plan["method"]
    whole = set(targets) if method.get("kind") == "finetune" else set()
    master = 2 if method.get("full_bf16") else LORA_DTYPE_BYTES  # fine-tuned weights: fp32 unless full bf16
    terms: dict[str, int] = {}
    for part, resident_part in (("unet", True), ("te1", resident["te1"]), ("te2", resident["te2"])):
        if resident_part:
            terms[f"{part}_weights"] = (int(params[part]) * master if part in whole
                                        else lowvram.frozen_bytes(plan, model, part, wbytes))
    if resident["vae"]:
        terms["vae_weights"] = vae_params * vae_bytes
    grad_bytes = master if whole else LORA_DTYPE_BYTES
    terms["trainable_params"] = 0 if whole else trained * LORA_DTYPE_BYTES  # else inside *_weights
    terms["gradients"] = trained * grad_bytes
    if method.get("fused_backward"):  # each gradient is freed by its own step: about one tensor at a time
        terms["gradients"] = int(model["largest_tensor_params"]) * grad_bytes
    terms["optimizer_state"] = optimizer_state_bytes(plan, model, trained)
    terms["ema_weights"] = ema_bytes(plan, trained)  # sdxlc/estimate/validation.py

    sizes = _bucket_sizes(plan)
    max_px = max(_latent_px(w, h, model) for w, h, _ in sizes)
    max_image_px = max(w * h for w, h, _ in sizes)
    coef = acts_facts["checkpointing" if ckpt else "no_checkpointing"]
    unet_acts = (coef["fixed_bytes_per_latent_px"] + coef["per_sample_bytes_per_latent_px"] * batch) * max_px
    te_per_sample = acts_facts["te_training_bytes_per_sample"]
    te_acts = sum(te_per_sample[te] * batch for te in ("te1", "te2") if te in targets)
    unet_acts *= float(acts_facts["unet_method_factor"][_frozen_or_full(plan)]["checkpointing" if ckpt
                                                                           else "no_checkpointing"])
    activations = int((unet_acts + te_acts) * act_scale) + _te_lora_copies(plan, model, batch)
    activations += lllite.activation_bytes(plan, model, batch, max_image_px, wbytes)
    activations += adapters.delta_weight_bytes(plan, model)  # LoHa / LoKr build each layer's ΔW
    terms["activations"] = activations
    vae_transient = acts_facts["vae_transient_elements_per_image_px"]
    if resident["vae"]:
        encoded_at_once = 1 if plan["precision"].get("vae_slicing") else batch
        encode = int(vae_transient["encode"] * max_image_px * encoded_at_once * vae_bytes)
        if encode > activations:
            terms["vae_encode_extra"] = encode - activations
    lowvram.apply(plan, terms, encode if resident["vae"] else 0)  # offloaded encoders (lowvram.py)
    step = _step_transient(plan, model, trained, profile.device)
    if method.get("kind") == "finetune" and not method.get("fused_backward"):
        terms = _finetune_peak(plan, model, terms, step)
    elif method.get("fused_backward"):  # each weight steps inside the backward pass, beside the activations
        copies = _autocast_copies(plan, model)
        if copies > terms["gradients"] + step:  # the end of the forward pass holds autocast's weight copies
            terms["autocast_weight_copies"] = copies
            del terms["gradients"]
        else:
            terms["optimizer_step_transient"] = step
    elif step > activations + terms.get("vae_encode_extra", 0):  # the step runs once activations are freed
        terms["optimizer_step_extra"] = step - activations - terms.get("vae_encode_extra", 0)
    full = dict(terms)
    terms = shard_terms(plan, terms)
    host.drop_unread(plan, profile, model, terms)  # cpu: mapped weights a step never reads
    overhead = profile.allocator_overhead
    terms["allocator_overhead"] = int(sum(terms.values()) * overhead)
    terms["cuda_context"] = profile.context_bytes if profile.device == "cuda" else 0
    host.add_runtime_state(plan, profile, model, terms)  # cpu: the process's own memory beyond its tensors
    host.add_cache_entries(plan, profile, model, terms)  # cpu: cached entries held in memory

    sample_peak = 0
    prompts = get_path(plan, "sample.prompts") or []
    if prompts:
        sw, sh = int(get_path(plan, "sample.width")), int(get_path(plan, "sample.height"))
        cfg_batch = 2 if float(get_path(plan, "sample.cfg")) > 1.0 else 1
        static = (
            full["unet_weights"]  # encoders and VAE parked on the CPU come back for sampling
            + full.get("te1_weights", lowvram.frozen_bytes(plan, model, "te1", wbytes))
            + full.get("te2_weights", lowvram.frozen_bytes(plan, model, "te2", wbytes))
            + vae_params * vae_bytes
            + full.get("trainable_params", 0)  # a fine-tune's trained weights are its *_weights
            + full.get("ema_weights", 0)
            + sum(v for k, v in terms.items() if k.startswith("optimizer_state"))
        )
        inference = acts_facts["inference_bytes_per_latent_px_per_sample"]
        unet_inf = inference * _latent_px(sw, sh, model) * cfg_batch
        decode = vae_transient["decode"] * sw * sh * wbytes  # sampling decodes under autocast
        # autocast keeps its half-precision copies of a fine-tuned UNet's fp32 weights until sampling ends
        transient = max(unet_inf * act_scale, decode) + _autocast_copies(plan, model)
        sample_peak = int((static + transient) * (1.0 + overhead)) + terms["cuda_context"]
    return {k: v for k, v in terms.items() if v > 0}, sample_peak


def sample_peak_seen(plan: dict[str, Any], profile: Profile) -> float:
    """The plan's sampling peak without the terms fake tensors cannot see (allocator overhead, CUDA
    context): what `sdxlc plan --exact`'s sampling simulation compares with."""
    terms = plan["estimate"]["vram_breakdown"]
    return float(terms["sample_peak"] - terms.get("cuda_context", 0)) / (1.0 + profile.allocator_overhead)


def _seconds(plan: dict[str, Any], profile: Profile) -> tuple[float, float, dict[str, float]]:
    """(FLOPs per optimizer step, seconds per step, the time breakdown): seconds per step split into
    compute, dispatch overhead and gradient communication, and the run's seconds of training, sampling
    and caching."""
    model = model_facts(plan)
    flops = model["flops"]
    mixed = str(get_path(plan, "precision.mixed"))
    throughput = profile.tflops_for(mixed) * 1e12 * profile.efficiency
    batch = int(get_path(plan, "training.batch_size"))
    accumulate = int(get_path(plan, "training.accumulate"))
    ckpt = bool(get_path(plan, "training.gradient_checkpointing"))
    targets = set(get_path(plan, "method.targets"))
    resident = _resident(plan)
    cache_te = bool(get_path(plan, "data.cache.text_encoder"))

    sizes = _bucket_sizes(plan)
    total_weight = sum(wt for _, _, wt in sizes)
    mean_px = sum(_latent_px(w, h, model) * wt for w, h, wt in sizes) / total_weight
    mean_image_px = sum(w * h * wt for w, h, wt in sizes) / total_weight

    # backward = gradients of the inputs (about one forward) + of the weights (another, for trained weights
    # only: a LoRA's or an embedding's are negligible); checkpointing recomputes the forward
    full = plan["method"].get("kind") == "finetune"
    unet_backward = 2 if full and "unet" in targets else 1
    per_sample = _unet_forward_flops(model, mean_px) * (1 + unet_backward + (1 if ckpt else 0))
    for te in ("te1", "te2"):
        te_fwd = float(flops[f"{te}_forward_per_sample"])
        if te in targets:
            per_sample += (3 if full else 2) * te_fwd
        elif not cache_te:
            per_sample += te_fwd
    if resident["vae"]:
        per_sample += float(flops["vae_encode_per_image_px"]) * mean_image_px
    step_flops = per_sample * batch * accumulate

    device = profile.device
    efficiency = profile.efficiency
    if device == "cpu":  # FLOPs at the model family's measured rate + per-layer dispatch (cputime.py)
        cpu_time = cputime.constants(model)
        efficiency = float(cpu_time["efficiency"])
        throughput = profile.tflops_for(mixed) * 1e12 * efficiency
        feats = cputime.features(plan, model, step_flops)
        extra_compute, dispatch = cputime.seconds({**feats, "flops": 0.0}, cpu_time, 1.0)  # a LoRA's products
        overhead = dispatch / accumulate
    else:
        extra_compute = 0.0
        overhead = float(model["step_overhead_seconds"][device])
        if ckpt:
            overhead *= float(model["checkpointing_overhead_factor"])
        overhead += float(model["sample_overhead_seconds"][device]) * batch
        if resident["vae"] or not cache_te:
            overhead += float(model["encode_overhead_seconds"][device])
    vae_dtype_bytes = 4 if get_path(plan, "precision.vae_fp32") else DTYPE_BYTES[mixed]
    overhead += lowvram.transfer_seconds(plan, model, DTYPE_BYTES[mixed], vae_dtype_bytes)  # offloading
    world, machines, _ = launch_shape(plan)
    if device == "cpu" and machines == 1:
        throughput /= world  # the processes share the machine's cores
    time = {
        "dense_tflops": profile.tflops_for(mixed),
        "efficiency": efficiency,
        "effective_tflops": throughput / 1e12,
        "compute_per_step": step_flops / throughput + extra_compute * (world if machines == 1 else 1),
        "overhead_per_step": overhead * accumulate,
        "communication_per_step": communication_seconds(
            plan, trainable_param_count(plan, model),
            int(model["params"]["unet"]) * DTYPE_BYTES[mixed], device),
    }
    if plan["training"].get("compile"):  # compiled steps and the first run's compile (compiletime.py)
        factor = compiletime.step_factor(plan, cputime.family(model), device)
        time["compute_per_step"] *= factor
        time["overhead_per_step"] *= factor
        time["compile"] = compiletime.compile_seconds(plan, model)
        time["compile_cached"] = compiletime.cached_compile_seconds(plan, model)
    seconds_per_step = time["compute_per_step"] + time["overhead_per_step"] + time["communication_per_step"]
    time["training"] = seconds_per_step * int(get_path(plan, "training.total_steps"))
    sampling = caching = 0.0

    prompts = get_path(plan, "sample.prompts") or []
    if prompts:
        events = sample_passes(plan)
        sw, sh = int(get_path(plan, "sample.width")), int(get_path(plan, "sample.height"))
        cfg_batch = 2 if float(get_path(plan, "sample.cfg")) > 1.0 else 1
        steps = int(get_path(plan, "sample.steps"))
        image = steps * cfg_batch * _unet_forward_flops(model, _latent_px(sw, sh, model))
        image += float(flops["vae_decode_per_image_px"]) * sw * sh
        sampling = events * len(prompts) * image / throughput
    images = int(get_path(plan, "data.images")) / world  # caching is split over the processes
    if not resident["vae"]:
        caching += images * float(flops["vae_encode_per_image_px"]) * mean_image_px / throughput
    if cache_te:
        te_flops = sum(float(flops[f"{te}_forward_per_sample"]) for te in ("te1", "te2"))
        caching += images * te_flops / throughput
    time.update(sampling=sampling, caching=caching)
    image = _unet_forward_flops(model, mean_px) + (0.0 if cache_te else sum(
        float(flops[f"{te}_forward_per_sample"]) for te in ("te1", "te2")))
    image += float(flops["vae_encode_per_image_px"]) * mean_image_px if resident["vae"] else 0.0
    time["validation"] = validation_seconds(plan, image, throughput)
    return step_flops, seconds_per_step, time


def sample_passes(plan: dict[str, Any]) -> int:
    """How many times the run renders its sample prompts: at every multiple of `sample.every_steps`
    before the last step, once more after the final save, and before the first step with
    `sample.before` (none without prompts)."""
    if not get_path(plan, "sample.prompts"):
        return 0
    every = get_path(plan, "sample.every_steps")
    total = int(get_path(plan, "training.total_steps"))
    before = 1 if get_path(plan, "sample.before") else 0
    return (max(total - 1, 0) // int(every) if every else 0) + 1 + before


def estimate(plan: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """The plan's ``estimate`` object (schema/plan.schema.json).

    ``vram_breakdown`` holds the training-peak terms, which add up to the training peak, plus
    ``sample_peak`` (whole sampling peak, compared rather than added) when the plan samples.
    ``vram_bytes`` is the larger of the two peaks. With several processes every number is per process
    (per GPU): the memory of one rank, its FLOPs and seconds per optimizer step.
    """
    terms, sample_peak = _memory(plan, profile)
    train_peak = sum(terms.values())
    vram = max(train_peak, sample_peak)
    breakdown = dict(terms)
    if sample_peak:
        breakdown[SAMPLE_KEY] = sample_peak
    budget = profile.vram_usable_bytes
    fits = vram <= budget
    if not fits:
        verdict = "does_not_fit"
    elif budget - vram < TIGHT_HEADROOM * budget:
        verdict = "tight"
    else:
        verdict = "fits"
    step_flops, seconds_per_step, time = _seconds(plan, profile)
    total = sum(time[k] for k in ("training", "sampling", "caching", "validation")) + time.get("compile", 0.0)
    return {
        "vram_bytes": int(vram),
        "vram_breakdown": breakdown,
        "budget_bytes": int(budget),
        "fits": fits,
        "verdict": verdict,
        "step_flops": float(round(step_flops)),
        "seconds_per_step": round(seconds_per_step, 6),
        "total_seconds": round(total, 3),
        "time_breakdown": {k: round(v, 6) for k, v in time.items()},
        "spills": not fits and profile.spills_to_system_ram,
    }


def optimizer_state_bytes(plan: dict[str, Any], model: dict[str, Any], trained: int) -> int:
    """Optimizer-state bytes, from schema/optimizers.json (measured there).

    A factored optimizer (Adafactor) keeps, per tensor of two or more dimensions, fp32 second moments
    over all dimensions but the last and over all but the second to last: for a fine-tune the model facts
    count those elements exactly (`adafactor_state_elements`; convolutions are barely factored); a LoRA or
    an embedding trains rank × width or vectors × width matrices, about 4 / (short side) bytes per value.
    """
    optimizer = str(get_path(plan, "optimizer.name"))
    table = optimizer_table()
    if optimizer not in table:
        raise EstimateError(f"no optimizer-state size known for {optimizer!r}")
    state = table[optimizer]["state"]
    args = get_path(plan, "optimizer.args") or {}
    if state.get("factored"):
        first_moment = 4 * trained if args.get("beta1") is not None else 0
        if plan["method"].get("kind") == "finetune":
            elements = model["adafactor_state_elements"]
            return 4 * sum(int(elements[t]) for t in get_path(plan, "method.targets")) + first_moment
        return int(4.0 / _factored_side(plan) * trained) + first_moment
    if optimizer == "sgd" and float(args.get("momentum", 1.0)) == 0.0:
        return 0
    half = plan["method"].get("full_bf16") and state.get("in_param_dtype")  # bf16 state for bf16 weights
    return int(trained * float(state["bytes_per_param"]) * (0.5 if half else 1.0))


def _factored_side(plan: dict[str, Any]) -> float:
    """The short side of a trained LoRA or embedding matrix: the rank or the vector count; for LLLite the
    `mlp_dim` of its `down`/`mid`/`up` layers, which hold nearly all of its values."""
    if plan["method"].get("kind") == "embedding":
        return float(get_path(plan, "method.vectors"))
    if plan["method"].get("kind") == "lllite":
        return float(max(1, int(get_path(plan, "method.mlp_dim"))))
    return float(max(1, int(get_path(plan, "method.rank"))))
