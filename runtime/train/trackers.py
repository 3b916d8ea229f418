"""Experiment trackers (wandb, MLflow, Aim, …) through accelerate's tracker classes.

The plan's `log.trackers` lists them, each with its project, pip package and module. Before the run
writes anything, every module must import (`check_trackers`), or the run stops naming the package to
install. The main process then starts each tracker with accelerate (`accelerate.tracking`), stores the
plan's main settings as the run's configuration, and logs the scalars TensorBoard gets, with the same
names (`loss/step`, `loss/average`, `lr/…`, `grad_norm`, `val_loss`). Trackers that keep local files
keep them in `<output.dir>/logs/<tracker>/` (wandb: its offline runs, or the copy it syncs from).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime import RunError
from runtime.train.tblog import group_tag, log_dir

# the keyword of a tracker's class that takes its local folder, and that folder under logs/ (wandb makes
# its own `wandb/` inside the folder it is given)
LOCAL_FOLDER = {"wandb": ("dir", ""), "mlflow": ("logging_dir", "mlflow"), "aim": ("logging_dir", "aim"),
                "dvclive": ("dir", "dvclive")}


def check_trackers(plan: dict[str, Any]) -> None:
    """Every tracker of the plan can be imported (RunError naming the packages otherwise)."""
    missing = [t for t in plan["log"]["trackers"] if importlib.util.find_spec(t["module"]) is None]
    if missing:
        names = ", ".join(t["name"] for t in missing)
        packages = " ".join(t["package"] for t in missing)
        raise RunError(f"log.trackers names {names} but the package is not installed: "
                       f"`pip install {packages}`, or remove `log {missing[0]['name']} …` from the recipe")


def configuration(plan: dict[str, Any]) -> dict[str, Any]:
    """The settings a tracker stores for the run (scalars only)."""
    training, optimizer = plan["training"], plan["optimizer"]
    return {
        "plan_hash": plan["plan_hash"], "method": plan["method"]["kind"], "model": plan["model"]["source"],
        "optimizer": optimizer["name"], "lr": optimizer["lr"], "schedule": plan["schedule"]["name"],
        "batch_size": training["batch_size"], "accumulate": training["accumulate"],
        "total_steps": training["total_steps"], "seed": training["seed"],
        "resolution": plan["data"]["resolution"], "mixed_precision": plan["precision"]["mixed"],
    }


class Trackers:
    """The started trackers, with the calls a run makes (those of `TensorBoardLog`)."""

    def __init__(self, trackers: list[Any]) -> None:
        self.trackers = trackers

    def _log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def loss(self, step: int, loss: float, average: float) -> None:
        self._log({"loss/step": loss, "loss/average": average}, step)

    def optimizer(self, step: int, grad_norm: float | None, groups: Sequence[dict[str, Any]]) -> None:
        values = {group_tag(group, i, len(groups)): float(group["lr"]) for i, group in enumerate(groups)}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        self._log(values, step)

    def values(self, step: int, values: dict[str, float]) -> None:
        self._log(dict(values), step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def start(entry: dict[str, Any], folder: Path) -> Any:
    """One of accelerate's trackers, started."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    name, local = entry["name"], {}
    if name in LOCAL_FOLDER:
        keyword, below = LOCAL_FOLDER[name]
        (folder / below).mkdir(parents=True, exist_ok=True)
        local[keyword] = str(folder / below)
    tracker = LOGGER_TYPE_TO_CLASS[name](entry["project"], **local)
    try:
        tracker.start()
    except Exception as exc:  # a tracker that cannot reach its server, a bad login, …
        raise RunError(f"the {name} tracker did not start: {type(exc).__name__}: {exc}") from exc
    return tracker


def open_trackers(plan: dict[str, Any], main: bool) -> Trackers | None:
    """The plan's trackers, started on the main process with the run's configuration; None without any."""
    entries = plan["log"]["trackers"]
    if not entries or not main:
        return None
    started = Trackers([])
    try:
        for entry in entries:
            started.trackers.append(start(entry, log_dir(plan)))
        for tracker in started.trackers:
            tracker.store_init_configuration(configuration(plan))
    except BaseException:
        started.close()
        raise
    return started
