"""Resolve a lowered recipe into a plan: defaults, the hardware profile, paths and step arithmetic.

A pure step: it reads the recipe document (and the dataset folders it names) and returns the plan
without its estimate and hash, plus diagnostics. It never changes the document.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxlc import __version__
from sdxlc.lang import sources
from sdxlc.lang.defaults import (
    ADAFACTOR_SCHEDULE,
    DEVICE_DEFAULTS,
    OPTIMIZER_ARGS,
    OPTIMIZER_DEFAULTS,
    default_output,
)
from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers, Provenance
from sdxlc.lang.lower import Lowered
from sdxlc.plan.manifest import Manifest
from sdxlc.resolve.cache_defaults import apply_cache_defaults
from sdxlc.resolve.compile import resolve_compile
from sdxlc.resolve.data import resolve_data
from sdxlc.resolve.implementation import resolve_implementation
from sdxlc.resolve.index import Index
from sdxlc.resolve.launch import resolve_launch
from sdxlc.resolve.lllite import sample_controls
from sdxlc.resolve.loader import resolve_loader
from sdxlc.resolve.lowvram import lowvram_fields
from sdxlc.resolve.method import resolve_method
from sdxlc.resolve.model_source import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    SHIPPED_CONFIG,
    architecture,
    config_mismatch,
    config_problem,
    family_problem,
    model_files,
    sdxl_problem,
)
from sdxlc.resolve.optimizers import accepted_args, normalise_arg, optimizer_table
from sdxlc.resolve.profiles import Profile, ProfileError, load_profile, probe_auto
from sdxlc.resolve.trackers import resolve_trackers
from sdxlc.resolve.validation import resolve_ema, resolve_validate

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Resolution:
    plan: dict[str, Any] | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    profile: Profile | None = None
    manifest: Manifest | None = None  # the sample manifest the plan's `data.manifest` names


class _Builder:
    """Collects resolved values with their provenance, keyed by plan path."""

    def __init__(self, layers: Layers) -> None:
        self.layers = layers
        self.provenance: dict[str, Provenance] = {}

    def take(self, recipe_path: str, plan_path: str, default: Any = None) -> Any:
        value, origin = self.layers.get(recipe_path, default)
        self.provenance[plan_path] = origin
        return value

    def derived(self, plan_path: str, value: Any, source: str = "derived") -> Any:
        self.provenance[plan_path] = {"source": source, "at": None}
        return value


def resolve(lowered: Lowered, recipe: Path, profile_override: str | None = None) -> Resolution:
    recipe_dir = recipe.resolve().parent
    diags: list[Diagnostic] = []
    source = str(lowered.doc.get("model", {}).get("source", "tiny"))
    family = "tiny" if source == "tiny" else "sdxl"
    layers = Layers(lowered, family)
    b = _Builder(layers)
    model = _model(b, recipe_dir, diags)
    profile = _profile(b, family, profile_override, diags)
    if profile is None:
        return Resolution(None, diags)
    hardware = {
        "profile": profile.name,
        "name": profile.title,
        "device": profile.device,
        "vram_bytes": profile.usable_vram_bytes,
        "bf16": profile.bf16,
        "fp16": profile.fp16,
    }
    for key in ("name", "device", "vram_bytes", "bf16", "fp16"):
        b.derived(f"hardware.{key}", None, "profile")
    batch_size = b.take("training.batch_size", "training.batch_size")
    data = resolve_data(layers, recipe_dir, batch_size)
    diags.extend(data.diagnostics)
    model["files"] = b.derived("model.files", _model_files(model, data.section["cache"]["dir"]))
    b.provenance.update(data.provenance)
    training = _training(b, data.section, diags, profile.device)
    training["ema"] = resolve_ema(b, training)  # sdxlc/resolve/validation.py
    training["compile"] = resolve_compile(b, data.bucket_sizes, training["batch_size"])
    precision, optimizer = _precision(b, profile), _optimizer(b, profile.device)
    launch = resolve_launch(b, training, precision, optimizer, profile)  # steps per rank for N processes
    warnings = list(data.warnings)
    plan: dict[str, Any] = {
        "plan_version": 1,
        "sdxlc_version": __version__,
        "plan_hash": "0" * 64,
        "sources": sources.describe(lowered.sources),
        "model": model,
        "hardware": hardware,
        "method": _method(b, recipe_dir, optimizer["lr"], diags),
        "precision": precision,
        "data": data.section,
        "optimizer": optimizer,
        "schedule": _schedule(b, training["total_steps"], optimizer, diags),
        "training": training,
        "save": _save(b, training["steps_per_epoch"], recipe_dir),
        "sample": {**_sample(b, data.section["resolution"], training["seed"], training["steps_per_epoch"]),
                   "controls": sample_controls(b, recipe_dir, diags)},
        "validate": resolve_validate(b, data.validation, training, training["ema"] is not None),
        "output": _output(b, recipe, recipe_dir),
        "log": {"every_steps": b.take("log.every", "log.every_steps"),
                "tensorboard": b.take("log.tensorboard", "log.tensorboard"),
                "trackers": resolve_trackers(b.layers, b.provenance)},
        "launch": launch,
        "estimate": {},
        "provenance": {},
        "warnings": warnings,
    }
    apply_cache_defaults(plan, layers, b.provenance)  # needs the method and the datasets
    data.section["loader"] = resolve_loader(layers, profile.device, data.section["cache"], b.provenance)
    plan["provenance"] = dict(sorted(b.provenance.items()))
    return Resolution(plan, diags, profile, data.manifest)


def _model_files(model: dict[str, Any], cache_dir: str) -> list[dict[str, Any]]:
    index = Index.in_dir(cache_dir)
    try:
        return model_files(model, index)
    except OSError:  # an unreadable model file is reported when the model is checked or loaded
        return []
    finally:
        index.save()


def _model(b: _Builder, recipe_dir: Path, diags: list[Diagnostic]) -> dict[str, Any]:
    source = b.take("model.source", "model.source", "tiny")
    config = b.take("model.config", "model.config")
    allow_pickle = bool(b.take("model.allow_pickle", "model.allow_pickle", False))
    span = b.layers.span("model.source")
    kind = "tiny"
    if source != "tiny":
        path = (b.layers.base_dir("model.source", recipe_dir) / source).resolve()
        if path.is_dir():
            kind, source = "diffusers_folder", str(path)
        elif source.lower().endswith(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES):
            kind = "pickle" if source.lower().endswith(PICKLE_SUFFIXES) else "single_file"
            source = str(path)
            if not path.is_file():
                diags.append(make("SDX0510", f"the model file {path} does not exist", span,
                                  help="paths are relative to the recipe that names them"))
            elif kind == "single_file" and (problem := sdxl_problem(path)):
                diags.append(make("SDX0510", problem, span,
                                  help="name an SDXL checkpoint, a diffusers folder or a hub id"))
            elif kind == "pickle" and not allow_pickle:
                diags.append(make(
                    "SDX0512", f"`{path.name}` is a pickle checkpoint: loading one can run code hidden in it",
                    span, help="add `allow pickle` to the model line if you trust the file (it is read with "
                    "torch.load(weights_only=True)), or convert it to .safetensors"))
        elif _HUB_ID.match(source):
            kind = "hub"
        else:
            diags.append(make("SDX0511", f"model `{source}` is neither a folder nor a hub id", span,
                              help=f"looked for the folder {path}"))
        if problem := family_problem(kind, source):
            diags.append(make("SDX0517", problem, span, help="name an SDXL base model: a diffusers folder, "
                              "a .safetensors file or a hub id (stabilityai/stable-diffusion-xl-base-1.0)"))
    if kind in ("single_file", "pickle"):
        if config is None:
            config = b.derived("model.config", str(SHIPPED_CONFIG))
        else:
            config = str((b.layers.base_dir("model.config", recipe_dir) / config).resolve())
            if problem := config_problem(Path(config)):
                diags.append(make("SDX0513", problem, b.layers.span("model.config"),
                                  help="a diffusers folder (no weights needed); leave `config` out for SDXL"))
        usable = kind == "single_file" and not any(d.code == "SDX0510" for d in diags)
        if usable and (problem := config_mismatch(Path(source), Path(config))):
            diags.append(make("SDX0518", problem, b.layers.span("model.config") or span,
                              help="name the model's configs with `config` (a diffusers folder, no weights)"))
    elif config is not None:
        diags.append(make("SDX0514", "`config` only applies to a single-file model; ignored",
                          b.layers.span("model.config"), help=f"the `{kind}` model brings its own configs"))
        config = None
    vae = b.take("model.vae", "model.vae")
    if vae is not None:
        folder = (b.layers.base_dir("model.vae", recipe_dir) / vae).resolve()
        vae = str(folder) if folder.is_dir() or folder.is_file() else vae
    b.derived("model.kind", None)
    return {
        "source": source,
        "kind": kind,
        "config": config,
        "allow_pickle": allow_pickle,
        "init_std": b.take("model.init_std", "model.init_std"),
        "vae": vae,
        "prediction": b.take("model.prediction", "model.prediction"),
        "tiny_seed": b.take("model.tiny_seed", "model.tiny_seed"),
        "architecture": b.derived("model.architecture", architecture(kind, source, config)),
        "base_model_version": b.derived(
            "model.base_model_version", "sdxlc_tiny" if kind == "tiny" else "sdxl_base_v1-0"
        ),
    }


def _profile(b: _Builder, family: str, override: str | None, diags: list[Diagnostic]) -> Profile | None:
    name, origin = b.layers.get("profile", "cpu" if family == "tiny" else "auto")
    if override:
        name, origin = override, {"source": "set", "at": "--profile"}
    b.provenance["hardware.profile"] = origin
    span = b.layers.span("profile")
    if name == "auto":
        probed = probe_auto()
        if isinstance(probed, str):
            diags.append(
                make(
                    "SDX0601",
                    f"`profile auto` found no GPU ({probed}); planning for `cpu`",
                    span,
                    help="name the card the run is for, e.g. `profile rtx4090-24gb`",
                )
            )
            name = "cpu"
        else:
            return probed
    try:
        return load_profile(name)
    except ProfileError as err:
        hint = f"did you mean `{err.suggestions[0]}`?" if err.suggestions else "see `sdxlc profiles`"
        diags.append(make("SDX0602", str(err), span, help=hint))
        return None


def _method(b: _Builder, recipe_dir: Path, lr: float, diags: list[Diagnostic]) -> dict[str, Any]:
    """What is trained and how (sdxlc/resolve/method.py, docs/METHODS.md)."""
    return resolve_method(b, recipe_dir, lr, diags)


def _precision(b: _Builder, profile: Profile) -> dict[str, Any]:
    fallback = (
        "bf16"
        if profile.device == "cuda" and profile.bf16
        else ("fp16" if profile.device == "cuda" else "fp32")
    )
    mixed = b.take("precision.mixed", "precision.mixed", fallback)
    if not b.layers.given("precision.mixed"):
        b.provenance["precision.mixed"] = {"source": "profile", "at": None}
    return {
        "mixed": mixed,
        "vae_fp32": b.take("precision.vae_fp32", "precision.vae_fp32", mixed == "fp16"),
        "vae_slicing": b.take("precision.vae_slicing", "precision.vae_slicing", False),
        **lowvram_fields(b, profile),
    }


def _optimizer(b: _Builder, device: str) -> dict[str, Any]:
    """The optimizer with every argument sdxlc decides; `args` are checked later (sdxlc/check/semantic.py).
    The recipe's `foreach` / `fused` arguments become `implementation` (sdxlc/resolve/implementation.py)."""
    name = b.take("optimizer.name", "optimizer.name")
    given = b.take("optimizer.args", "optimizer.args")
    known = accepted_args(name)
    args = {key: normalise_arg(name, key, value) if key in known else value for key, value in given.items()}
    implementation, args = resolve_implementation(b, name, args, device)
    return {
        "name": name,
        "class": b.derived("optimizer.class", optimizer_table()[name]["class"], "derived"),
        "lr": _per_optimizer(b, name, "optimizer.lr", "optimizer.lr"),
        "args": {**OPTIMIZER_ARGS.get(name, {}), **args},
        "implementation": implementation,
        "max_grad_norm": _per_optimizer(b, name, "optimizer.max_grad_norm", "optimizer.max_grad_norm"),
    }


