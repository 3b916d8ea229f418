"""A saved kohya command line (`accelerate launch … sdxl_train_network.py --network_dim 16 …`) as settings.

Line continuations (`\\` in shells, `^` in cmd, a backquote in PowerShell) are joined first. The
launcher's own flags before the script (`--num_processes 2`) are kept apart from the script's.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from sdxlc.tools.kohya.model import KohyaError

# sd-scripts options that take several values (`nargs="*"`)
MULTI = frozenset({"optimizer_args", "lr_scheduler_args", "network_args", "text_encoder_lr", "base_weights",
                   "base_weights_multiplier"})
_CONTINUATION = re.compile(r"[\\^`][ \t]*\r?\n")


def parse_command(text: str, origin: str) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """(script name, script settings, launcher settings) of the first command that runs a `.py` script,
    or of a bare list of `--flags`."""
    joined = _CONTINUATION.sub(" ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "rem ", "REM ", "::")):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise KohyaError(f"{origin}: cannot split the command line: {error}") from None
        script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
        if script is not None:
            launcher = parse_flags(words[:script])
            name = words[script].replace("\\", "/").rsplit("/", 1)[-1]
            return name, parse_flags(words[script + 1:]), launcher
        if words and words[0].startswith("--"):
            return None, parse_flags(words), {}
    raise KohyaError(f"{origin}: no kohya command found: expected a line running a kohya script "
                     "(`… sdxl_train_network.py --flag …`) or a list of `--flags`")


def parse_flags(words: list[str]) -> dict[str, Any]:
    """`--key=value`, `--key value`, `--key v1 v2` (the `nargs="*"` options) and `--switch` (true)."""
    found: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("--"):
            continue  # the launcher's own words (`accelerate launch`, `python`)
        key, eq, inline = word[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            found[key] = inline.split() if key in MULTI else inline
            continue
        values = []
        while i < len(words) and not words[i].startswith("--"):
            values.append(words[i])
            i += 1
            if key not in MULTI:
                break
        found[key] = values if key in MULTI else (values[0] if values else True)
    return found
