"""The plan: canonical JSON, its hash, and validation against schema/plan.schema.json."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sdxlc.schemas import schema_errors


class PlanError(Exception):
    """A plan that does not satisfy the contract."""


def canonical(plan: dict[str, Any]) -> str:
    """One byte-exact text per plan: sorted keys, no spaces, plain UTF-8."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def plan_hash(plan: dict[str, Any]) -> str:
    """sha256 of the canonical plan without its own hash field."""
    body = {k: v for k, v in plan.items() if k != "plan_hash"}
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