def _per_optimizer(b: _Builder, name: str, recipe_path: str, plan_path: str) -> Any:
    """A recipe value, or when the recipe leaves it out, the optimizer's own default if it has one."""
    defaults = OPTIMIZER_DEFAULTS.get(name, {})
    if recipe_path in defaults and not b.layers.given(recipe_path):
        value = b.derived(plan_path, defaults[recipe_path], "default")
        b.provenance[plan_path]["at"] = f"for {name}"  # `sdxlc plan` shows why
        return value
    return b.take(recipe_path, plan_path)


def _per_device(b: _Builder, device: str, recipe_path: str, plan_path: str) -> Any:
    """A recipe value, or when the recipe leaves it out, the profile device's default if it has one."""
    defaults = DEVICE_DEFAULTS.get(device, {})
    if recipe_path in defaults and not b.layers.given(recipe_path):
        return b.derived(plan_path, defaults[recipe_path], "profile")
    return b.take(recipe_path, plan_path)


def _training(b: _Builder, data: dict[str, Any], diags: list[Diagnostic], device: str) -> dict[str, Any]:
    batch = b.take("training.batch_size", "training.batch_size")
    accumulate = b.take("training.accumulate", "training.accumulate")
    batches = max(1, sum(row["batches"] for row in data["buckets"]["table"]))
    per_epoch = max(1, math.ceil(batches / accumulate))
    if b.layers.given("training.epochs") and b.layers.given("training.steps"):
        diags.append(
            make(
                "SDX0505",
                "both `steps` and `epochs` are given",
                b.layers.span("training.epochs"),
                help="keep one: `steps N` or `epochs N`",
                related=b.layers.related("training.steps", "steps set here"),
            )
        )
    if b.layers.given("training.epochs"):
        epochs = b.take("training.epochs", "training.epochs")
        total = b.derived("training.total_steps", epochs * per_epoch)
    else:
        total = b.take("training.steps", "training.total_steps")
        epochs = b.derived("training.epochs", math.ceil(total / per_epoch))
    return {
        "batch_size": batch,
        "accumulate": accumulate,
        "effective_batch": b.derived("training.effective_batch", batch * accumulate),
        "batches_per_epoch": b.derived("training.batches_per_epoch", batches),
        "steps_per_epoch": b.derived("training.steps_per_epoch", per_epoch),
        "epochs": epochs,
        "total_steps": total,
        "gradient_checkpointing": b.take(
            "training.gradient_checkpointing", "training.gradient_checkpointing"
        ),
        "channels_last": _per_device(b, device, "training.channels_last", "training.channels_last"),
        "seed": b.take("training.seed", "training.seed"),
        "noise_offset": b.take("noise.offset", "training.noise_offset"),
        "snr_gamma": b.take("noise.snr_gamma", "training.snr_gamma"),
        "timestep_min": b.take("noise.timestep_min", "training.timestep_min"),
        "timestep_max": b.take("noise.timestep_max", "training.timestep_max"),
        "multires_iterations": b.take("noise.multires_iterations", "training.multires_iterations"),
        "multires_discount": b.take("noise.multires_discount", "training.multires_discount"),
        "input_perturbation": b.take("noise.perturbation", "training.input_perturbation"),
        "debiased": b.take("noise.debiased", "training.debiased"),
        "zero_terminal_snr": b.take("noise.zero_terminal_snr", "training.zero_terminal_snr"),
        "loss": b.take("loss.type", "training.loss"),
        "huber_c": b.take("loss.huber_c", "training.huber_c"),
    }


