"""Bounds beyond the schema's hard limits.

The recipe schema bounds every number (its `minimum` / `maximum`, checked where the value is written,
with the field's `x-why`). These checks add what a single field cannot say:

- a value outside its usual range (`x-usual` in the schema) is a warning that gives the value, the
  range and why; learning rates are judged against the chosen optimizer's usual range;
- counts the recipe only implies (total steps from epochs, samples per epoch from repeats and
  folder repeats) are bounded like the fields themselves;
- a recipe whose every training dataset has loss weight 0 trains nothing.
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make, number_text
from sdxlc.lang.layers import Layers
from sdxlc.lang.vocabulary import schema_node

MAX_TOTAL_STEPS = 100_000_000  # the same as `training.steps`
USUAL_TOTAL_STEPS = 1_000_000
MAX_SAMPLES_PER_EPOCH = 5_000_000  # the run lists every sample of an epoch (about 200 bytes each)

# Usual learning rates per optimizer (kohya's and diffusers' examples): a LoRA trains at 1e-4 to 1e-3,
# a fine-tune at 1e-6 to 1e-5, textual inversion at up to 5e-3. Prodigy's lr is a multiplier near 1
# (SDX0545 says so); Adafactor with relative_step computes its own.
_USUAL_LR: dict[str, tuple[float, float]] = {"sgd": (1e-6, 1.0)}
_DEFAULT_LR = (1e-8, 1e-2)
_LR_PATHS = ("optimizer.lr", "lora.lr_te1", "lora.lr_te2", "finetune.lr_te1", "finetune.lr_te2")


def unusual_values(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Every number a recipe layer set outside its field's usual range (`x-usual`): a warning."""
    found = []
    for path in layers.origins:
        node = schema_node(path)
        usual = node.get("x-usual") if node is not None else None
        value, _ = layers.get(path)
        if usual is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, high = usual.get("minimum"), usual.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            found.append(make("SDX0407", f"`{path}` is {number_text(value)}, outside its usual range "
                              f"{_range(low, high)}", layers.span(path),
                              help=f"{usual['why']}; is it a typo?"))
    return found


def unusual_learning_rates(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Learning rates outside the chosen optimizer's usual range (`lr 10` with AdamW): a warning."""
    optimizer = plan["optimizer"]
    name = optimizer["name"]
    if name == "prodigy" or (name == "adafactor" and optimizer["args"].get("relative_step")):
        return []
    low, high = _USUAL_LR.get(name, _DEFAULT_LR)
    rates = [(path, layers.get(path)[0]) for path in _LR_PATHS if layers.given(path)]
    if layers.given("block_lr"):
        rates += [("block_lr", rate) for rate in layers.get("block_lr")[0] if rate]
    found = []
    for path, rate in rates:
        if not low <= rate <= high:
            found.append(make(
                "SDX0407", f"`{path}` is {number_text(rate)}, outside the usual learning rates of `{name}` "
                f"{_range(low, high)}", layers.span(path),
                help="a LoRA trains at 1e-4 to 1e-3, a fine-tune at 1e-6 to 1e-5: far above, the loss "
                "diverges within a few steps; far below, nothing changes",
            ))
            break  # one warning says it; the others are usually the same rate
    return found


def derived_counts(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """Total steps and samples per epoch, which epochs, repeats and folder repeats only imply."""
    training, data = plan["training"], plan["data"]
    found = []
    by_epochs = layers.given("training.epochs")
    where = layers.span("training.epochs") if by_epochs else layers.span("training.steps")
    total, per_epoch = training["total_steps"], training["steps_per_epoch"]
    if total > MAX_TOTAL_STEPS:
        found.append(make(
            "SDX0533", f"{training['epochs']} epochs of {per_epoch} steps make {total} steps, above the "
            f"limit {MAX_TOTAL_STEPS}", where or _data_span(layers),
            help="10^8 optimizer steps are years of training at any speed: give `steps N` or fewer epochs"))
    elif by_epochs and total > USUAL_TOTAL_STEPS:
        found.append(make(
            "SDX0407", f"{training['epochs']} epochs of {per_epoch} steps make {total} steps, outside the "
            f"usual range ≤ {USUAL_TOTAL_STEPS}", where,
            help="LoRAs train for 1,000 to 20,000 steps and fine-tunes rarely pass 500,000; is it a typo?"))
    samples = data["samples_per_epoch"]
    if samples > MAX_SAMPLES_PER_EPOCH:
        found.append(make(
            "SDX0533", f"an epoch has {samples} samples (images × repeats), above the limit "
            f"{MAX_SAMPLES_PER_EPOCH}", _repeat_span(layers, data["datasets"]),
            help="the run lists every sample of an epoch: lower `repeat` (or the N of `N_name` folders) "
            "and train for more epochs"))
    return found


def something_weighs(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    """With loss weight 0 on every training dataset, every step's loss is 0: nothing would train."""
    datasets = [(i, d) for i, d in enumerate(plan["data"]["datasets"]) if not d.get("regularization")]
    if not datasets or any(d.get("loss_weight", 1.0) > 0 for _, d in datasets):
        return []
    first = datasets[0][0]
    where = layers.span(f"data.{first}.loss_weight") or layers.span(f"data.{first}.path")
    return [make("SDX0532", "every training dataset has `loss weight 0`: every step's loss would be 0",
                 where, help="give the training images a weight above 0 (1 is the default)")]


def _range(low: float | None, high: float | None) -> str:
    if low is None:
        return f"≤ {number_text(high)}"
    if high is None:
        return f"≥ {number_text(low)}"
    return f"{number_text(low)} to {number_text(high)}"


def _data_span(layers: Layers) -> Any:
    return layers.span("data.0.path")


def _repeat_span(layers: Layers, datasets: list[dict[str, Any]]) -> Any:
    """The `repeat` of the dataset with the most samples, or its `data` line."""
    biggest = max(range(len(datasets)), key=lambda i: datasets[i].get("samples", 0), default=0)
    return layers.span(f"data.{biggest}.repeat") or layers.span(f"data.{biggest}.path")


BOUND_CHECKS = (unusual_values, unusual_learning_rates, derived_counts, something_weighs)
