"""The fit solver: with `fit auto`, apply the memory levers the recipe left open until the run fits.

Levers come from the estimator, cheapest first. A lever is applied only where no recipe layer
(the recipe, a `use`d file, `--set`) pinned the setting it changes; each one applied is recorded
in the plan's provenance (source `solver`) and warnings with what it saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Plan paths a lever changes → the recipe path the solver sets.
RECIPE_PATH = {
    "data.cache.text_encoder": "cache.text_encoder",
    "data.cache.latents": "cache.latents",
    "training.gradient_checkpointing": "training.gradient_checkpointing",
    "optimizer.name": "optimizer.name",
    "precision.mixed": "precision.mixed",
    "training.batch_size": "training.batch_size",
    "training.accumulate": "training.accumulate",
    "method.fused_backward": "finetune.fused_backward",
}


@dataclass(frozen=True)
class Applied:
    name: str
    description: str
    saves_bytes: int
    changes: dict[str, Any]  # plan path → value

    def sets(self) -> list[str]:
        """The lever as `--set`-style overrides of recipe paths."""
        return [f"{RECIPE_PATH[path]}={_text(value)}" for path, value in self.changes.items()]

    def note(self) -> str:
        return f"fit auto: {self.description} (saves about {self.saves_bytes / 2**30:.2f} GiB)"


def next_lever(options: list[dict[str, Any]], pinned: set[str], tried: set[str]) -> Applied | None:
    """The cheapest lever not tried yet whose settings the recipe left open."""
    for lever in options:
        if lever["name"] in tried:
            continue
        paths = list(lever["changes"])
        if any(p not in RECIPE_PATH or RECIPE_PATH[p] in pinned for p in paths):
            continue
        return Applied(lever["name"], lever["description"], int(lever["saves_bytes"]), dict(lever["changes"]))
    return None


def mark(plan: dict[str, Any], applied: list[Applied]) -> None:
    """Record what the solver changed: provenance and one warning per lever."""
    for lever in applied:
        for path in lever.changes:
            plan["provenance"][path] = {"source": "solver", "at": lever.name}
        plan["warnings"].append(lever.note())


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
