"""The fit solver: with `fit auto`, apply the memory levers the recipe left open until the run fits.

Levers come from `sdxlc/estimate/levers.py`, cheapest first. A lever is applied only where no recipe layer
(the recipe, a `use`d file, `--set`) pinned the setting it changes — except a smaller batch, which keeps
the effective batch and so needs only `accumulate` open (OPEN_PATHS); each one applied is recorded in the
plan's provenance (source `solver`) and warnings with what it saved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    "method.full_bf16": "finetune.full_bf16",
    "precision.vae_slicing": "precision.vae_slicing",
    "precision.base_fp8": "precision.base_fp8",
    "precision.offload_text_encoders": "precision.offload_text_encoders",
    "precision.offload_vae": "precision.offload_vae",
}

# Levers that are alternatives for the same settings: when nothing else is left and the plan still does not
# fit, a later one replaces an earlier one (8-bit AdamW gives way to Adafactor with the fused backward pass).
ALTERNATIVES = frozenset({"optimizer_8bit", "optimizer_factored"})


# Levers that keep what the recipe asked although they move a setting it gave: the plan paths that must
# be open for them. `batch 4` without `accumulate` asks for an effective batch of 4; micro-batches of 2
# with 2 accumulation steps give the optimizer the same batch.
OPEN_PATHS = {"smaller_batch": ["training.accumulate"]}


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


def next_lever(options: list[dict[str, Any]], pinned: set[str], applied: list[Applied]) -> Applied | None:
    """The cheapest lever whose settings the recipe left open and no other applied lever has set.

    The same lever may apply again with new values (a batch halved twice), but one setting is never
    moved by two levers: once the 8-bit optimizer is chosen, Adafactor is not chosen on top of it —
    unless no other lever is left, when an alternative replaces it (`supersede`)."""
    owner = {path: a.name for a in applied for path in a.changes}
    found = _next(options, pinned, applied, owner)
    if found is None:
        found = _next(options, pinned, applied, {p: n for p, n in owner.items() if n not in ALTERNATIVES})
    return found


def supersede(applied: list[Applied], lever: Applied) -> list[Applied]:
    """The applied levers with `lever` added, less the alternatives whose settings it all moves again (what
    they saved is counted in `lever`'s saving)."""
    gone = [a for a in applied if a.name in ALTERNATIVES and a.name != lever.name
            and lever.name in ALTERNATIVES and set(a.changes) <= set(lever.changes)]
    saves = lever.saves_bytes + sum(a.saves_bytes for a in gone)
    return [a for a in applied if a not in gone] + [replace(lever, saves_bytes=saves)]


def _next(options: list[dict[str, Any]], pinned: set[str], applied: list[Applied],
          owner: dict[str, str]) -> Applied | None:
    done = {(a.name, _key(a.changes)) for a in applied}
    for lever in options:
        paths = list(lever["changes"])
        if (lever["name"], _key(lever["changes"])) in done:
            continue
        if any(p not in RECIPE_PATH for p in paths):
            continue
        if any(RECIPE_PATH[p] in pinned for p in OPEN_PATHS.get(lever["name"], paths)):
            continue
        if any(owner.get(p, lever["name"]) != lever["name"] for p in paths):
            continue
        return Applied(lever["name"], lever["description"], int(lever["saves_bytes"]), dict(lever["changes"]))
    return None


def _key(changes: dict[str, Any]) -> str:
    return repr(sorted(changes.items()))


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
