"""Checks on when things happen during the run: cadences longer than the run, and Adafactor's schedule.

Both are warnings: the plan is valid, but it does not do what the recipe seems to ask.
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang.defaults import ADAFACTOR_SCHEDULE
from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers

# recipe section → (plan path of its cadence in steps, what the run does without it)
_CADENCES = {
    "save": ("save.every_steps", "no intermediate save is written, only the final one"),
    "sample": ("sample.every_steps", "no intermediate samples are rendered, only the final ones"),
    "log": ("log.every_steps", "only the last step is logged"),
    "validate": ("validate.every_steps", "the validation loss is computed only after the last step"),
}


def cadence_beyond_run(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """`save every 500 steps` in a run of 300 steps never fires: say so at the clause."""
    total = int(plan["training"]["total_steps"])
    found = []
    for section, (plan_path, outcome) in _CADENCES.items():
        every = _dig(plan, plan_path)
        if not layers.given(f"{section}.every") or every is None or every <= total:
            continue
        found.append(make(
            "SDX0590",
            f"`{_written(layers, section)}` is longer than the run ({total} steps): {outcome}",
            layers.span(f"{section}.every"),
            help=_help(section, total),
        ))
    return found


def adafactor_schedule(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Adafactor with an explicit lr is meant to run at a constant rate after a short warmup (kohya's
    advice): another schedule the recipe picks is allowed, but worth a word."""
    optimizer, schedule = plan["optimizer"], plan["schedule"]["name"]
    if optimizer["name"] != "adafactor" or optimizer["args"].get("relative_step"):
        return []
    advised = ADAFACTOR_SCHEDULE["schedule.name"]
    if schedule == advised or not layers.given("schedule.name"):
        return []
    return [make(
        "SDX0591",
        f"Adafactor with `schedule {schedule}`: Adafactor is usually trained with `{advised}`",
        layers.span("schedule.name"),
        help=f"`schedule {advised} warmup {ADAFACTOR_SCHEDULE['schedule.warmup_steps']}` (the default for "
        "Adafactor when the recipe names no schedule), or keep this one if it is meant",
        related=layers.related("optimizer.name", "Adafactor chosen here"),
    )]


def _written(layers: Layers, section: str) -> str:
    """The cadence as the recipe wrote it: `save every 500 steps`, `sample every 2 epochs`, `log every 50`."""
    every, _ = layers.get(f"{section}.every")
    count = f"{every:g}" if isinstance(every, float) else str(every)
    if section == "log":
        return f"log every {count}"
    unit, _ = layers.get(f"{section}.unit", "steps")
    return f"{section} every {count} {unit}"


def _help(section: str, total: int) -> str:
    shorter = max(1, total // 2)
    if section == "log":
        return f"log more often, e.g. `log every {max(1, total // 10)}`"
    return (f"to {section} along the way, give a shorter cadence, e.g. `{section} every {shorter} steps`; "
            "or drop the cadence if the final one is enough")


def _dig(plan: dict[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".")
    return (plan.get(section) or {}).get(key)


CADENCE_CHECKS = (cadence_beyond_run, adafactor_schedule)
