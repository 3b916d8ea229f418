"""Named semantic checks: combinations that are valid JSON but wrong for an SDXL run.

Each check is one function with one diagnostic code. They read the resolved plan and point at the
recipe line that caused the problem. They never change anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdxlc.check.bounds import BOUND_CHECKS
from sdxlc.check.cadence import CADENCE_CHECKS
from sdxlc.check.compiled import COMPILE_CHECKS
from sdxlc.check.lllite import LLLITE_CHECKS
from sdxlc.check.lowvram import LOWVRAM_CHECKS
from sdxlc.check.method import METHOD_CHECKS, cached_te_message
from sdxlc.check.precision import PRECISION_CHECKS
from sdxlc.lang.diagnostics import Diagnostic, make, suggestion
from sdxlc.lang.layers import Layers
from sdxlc.resolve.optimizers import accepted_args, arg_problem, optimizer_table
from sdxlc.resolve.validation import VALIDATION_CHECKS

Check = Callable[[dict[str, Any], Layers], list[Diagnostic]]


def cached_te_with_caption_changes(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Cached text-encoder outputs are fixed: shuffled or dropped captions would never be seen."""
    if not plan["data"]["cache"]["text_encoder"]:
        return []
    found = []
    for index, dataset in enumerate(plan["data"]["datasets"]):
        changes = (
            ("shuffle", "a shuffled caption", "shuffle"),
            ("caption_dropout", "caption dropout", "dropout"),
            ("tag_dropout", "tag dropout", "tag dropout"),
        )
        for key, what, word in changes:
            if dataset.get(key):
                found.append(
                    make(
                        "SDX0520",
                        f"cached text-encoder outputs cannot follow {what}",
                        layers.span(f"data.{index}.{key}") or layers.span(f"data.{index}.path"),
                        help=f"remove `{word}` or drop `cache te`",
                        related=layers.related("cache.text_encoder", "text-encoder caching set here"),
                    )
                )
    return found