def _schedule(
    b: _Builder, total_steps: int, optimizer: dict[str, Any], diags: list[Diagnostic]
) -> dict[str, Any]:
    adafactor = _adafactor_schedule(b, optimizer)
    if adafactor:
        name = b.derived("schedule.name", ADAFACTOR_SCHEDULE["schedule.name"], "default")
        b.provenance["schedule.name"]["at"] = "for adafactor"
    else:
        name = b.take("schedule.name", "schedule.name")
    if b.layers.given("schedule.warmup_percent"):
        percent = b.take("schedule.warmup_percent", "schedule.warmup_steps")
        warmup = round(total_steps * percent / 100)
    elif adafactor and not b.layers.given("schedule.warmup_steps"):
        warmup = b.derived("schedule.warmup_steps",
                           min(ADAFACTOR_SCHEDULE["schedule.warmup_steps"], total_steps // 10), "default")
        b.provenance["schedule.warmup_steps"]["at"] = "for adafactor"  # 100 steps, at most 10% of the run
    else:
        warmup = b.take("schedule.warmup_steps", "schedule.warmup_steps")
    if name == "constant" and warmup > 0:
        diags.append(
            make(
                "SDX0506",
                "the `constant` schedule has no warmup",
                b.layers.place("schedule.name", "schedule.warmup_steps", "schedule.warmup_percent"),
                help="use `schedule constant_with_warmup`, or drop the warmup",
            )
        )
    if warmup >= total_steps:
        diags.append(
            make(
                "SDX0507",
                f"warmup ({warmup} steps) is not shorter than the run ({total_steps} steps)",
                b.layers.span("schedule.warmup_steps") or b.layers.span("schedule.warmup_percent"),
                help="shorten the warmup or train longer",
            )
        )
    return {"name": name, "warmup_steps": warmup}


def _adafactor_schedule(b: _Builder, optimizer: dict[str, Any]) -> bool:
    """Whether the schedule is Adafactor's default: Adafactor with an explicit lr (not its relative step,
    which needs `constant`) and no schedule named by the recipe."""
    explicit_lr = optimizer["name"] == "adafactor" and not optimizer["args"].get("relative_step")
    return explicit_lr and not b.layers.given("schedule.name")


def _cadence(b: _Builder, section: str, plan_path: str, steps_per_epoch: int) -> int | None:
    every = b.take(f"{section}.every", plan_path)
    if every is None:
        return None
    unit, _ = b.layers.get(f"{section}.unit", "steps")
    return int(every * steps_per_epoch if unit == "epochs" else every)


def _save(b: _Builder, steps_per_epoch: int, recipe_dir: Path) -> dict[str, Any]:
    return {
        "every_steps": _cadence(b, "save", "save.every_steps", steps_per_epoch),
        "keep": b.take("save.keep", "save.keep"),
        "dtype": b.take("save.dtype", "save.dtype"),
        "private": b.take("save.private", "save.private", False),
        "relative_to": b.derived("save.relative_to", str(recipe_dir)),
    }


def _sample(b: _Builder, resolution: int, seed: int, steps_per_epoch: int) -> dict[str, Any]:
    size = b.take("sample.size", "sample.width", resolution)
    b.provenance["sample.height"] = b.provenance["sample.width"]
    return {
        "prompts": b.take("sample.prompts", "sample.prompts", []),
        "every_steps": _cadence(b, "sample", "sample.every_steps", steps_per_epoch),
        "width": size,
        "height": size,
        "steps": b.take("sample.steps", "sample.steps"),
        "cfg": b.take("sample.cfg", "sample.cfg"),
        "seed": b.take("sample.seed", "sample.seed", seed),
        "before": b.take("sample.before", "sample.before", False),
    }


def _output(b: _Builder, recipe: Path, recipe_dir: Path) -> dict[str, Any]:
    given = b.take("output.dir", "output.dir", default_output(recipe.stem))
    folder = (b.layers.base_dir("output.dir", recipe_dir) / given).resolve()
    return {"dir": str(folder), "name": b.take("output.name", "output.name", recipe.stem)}
