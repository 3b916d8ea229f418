"""Named checks of ControlNet-LLLite runs (docs/METHODS.md "ControlNet-LLLite"). Registered in
sdxlc/check/semantic.py's CHECKS.

- SDX0580 (error): an LLLite run with a data line that has no `control` folder: the network learns from
  image/control pairs and has nothing to condition an image without one on.
- SDX0581 (warning): `control` folders on the data lines of a run that is not LLLite: nothing reads them.
- SDX0584 (warning): `block_lr` with LLLite: the network is one parameter group at the optimizer's lr.
- SDX0589 (error): LLLite samples at a size that is not a multiple of 32 (the deepest stem's stride).

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
    found = []
    # held-out images keep their control images; a validation folder's images have none
    if (plan.get("validate") or {}).get("folder"):
        found.append(make("SDX0580", "ControlNet-LLLite needs control images: the images of the validation "
                          f"folder {plan['validate']['folder']} have none", layers.span("validate.folder"),
                          help="hold out training images instead: `validate every 100 steps split 10%`",
                          related=layers.related("lllite", "LLLite chosen here")))
    return found + [
        make("SDX0580", f"ControlNet-LLLite needs control images: the data line of {dataset['path']} has no "
             "`control`", layers.span(f"data.{index}.path"),
             help='add `control "folder"` (same-stem control images of the training images) to the data line',
             related=layers.related("lllite", "LLLite chosen here"))
        for index, dataset in enumerate(plan["data"]["datasets"])
        # a missing dataset folder resolves without its `control`: SDX0502 already reports it
        if not dataset.get("control") and not layers.given(f"data.{index}.control")
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


def lllite_sample_size(plan: dict[str, Any], layers: Layers) -> list[Diagnostic]:
    sample = plan["sample"]
    if plan["method"]["kind"] != "lllite" or not sample.get("prompts"):
        return []
    odd = [f"{side} {sample[side]}" for side in ("width", "height") if int(sample[side]) % 32]
    if not odd:
        return []
    return [make("SDX0589", f"LLLite samples at {' and '.join(odd)}: not a multiple of 32, so the control "
                 "image's deepest stem does not line up with the UNet's layers",
                 layers.place("sample.size", "sample.prompts"),
                 help="give the sample line a `size` that is a multiple of 32: `size 64`, `size 1024`")]


LLLITE_CHECKS = (lllite_needs_control, control_without_lllite, block_lr_with_lllite, lllite_sample_size)
