"""The before/after grid of a run whose plan sets `sample.before`: the prompts rendered on the base model
before the first step, above the same prompts rendered after the last one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from runtime.gen.infotext import png_text
from runtime.gen.sample import save_png

NAME = "before-after.png"


def grid_path(plan: dict[str, Any], step: int) -> Path:
    """Where the sampling pass at `step` wrote its grid (runtime/gen/sample.py)."""
    return Path(plan["output"]["dir"]) / "samples" / f"{plan['output']['name']}-step{step:06d}-grid.png"


def write_before_after(plan: dict[str, Any], final_step: int) -> Path | None:
    """`<output.dir>/samples/before-after.png`: the step-0 grid above the final one; None when either
    grid is missing (a resumed run whose first segment did not sample before)."""
    before, after = grid_path(plan, 0), grid_path(plan, final_step)
    if not (before.is_file() and after.is_file()):
        return None
    with Image.open(before) as top, Image.open(after) as bottom:
        sheet = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height))
        sheet.paste(top.convert("RGB"), (0, 0))
        sheet.paste(bottom.convert("RGB"), (0, top.height))
    path = before.parent / NAME
    prompts = plan["sample"]["prompts"]
    save_png(sheet, path, png_text(" | ".join(prompts), {"Size": f"{sheet.width}x{sheet.height}"},
                                   {"prompts": prompts, "before_step": 0, "after_step": final_step,
                                    "plan_hash": plan["plan_hash"]}))
    return path
