"""The model files a plan recorded, checked before the model is loaded.

The plan lists every local file the model loads from with its size and sha256 (`model.files`); a file
that is gone, of another size or with other bytes stops the run with `InputChanged` before anything is
written. The images are checked by `runtime.train.data` against the sample manifest.
"""

from __future__ import annotations

import os
from typing import Any

from runtime import InputChanged
from sdxlc.plan.manifest import file_sha256


def check_model(plan: dict[str, Any]) -> None:
    changed = []
    for entry in plan["model"]["files"]:
        path = entry["path"]
        try:
            size = os.stat(path).st_size
            same = size == entry["size"] and file_sha256(path) == entry["sha256"]
        except OSError as exc:
            changed.append(f"the model file {path}: gone ({exc.strerror or type(exc).__name__})")
            continue
        if not same:
            changed.append(f"the model file {path}: its bytes changed since the plan was made")
    if changed:
        raise InputChanged(changed)
