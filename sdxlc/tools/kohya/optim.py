"""Optimizer and learning-rate schedule: kohya's `optimizer_type`, `optimizer_args`, `lr_scheduler`."""

from __future__ import annotations

import ast
import json
from functools import cache
from typing import Any

from sdxlc.plan.schemas import SCHEMA_DIR
from sdxlc.tools.kohya.build import Builder, num

# kohya's optimizer_type (lowercase; full class paths too) → sdxlc name and the arguments kohya adds
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adamw": ("adamw", {}), "torch.optim.adamw": ("adamw", {}),
    "adamw8bit": ("adamw8bit", {}), "bitsandbytes.optim.adamw8bit": ("adamw8bit", {}),
    "pagedadamw8bit": ("paged_adamw8bit", {}), "bitsandbytes.optim.pagedadamw8bit": ("paged_adamw8bit", {}),
    "lion": ("lion", {}), "lion_pytorch.lion": ("lion", {}), "bitsandbytes.optim.lion": ("lion", {}),
    "lion8bit": ("lion8bit", {}), "bitsandbytes.optim.lion8bit": ("lion8bit", {}),
    "pagedlion8bit": ("paged_lion8bit", {}), "bitsandbytes.optim.pagedlion8bit": ("paged_lion8bit", {}),
    "sgdnesterov": ("sgd", {"momentum": 0.9, "nesterov": True}),
    "torch.optim.sgd": ("sgd", {"momentum": 0, "nesterov": False}),
    "prodigy": ("prodigy", {}), "prodigyopt.prodigy": ("prodigy", {}),
    "adafactor": ("adafactor", {"relative_step": True, "scale_parameter": True, "warmup_init": False}),
    "transformers.optimization.adafactor": ("adafactor", {"relative_step": True, "scale_parameter": True,
                                                          "warmup_init": False}),
}
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# sdxlc's max_grad_norm where it differs from 1 (kohya's default)
_CLIP_DEFAULTS = {"adafactor": 0.0}


@cache
def optimizer_args() -> dict[str, set[str]]:
    table = json.loads((SCHEMA_DIR / "optimizers.json").read_text(encoding="utf-8"))["optimizers"]
    return {name: set(entry["args"]) for name, entry in table.items()}


def map_optimizer(b: Builder, lr: float) -> tuple[str, bool]:
    """Writes `lr …` or `optimizer … lr … args …`; returns the sdxlc optimizer name and whether it
    computes its own learning rate (Adafactor's relative_step)."""
    kind = str(b.take("optimizer_type", "") or "")
    if not kind:
        kind = "AdamW8bit" if b.flag("use_8bit_adam") else "Lion" if b.flag("use_lion_optimizer") else "AdamW"
    entry = OPTIMIZERS.get(kind.lower())
    if entry is None:
        b.note("optimizer_type", kind, "an optimizer sdxlc does not have; AdamW is used")
        b.add(f"lr {num(lr)} adamw")
        return "adamw", False
    name, implied = entry
    args = {**implied, **_args(b, name)}
    relative = name == "adafactor" and bool(args.get("relative_step"))
    if args:
        pairs = " ".join(f"{key}={_value(value)}" for key, value in args.items())
        b.add(f"optimizer {name} lr {num(lr)} args {pairs}")
    else:
        b.add(f"lr {num(lr)} {name}")
    clip = b.number("max_grad_norm", 1.0)
    if clip is not None and clip != _CLIP_DEFAULTS.get(name, 1.0):
        b.add(f"max_grad_norm {num(clip)}")
    return name, relative


def _args(b: Builder, name: str) -> dict[str, Any]:
    raw = b.take("optimizer_args") or []
    accepted, found = optimizer_args().get(name, set()), {}
    for pair in raw if isinstance(raw, list) else str(raw).split():
        key, _, text = str(pair).partition("=")
        value = _literal(text)
        if key in accepted and value is not None:
            found[key] = value
        else:
            b.note("optimizer_args", pair, f"`{key}` is not an argument sdxlc passes to {name}")
    return found


def _literal(text: str) -> Any:
    """kohya reads an optimizer argument with `ast.literal_eval`, falling back to the text."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(text.strip().lower())
    return list(value) if isinstance(value, tuple) else value


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    if isinstance(value, int | float):
        return num(value)
    return str(value)


def map_schedule(b: Builder, relative: bool) -> None:
    """Writes `schedule …`; with Adafactor's relative_step, kohya's `adafactor` schedule is sdxlc's
    `constant` (both only report the rate Adafactor computes)."""
    name = str(b.take("lr_scheduler", "constant") or "constant")
    warmup = b.number("lr_warmup_steps", 0) or 0
    if relative:
        if name not in ("constant", "adafactor") or warmup:
            b.note("lr_scheduler", name, "Adafactor with relative_step computes its own rate: no schedule "
                   "or warmup applies")
        name, warmup = "constant", 0
    elif name not in SCHEDULES:
        b.note("lr_scheduler", name, "a schedule sdxlc does not have; `constant` is used")
        name = "constant"
    words = ["schedule", name]
    if warmup > 0:
        words += ["warmup", f"{num(round(warmup * 100, 6))}%" if warmup < 1 else str(int(warmup))]
    b.add(" ".join(words))
    cycles = b.number("lr_scheduler_num_cycles", 1)
    if name == "cosine_with_restarts" and cycles not in (None, 1):
        b.note("lr_scheduler_num_cycles", num(cycles), "sdxlc restarts the cosine once (1 cycle)")
    power = b.number("lr_scheduler_power", 1)
    if name == "polynomial" and power not in (None, 1):
        b.note("lr_scheduler_power", num(power), "sdxlc's polynomial schedule has power 1")
