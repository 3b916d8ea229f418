"""An A1111-style reader of a PNG's `parameters` text, as stable-diffusion-webui parses it
(`parse_generation_parameters` in modules/infotext_utils.py): the tests read what sdxlc writes the way
A1111, Civitai and image viewers do."""

from __future__ import annotations

import json
import re

PARAM = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse(text: str) -> dict[str, str]:
    """`Prompt`, `Negative prompt` and every `Key: value` of the last line (quoted values unquoted)."""
    *lines, last = text.strip().split("\n")
    if len(PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    result = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in PARAM.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = json.loads(value)
        result[key] = value
    return result
