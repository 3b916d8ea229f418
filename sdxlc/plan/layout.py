"""Where a run keeps its checkpoints: `<output>/checkpoints/step-NNNNNN/`, complete once `state.json` is in.

Pure: shared by the runtime, which writes and reads checkpoints, and the compiler's resume verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdxlc.plan.sums import verify_folder

STATE_FILE = "state.json"
PREFIX = "step-"
# what every checkpoint holds (and its SHA256SUMS must list); `scaler.pt` only under fp16
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.json", "rng.safetensors",
                    "plan.json", STATE_FILE)


class ResumeError(Exception):
    """No checkpoint to resume, or one that cannot be read."""


def complete(out: Path) -> list[Path]:
    """Complete checkpoints under an output folder, oldest first (a torn save has no state file)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find(out: Path, which: str, skipped: list[str] | None = None) -> Path:
    """`latest` (the newest intact checkpoint under out) or an explicit checkpoint folder, which must be
    intact: every file as its `SHA256SUMS` lists it. Damaged checkpoints that `latest` passes over are
    described in `skipped`."""
    if which == "latest":
        found = complete(out)
        if not found:
            raise ResumeError(f"no checkpoint to resume under {out / 'checkpoints'}")
        passed: list[str] = []
        for folder in reversed(found):
            problems = verify_folder(folder, CHECKPOINT_FILES)
            if not problems:
                if skipped is not None:
                    skipped.extend(passed)
                return folder
            passed.append(f"skipped {folder.name}: {'; '.join(problems[:3])}")
        raise ResumeError(f"no intact checkpoint under {out / 'checkpoints'}:\n  " + "\n  ".join(passed))
    folder = Path(which)
    if not (folder / STATE_FILE).is_file():
        raise ResumeError(f"{folder} is not a complete checkpoint (no {STATE_FILE})")
    problems = verify_folder(folder, CHECKPOINT_FILES)
    if problems:
        raise ResumeError(f"{folder} is damaged: " + "; ".join(problems[:5]))
    return folder


def checkpoint_plan(folder: Path) -> dict[str, Any]:
    """The plan a checkpoint was running."""
    try:
        plan: dict[str, Any] = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot read the plan of checkpoint {folder}: {exc}") from exc
    return plan


def last_artifact(folder: Path, plan: dict[str, Any]) -> Path:
    """The LoRA file saved with a checkpoint (for the `from "…"` alternative)."""
    step = int(folder.name.removeprefix(PREFIX))
    out = Path(plan["output"]["dir"])
    candidate = out / f"{plan['output']['name']}-step{step:06d}.safetensors"
    return candidate if candidate.exists() else out / f"{plan['output']['name']}.safetensors"


# --- whose results an output folder holds ---------------------------------------------------------

PREVIOUS = "previous"  # `--overwrite` moves an earlier run's results here; nothing is ever deleted
PLANS = "plans"  # resumed segments' plans: plans/resume-N.json
_RESULT_FOLDERS = ("checkpoints", "samples", "logs", PLANS)
_RUN_RECORDS = ("recipe", "launch")  # moved aside with the results they belong to


class OutputInUse(Exception):
    """An output folder that holds another run's results, for a run that neither resumes nor overwrites."""


def plan_hash_in(path: Path) -> str | None:
    """The `plan_hash` of a plan file, or None when it cannot be read."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("plan_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def results(out: Path, plan_hash: str) -> list[Path]:
    """What earlier runs left in `out`: artifacts, checkpoints, samples, logs, resumed plans, and a
    `plan.json` of another plan. This plan's own `plan.json`, manifests and launch configs are not
    results (`sdxlc run` writes them before it trains)."""
    if not out.is_dir():
        return []
    found = []
    for path in sorted(out.iterdir()):
        if path.name in _RESULT_FOLDERS and path.is_dir() and any(path.iterdir()):
            found.append(path)
        elif path.is_file() and (path.suffix == ".safetensors" or path.name.endswith(".safetensors.sha256")):
            found.append(path)
        elif path.is_dir() and (path / "model_index.json").is_file():  # a fine-tune's diffusers folder
            found.append(path)
        elif path.name == "plan.json" and plan_hash_in(path) != plan_hash:
            found.append(path)
    return found


def claim(out: Path, plan_hash: str, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Path | None:
    """Make `out` this run's: refuse (OutputInUse) when it holds another run's results, or with
    `overwrite` move them into `out/previous/<time>-<plan>/` and return that folder. `inputs`: files the
    run reads (a LoRA to continue from, the base model); moving one of them aside is refused."""
    found = results(out, plan_hash)
    if not found:
        return None
    old = plan_hash_in(out / "plan.json")
    if not overwrite:
        whose = ("an earlier run of this same plan" if old == plan_hash
                 else f"another run (plan {old[:12]})" if old else "another run")
        listed = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:6])
        raise OutputInUse(
            f"{out} holds the results of {whose}: {listed}{' …' if len(found) > 6 else ''}; continue it "
            f"with `--resume`, move its results aside into {out / PREVIOUS}/ with `--overwrite` (nothing is "
            "deleted), or give this run its own `output \"…\"`")
    import time

    extra = [out / name for name in _RUN_RECORDS] + list(out.glob("manifest-*.json")) + [out / "plan.json"]
    moved = [*found, *(p for p in extra if p.exists() and p not in found)]
    for given in inputs:
        hit = next((p for p in moved if given == p or p in given.parents), None)
        if hit is not None:
            raise OutputInUse(
                f"this run reads {given}, one of the earlier results in {out} that `--overwrite` would move "
                f"aside into {out / PREVIOUS}/: copy it out of the output folder and name the copy, or give "
                "this run its own `output \"…\"`")
    aside = out / PREVIOUS / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{(old or 'unknown')[:12]}"
    aside.mkdir(parents=True, exist_ok=False)
    for path in moved:
        path.rename(aside / path.name)
    return aside


def plan_file_for(out: Path, plan_hash: str, resuming: bool) -> Path:
    """Where the plan of this run segment is kept: `plan.json` for a fresh run; when resuming, the file
    that already holds this plan, else the next `plans/resume-N.json` (the original plan.json is never
    replaced)."""
    original = out / "plan.json"
    if not resuming or not original.exists() or plan_hash_in(original) == plan_hash:
        return original
    segments = sorted((out / PLANS).glob("resume-*.json"), key=lambda p: _number(p.stem))
    for segment in segments:
        if plan_hash_in(segment) == plan_hash:
            return segment
    return out / PLANS / f"resume-{(_number(segments[-1].stem) if segments else 0) + 1}.json"


def _number(stem: str) -> int:
    tail = stem.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0
