"""Named checks of ControlNet-LLLite runs (docs/METHODS.md "ControlNet-LLLite"). Registered in
sdxlc/check/semantic.py's CHECKS.

- SDX0580 (error): an LLLite run with a data line that has no `control` folder: the network learns from
  image/control pairs and has nothing to condition an image without one on.
- SDX0581 (warning): `control` folders on the data lines of a run that is not LLLite: nothing reads them.
- SDX0584 (warning): `block_lr` with LLLite: the network is one parameter group at the optimizer's lr.

A horizontal flip is not a conflict: the control image is flipped with its image (the pair stays
aligned, as in kohya's LLLite training), also under `cache latents`, which caches both sides. A random
crop under `cache latents` is SDX0525, as for every method. The other methods' settings (`lora on te1`,
`finetune`) with `lllite` are SDX0570: one method per recipe.
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers


def lllite_needs_control(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    if plan["method"]["kind"] != "lllite":
        return []
    return [
        make("SDX0580", f"ControlNet-LLLite needs control images: the data line of {dataset['path']} has no "
             "`control`", layers.span(f"data.{index}.path"),
             help='add `control "folder"` (same-stem control images of the training images) to the data line',
             related=layers.related("lllite", "LLLite chosen here"))
        for index, dataset in enumerate(plan["data"]["datasets"]) if not dataset.get("control")
    ]


def control_without_lllite(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    if plan["method"]["kind"] == "lllite":
        return []
    found = [make("SDX0581", f"control images with a {plan['method']['kind']} run: nothing trains on them",
                  layers.span(f"data.{index}.control") or layers.span(f"data.{index}.path"),
                  help="drop `control`, or train a ControlNet-LLLite network with `lllite`")
             for index, dataset in enumerate(plan["data"]["datasets"]) if dataset.get("control")]
    if plan["sample"].get("controls"):
        found.append(make("SDX0581", f"sample control images with a {plan['method']['kind']} run: only an "
                          "LLLite network draws from them", layers.span("sample.controls"),
                          help="drop `control` from the sample line"))
    return found


def block_lr_with_lllite(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    if plan["method"]["kind"] != "lllite" or not layers.given("block_lr"):
        return []
    return [make("SDX0584", "`block_lr` with ControlNet-LLLite: the network trains at the optimizer's lr",
                 layers.span("block_lr"), help="drop `block_lr`; set the rate with `lr`")]


LLLITE_CHECKS = (lllite_needs_control, control_without_lllite, block_lr_with_lllite)
