"""The model facts files (``schema/models/<name>.json``) and the plan's bucket sizes, shared by the
analytic estimate and the CPU step model. Pure Python: no torch."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from sdxlc.resolve.profiles import SCHEMA_DIR

MODELS_DIR = SCHEMA_DIR / "models"


class EstimateError(ValueError):
    """The plan lacks something the estimator needs, or names something it does not know."""


@cache
def load_model(name: str) -> dict[str, Any]:
    """Architecture facts of ``schema/models/<name>.json``."""
    path = MODELS_DIR / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EstimateError(f"cannot read model facts {path}: {exc}") from exc
    return data


def bucket_sizes(plan: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(width, height, weight) of every bucket in use; one square bucket when there is no table."""
    table = get_path(plan, "data.buckets.table") or []
    used = [(int(b["width"]), int(b["height"]), int(b.get("batches") or b.get("images") or 0)) for b in table]
    used = [b for b in used if b[2] > 0] or [(w, h, 1) for w, h, _ in used]
    if not used:
        res = int(get_path(plan, "data.resolution"))
        used = [(res, res, 1)]
    return used


def latent_px(width: int, height: int, model: dict[str, Any]) -> int:
    """Latent pixels of a `width` x `height` image."""
    down = int(model["latent"]["downscale"])
    return (width // down) * (height // down)


def get_path(plan: dict[str, Any], dotted: str) -> Any:
    """The plan's value at a dotted path; an EstimateError naming it when absent."""
    node: Any = plan
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise EstimateError(f"the plan has no {dotted!r}, which the estimate needs")
        node = node[part]
    return node


def set_path(plan: dict[str, Any], dotted: str, value: Any) -> None:
    """Set the plan's value at a dotted path whose parents exist."""
    *parents, last = dotted.split(".")
    node = plan
    for part in parents:
        node = node[part]
    node[last] = value
