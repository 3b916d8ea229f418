"""The plan: canonical JSON, its hash, and validation against schema/plan.schema.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sdxlc.plan.files import write_atomic
from sdxlc.plan.manifest import Manifest
from sdxlc.plan.manifest import write as write_manifest
from sdxlc.plan.schemas import schema_errors


class PlanError(Exception):
    """A plan that does not satisfy the contract."""


def canonical(plan: dict[str, Any]) -> str:
    """One byte-exact text per plan: sorted keys, no spaces, plain UTF-8."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# Where each value came from, and the recipe texts, do not change what the run does: `sdxlc fmt`
# moves lines and must leave the hash alone.
UNHASHED = ("plan_hash", "provenance", "sources")


def plan_hash(plan: dict[str, Any]) -> str:
    """sha256 of the canonical plan, leaving out its own hash, provenance and source texts."""
    body = {k: v for k, v in plan.items() if k not in UNHASHED}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def seal(plan: dict[str, Any]) -> dict[str, Any]:
    """Set the hash and check the result against the plan schema."""
    plan["plan_hash"] = plan_hash(plan)
    check(plan)
    return plan


def check(plan: dict[str, Any]) -> None:
    """Raise PlanError listing every way the plan breaks the contract, including a stale hash."""
    problems = [f"{path or '(plan)'}: {message}" for path, message in schema_errors("plan", plan)]
    if not problems and plan["plan_hash"] != plan_hash(plan):
        problems.append("plan_hash: does not match the plan's contents")
    if problems:
        raise PlanError("invalid plan:\n  " + "\n  ".join(problems))


def to_text(plan: dict[str, Any]) -> str:
    """Readable JSON for plan.json files."""
    return json.dumps(plan, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def is_plan_file(path: Path) -> bool:
    """Whether `path` names a plan file (`sdxlc run PLAN.json`) rather than a recipe."""
    return path.suffix.lower() == ".json"


def read(path: Path) -> dict[str, Any]:
    """A plan file, checked against the plan schema and its own hash (PlanError otherwise)."""
    try:
        plan = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read the plan: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise PlanError(f"not a plan: invalid JSON ({str(exc) or 'nested too deeply'})") from exc
    if not isinstance(plan, dict):
        raise PlanError("not a plan: the file does not hold a JSON object")
    check(plan)
    return plan


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a plan may hold")


def write(path: Path, plan: dict[str, Any], manifest: Manifest) -> Path:
    """A plan file and, beside it, the sample manifest it names (both written atomically)."""
    write_manifest(manifest, path.parent)
    return write_atomic(path, to_text(plan).encode("utf-8"))
