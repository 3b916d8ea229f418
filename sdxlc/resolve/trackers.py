"""Experiment trackers (`log.trackers`): accelerate's tracker names, each with its project and package.

The compiler cannot import the trackers; the plan records the pip package and module of each, and the
runtime checks that they import before it writes anything (runtime/train/trackers.py).
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang.layers import Layers, Provenance

# accelerate's tracker name → (pip package, module to import), in the order the plan lists them
TRACKERS: dict[str, tuple[str, str]] = {
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet-ml", "comet_ml"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "swanlab": ("swanlab", "swanlab"),
    "trackio": ("trackio", "trackio"),
}


def resolve_trackers(layers: Layers, provenance: dict[str, Provenance]) -> list[dict[str, Any]]:
    """The trackers the recipe names (`log wandb "project"`); provenance: where the first was named."""
    trackers, origins = [], []
    for name, (package, module) in TRACKERS.items():
        project, origin = layers.get(f"log.{name}")
        if project is None:
            continue
        origins.append(origin)
        trackers.append({"name": name, "project": str(project), "package": package, "module": module})
    provenance["log.trackers"] = origins[0] if origins else {"source": "default", "at": None}
    return trackers
