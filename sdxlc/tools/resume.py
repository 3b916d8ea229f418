"""May a run resume from a checkpoint of another plan? The same semantic diff as `sdxlc diff`, judged.

- cosmetic, logging (save, sample, log cadence) and estimate changes are accepted;
- schedule changes (lr, schedule, more or fewer steps) need `--allow schedule`: the runtime then
  rebuilds the learning-rate schedule from the current step;
- numerics changes (noise, batch, clipping…) need `--allow numerics`, data changes `--allow data`;
- resume-breaking changes (method, rank, targets, base model, optimizer family, precision) are refused:
  start a new run from the last artifact instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxlc.plan.diff import Change, diff_plans

ACCEPTED = ("cosmetic", "logging", "estimate")
ALLOWABLE = {"schedule": "schedule", "numerics": "numerics", "cache-invalidating": "data"}
# Numerics changes that a checkpoint cannot carry across (its weights and state are in those dtypes).
BREAKING_PATHS = ("precision.", "hardware.device")
# ... except the settings that only move frozen components (`offload …`) or store them (`base fp8`, which
# needs `--allow numerics`): the checkpoint's trained weights and state do not change dtype.
FROZEN_ONLY = ("precision.offload_text_encoders", "precision.offload_vae", "precision.base_fp8")


@dataclass
class Verdict:
    accepted: list[Change] = field(default_factory=list)
    allowed: list[Change] = field(default_factory=list)
    needs: dict[str, list[Change]] = field(default_factory=dict)  # --allow word → changes
    breaking: list[Change] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.needs and not self.breaking

    @property
    def rebuild_schedule(self) -> bool:
        return any(c.kind == "schedule" for c in self.allowed)

    def explain(self, artifact: Path | None) -> str:
        lines: list[str] = []
        if self.breaking:
            lines.append("these changes cannot be resumed from the checkpoint:")
            lines += [f"  {_line(c)}" for c in self.breaking]
            if artifact is not None:
                lines.append(f'to start a new run from its weights instead, add `lora … from "{artifact}"`')
                lines += _resize_hint(self.breaking, artifact)
        for word, changes in self.needs.items():
            lines.append(f"these changes need `--allow {word}`:")
            lines += [f"  {_line(c)}" for c in changes]
        return "\n".join(lines)


def judge(old: dict[str, Any], new: dict[str, Any], allow: frozenset[str] = frozenset()) -> Verdict:
    """Class every difference between the checkpoint's plan and the new one."""
    verdict = Verdict()
    for change in diff_plans(old, new):
        if change.kind == "resume-breaking" or (change.path.startswith(BREAKING_PATHS)
                                                 and not change.path.startswith(FROZEN_ONLY)):
            verdict.breaking.append(change)
        elif change.kind in ACCEPTED:
            verdict.accepted.append(change)
        elif ALLOWABLE.get(change.kind) in allow:
            verdict.allowed.append(change)
        else:
            verdict.needs.setdefault(ALLOWABLE.get(change.kind, change.kind), []).append(change)
    return verdict


def _resize_hint(breaking: list[Change], artifact: Path) -> list[str]:
    """A lower LoRA rank: the artifact resized to it (SVD) is a file the new run can start from."""
    rank = next((c for c in breaking if c.path == "method.rank"), None)
    if rank is None or not isinstance(rank.new, int) or not isinstance(rank.old, int) or rank.new >= rank.old:
        return []
    smaller = artifact.with_name(f"{artifact.stem}-rank{rank.new}{artifact.suffix}")
    return [f'for rank {rank.new}, resize it first and start from that file: `sdxlc lora resize "{artifact}" '
            f'-o "{smaller}" --rank {rank.new}`, then `lora … from "{smaller}"`']


def _line(change: Change) -> str:
    return f"{change.path}: {change.old!r} → {change.new!r} ({change.kind})"