def cached_latents_with_pixel_augmentation(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Cached latents are encoded once: a random crop or colour jitter would never change again."""
    if not plan["data"]["cache"]["latents"]:
        return []
    found = []
    for index, dataset in enumerate(plan["data"]["datasets"]):
        for key, what, word in (("random_crop", "a random crop", "random crop"),
                                ("color_jitter", "colour jitter", "color jitter")):
            if dataset[key]:
                found.append(make(
                    "SDX0525", f"cached latents cannot follow {what}",
                    layers.span(f"data.{index}.{key}") or layers.span(f"data.{index}.path"),
                    help=f"remove `{word}` or drop `cache latents` (flip is fine: both sides are cached)",
                    related=layers.related("cache.latents", "latent caching set here")))
    return found


def cached_te_with_te_training(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """A text encoder that is being trained cannot have its outputs cached."""
    message = cached_te_message(plan)
    if message is None or not plan["data"]["cache"]["text_encoder"]:
        return []
    kind = plan["method"]["kind"]
    return [
        make(
            "SDX0521",
            message,
            layers.span("cache.text_encoder"),
            help=f"drop `cache te` or train {'`on unet`' if kind == 'lora' else '`finetune unet`'} only",
            related=layers.related(f"{kind}.targets", "text-encoder training set here"),
        )
    ]


def bucket_step_multiple_of_32(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """SDXL's VAE halves 3 times and its UNet twice more: every side must be a multiple of 32."""
    buckets = plan["data"]["buckets"]
    found = []
    size = plan["data"]["resolution"]
    if buckets["enabled"] and buckets["step"] % 32:
        found.append(
            make(
                "SDX0522",
                f"bucket step {buckets['step']} is not a multiple of 32",
                layers.span("resolution.step"),
                help="use `step 32` or `step 64`",
            )
        )
    if plan["data"]["resolution"] % 32:
        found.append(
            make(
                "SDX0522",
                f"resolution {plan['data']['resolution']} is not a multiple of 32",
                layers.span("resolution.size"),
                help=f"use {_round32(size)} or {_round32(size) + 32}",
            )
        )
    return found


def fp16_with_stock_vae(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """The stock SDXL VAE overflows in fp16 and yields NaN latents."""
    model, precision = plan["model"], plan["precision"]
    if model["kind"] == "tiny" or model["vae"] or precision["mixed"] != "fp16" or precision["vae_fp32"]:
        return []
    return [
        make(
            "SDX0523",
            "fp16 with the stock SDXL VAE produces NaN latents",
            layers.span("precision.mixed"),
            help='add `vae "madebyollin/sdxl-vae-fp16-fix"`, or `vae fp32`, or use bf16',
        )
    ]


def precision_supported(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """bf16 runs on every CPU (torch's CPU autocast; SDX0526 warns where it is emulated); fp16 does not
    train there: accelerate enables no CPU autocast and no loss scaling for it."""
    hardware, mixed = plan["hardware"], plan["precision"]["mixed"]
    if mixed == "fp32" or hardware[mixed] or (mixed == "bf16" and hardware["device"] == "cpu"):
        return []
    if hardware["device"] == "cpu":
        fix = "use bf16 (CPU autocast) or fp32"
    else:
        fix = "use fp16 with `vae fp32`" if mixed == "bf16" and hardware["fp16"] else "use fp32"
    return [
        make(
            "SDX0524",
            f"{mixed} is not supported on {hardware['name']}",
            layers.span("precision.mixed"),
            help=fix,
        )
    ]


def timestep_range(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    training = plan["training"]
    if training["timestep_min"] < training["timestep_max"]:
        return []
    return [
        make(
            "SDX0528",
            f"empty timestep range {training['timestep_min']}..{training['timestep_max']}",
            layers.span("noise.timestep_min"),
            help="the first number must be smaller, e.g. `timesteps 0..1000`",
        )
    ]


def something_to_train(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    block_lr = plan["method"]["block_lr"]
    if block_lr is None or any(block_lr) or set(plan["method"]["targets"]) - {"unet"}:
        return []
    return [
        make(
            "SDX0529",
            "every `block_lr` is 0: nothing would train",
            layers.span("block_lr"),
            help="give at least one block a learning rate",
        )
    ]


def init_normal_with_lora(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """`init normal` re-initialises the UNet: a LoRA on top of random weights learns little."""
    if plan["model"].get("init_std") is None or plan["method"]["kind"] != "lora":
        return []
    return [make("SDX0515", "`init normal` with a LoRA: the LoRA would train on top of a random UNet",
                 layers.span("model.init_std"),
                 help="train from scratch with `finetune unet`, or drop `init normal`")]


def optimizer_args_known(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Every `args` name must be a keyword argument the optimizer class accepts, of the right type."""
    name = plan["optimizer"]["name"]
    known, reserved = accepted_args(name), optimizer_table()[name]["reserved"]
    found = []
    for key, value in plan["optimizer"]["args"].items():
        span = layers.span(f"optimizer.args.{key}") or layers.span("optimizer.name")
        if key in reserved:
            found.append(make("SDX0540", f"`{key}` is not a recipe argument of `{name}`", span,
                              help=f"sdxlc sets it: {reserved[key]}"))
        elif key not in known:
            hint = suggestion(key, known) or f"`{name}` takes: " + ", ".join(f"`{k}`" for k in known)
            found.append(make("SDX0540", f"`{name}` has no argument `{key}`", span, help=hint))
        elif (problem := arg_problem(name, key, value)) is not None:
            default = known[key]["default"]
            found.append(make("SDX0541", f"`{key}` of `{name}`: {problem}", span,
                              help=f"its default is `{key}={_arg_text(default)}`"))
    args = plan["optimizer"]["args"]
    if args.get("foreach") is True and args.get("fused") is True:  # torch refuses the pair
        found.append(make("SDX0541", f"`foreach=true` with `fused=true` for `{name}`: torch steps one way",
                          layers.span("optimizer.args.fused") or layers.span("optimizer.name"),
                          help="keep one of them"))
    return found


def optimizer_on_device(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Paged optimizers keep their state in CUDA unified memory: on a CPU there is nothing to page."""
    name, device = plan["optimizer"]["name"], plan["hardware"]["device"]
    if device in optimizer_table()[name]["devices"]:
        return []
    unpaged = name.removeprefix("paged_")
    return [
        make(
            "SDX0542",
            f"`{name}` needs CUDA; the `{plan['hardware']['profile']}` profile has none",
            layers.span("optimizer.name") or layers.span("profile"),
            help=f"use `{unpaged}` (its 8-bit state steps on the CPU), or a CUDA profile",
        )
    ]


def adafactor_with_clipping(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Adafactor scales its updates by their RMS (clip_threshold): gradient clipping on top distorts them."""
    optimizer = plan["optimizer"]
    if optimizer["name"] != "adafactor" or optimizer["max_grad_norm"] == 0:
        return []
    return [
        make(
            "SDX0543",
            f"Adafactor with gradient clipping (max_grad_norm {optimizer['max_grad_norm']:g})",
            layers.span("optimizer.max_grad_norm"),
            help="`max_grad_norm 0`: Adafactor clips its own updates (`args clip_threshold=1.0`)",
        )
    ]


def adafactor_relative_step(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """With relative_step Adafactor computes its own learning rate: a schedule cannot shape it."""
    optimizer, schedule = plan["optimizer"], plan["schedule"]["name"]
    relative = optimizer["name"] == "adafactor" and optimizer["args"].get("relative_step")
    if not relative or schedule == "constant":
        return []
    return [
        make(
            "SDX0544",
            f"Adafactor's relative_step computes the learning rate: `schedule {schedule}` would be ignored",
            layers.span("schedule.name"),
            help="drop the schedule (`schedule constant`), or use `args relative_step=false` with an `lr`",
            related=layers.related("optimizer.args.relative_step", "relative_step set here"),
        )
    ]


def adafactor_warmup_init(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Adafactor's warmup_init warms up its relative step; without relative_step the class refuses it."""
    optimizer = plan["optimizer"]
    args = optimizer["args"]
    if optimizer["name"] != "adafactor" or not args.get("warmup_init") or args.get("relative_step"):
        return []
    return [
        make(
            "SDX0546",
            "Adafactor's warmup_init needs relative_step=true",
            layers.span("optimizer.args.warmup_init"),
            help="add `relative_step=true`, or warm up with `schedule constant_with_warmup warmup 100`",
        )
    ]


def prodigy_learning_rate(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Prodigy estimates the step size itself; its lr is a multiplier on that estimate, meant to be ≈1."""
    lr = plan["optimizer"]["lr"]
    if plan["optimizer"]["name"] != "prodigy" or 0.1 <= lr <= 10:
        return []
    return [
        make(
            "SDX0545",
            f"Prodigy with lr {lr:g}: Prodigy expects lr ≈ 1",
            layers.span("optimizer.lr"),
            help="use `lr 1` and scale the estimated step with `args d_coef=…` if needed",
        )
    ]


def zero_terminal_snr_needs_v_prediction(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """At zero terminal SNR the last timestep holds no signal: predicting the noise there is the identity."""
    if not plan["training"]["zero_terminal_snr"] or plan["model"]["prediction"] == "v_prediction":
        return []
    return [
        make(
            "SDX0550",
            "zero terminal SNR with an epsilon-prediction model",
            layers.span("noise.zero_terminal_snr"),
            help="add `v_prediction` (a v-prediction model), or drop `zero_terminal_snr`",
        )
    ]


def launch_combination(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Processes, machines and strategy against the hardware and the method (docs/SCALE.md)."""
    launch, training = plan["launch"], plan["training"]
    world, strategy = launch["world_size"], launch["strategy"]
    cpu = plan["hardware"]["device"] == "cpu"
    strategy_span = layers.span("launch.strategy")
    where = layers.span("launch.processes") or layers.span("launch.machines") or strategy_span
    found: list[Diagnostic] = []
    if strategy != "ddp" and cpu:
        found.append(make("SDX0562", f"`strategy {strategy}` needs CUDA GPUs; the `cpu` profile has none",
                          strategy_span, help="use `strategy ddp` (gloo) on the CPU"))
    elif strategy != "ddp" and plan["method"]["kind"] == "lora":
        what = "weights, gradients and state" if strategy == "fsdp" else "optimizer state and gradients"
        found.append(make(
            "SDX0560", f"`strategy {strategy}` shards {what}, which a LoRA keeps small anyway", strategy_span,
            help="`strategy ddp` is simpler and usually faster for a LoRA; sharding pays off for "
            "full fine-tuning",
        ))
    if world > 1 and cpu:
        found.append(make("SDX0561", f"{world} processes on the CPU (gloo): this tests the multi-process "
                          "path; it is not faster", where,
                          help="plan for a GPU profile to train on several GPUs"))
    if launch["machines"] > 1 and cpu:
        found.append(make("SDX0563", "several machines on the `cpu` profile", layers.span("launch.machines"),
                          help="multi-machine runs are for GPU clusters: name the GPUs' profile"))
    if world > 1 and training["batches_per_epoch"] < launch["batches_per_step"]:
        found.append(make(
            "SDX0564",
            f"an epoch has {training['batches_per_epoch']} batches; one step over {world} processes takes "
            f"{launch['batches_per_step']}: batches repeat within every step",
            where, help="add images or repeats, or lower `batch`, `accumulate` or the process count",
        ))
    return found


CHECKS: tuple[Check, ...] = (
    cached_latents_with_pixel_augmentation,
    cached_te_with_caption_changes,
    cached_te_with_te_training,
    bucket_step_multiple_of_32,
    fp16_with_stock_vae,
    precision_supported,
    *PRECISION_CHECKS,
    timestep_range,
    something_to_train,
    init_normal_with_lora,
    optimizer_args_known,
    optimizer_on_device,
    adafactor_with_clipping,
    adafactor_relative_step,
    adafactor_warmup_init,
    prodigy_learning_rate,
    zero_terminal_snr_needs_v_prediction,
    launch_combination,
    *METHOD_CHECKS,
    *LLLITE_CHECKS,
    *BOUND_CHECKS,
    *VALIDATION_CHECKS,
    *CADENCE_CHECKS,
    *LOWVRAM_CHECKS,
    *COMPILE_CHECKS,
)


def _round32(value: int) -> int:
    return value // 32 * 32


def run_checks(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for check in CHECKS:
        found.extend(check(plan, layers))
    return found




def _arg_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, list):
        return ",".join(_arg_text(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
