"""The `sdxlc plan` report's lines for `validate` and `ema` (docs/TRAINING.md)."""

from __future__ import annotations

from typing import Any


def validation_lines(plan: dict[str, Any]) -> list[str]:
    """`  3 validation images (held out of the training data, seed 42), every 100 steps and at the end`."""
    lines = []
    validate = plan.get("validate")
    if validate:
        where = {"split": f"{validate['held_out']} held out of the training data",
                 "folder": f"from {validate['folder']}",
                 "both": f"{validate['held_out']} held out + {validate['count'] - validate['held_out']} from "
                         f"{validate['folder']}"}[validate["source"]]
        every = f"every {validate['every_steps']} steps and " if validate["every_steps"] else ""
        ema = " (raw and EMA weights)" if validate["ema"] else ""
        lines.append(f"  {validate['count']} validation images ({where}, seed {validate['seed']}): "
                     f"val_loss {every}after the last step{ema}")
    ema_settings = plan["training"].get("ema")
    if ema_settings:
        lines.append(f"  EMA of the trained weights: decay {ema_settings['decay']:g}, every "
                     f"{ema_settings['every']} step(s) after step {ema_settings['from_step']}")
    return lines
