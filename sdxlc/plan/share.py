"""What a saved file may tell about the machine that trained it: the plan without local paths.

A plan holds absolute paths (the data folders, the output and cache folders, the model, the recipe
files) that say where the run happened and often whose home it ran in. The copy of the plan a saved
file carries (`sdxlc_plan`) gives every path inside the recipe's folder (`save.relative_to`) relative
to it, and any other absolute path as its file name alone; hashes, hub ids and settings are kept.
The copy keeps the `plan_hash` of the plan that ran, which was computed with the absolute paths.

Pure Python: the runtime uses it when it writes metadata, the tests to check what a file reveals.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

# An absolute POSIX path (not the `//` of a URL) or a Windows drive path, up to a space, quote,
# comma, semicolon, bracket or the end of the text.
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])(?:/|[A-Za-z]:[\\/])[^\s\"'`,;()<>\[\]{}]*")


def shareable(plan: dict[str, Any]) -> dict[str, Any]:
    """A copy of the plan with every local path made relative to the recipe folder or cut to its
    file name; the plan itself is not changed. A value that is a path is replaced whole; the warnings,
    texts that name paths, have each path in them replaced; the sample prompts are left as written."""
    root = plan["save"]["relative_to"].rstrip("/\\")
    result = {key: value if key == "sample" else _walk(value, root)
              for key, value in plan.items() if key != "warnings"}
    if "warnings" in plan:
        result["warnings"] = [share_text(text, root) for text in plan["warnings"]]
    return result


def share_path(path: str, root: str) -> str:
    """One path as a saved file gives it: relative to `root` inside it, else its last part."""
    if root and path == root:
        return "."
    for separator in ("/", "\\"):
        if root and path.startswith(root + separator):
            return path[len(root) + 1:].replace("\\", "/")
    return _name(path)


def share_value(text: str, root: str) -> str:
    """A value that may be a path (a model source: `tiny`, a hub id or a local path) as a saved file
    gives it: a local path as `share_path` gives it, anything else as it is."""
    return share_path(text, root) if is_absolute(text) else text


def is_absolute(text: str) -> bool:
    """Whether a text is an absolute POSIX or Windows path."""
    return PurePosixPath(text).is_absolute() or bool(re.match(r"[A-Za-z]:[\\/]", text))


def _walk(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {key: _walk(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, root) for item in value]
    if isinstance(value, str):
        return share_value(value, root)
    return value


def share_text(text: str, root: str) -> str:
    """A text with the paths in it made shareable: the recipe folder's prefix removed, then any other
    absolute path cut to its file name (a warning that lists images keeps their names)."""
    if root and root not in ("/", ""):
        text = text.replace(root + "/", "").replace(root + "\\", "")
        text = re.sub(re.escape(root) + r"(?![^\s\"',;])", ".", text)
    return _ABSOLUTE.sub(lambda match: _name(match.group(0)), text)


def _name(path: str) -> str:
    """The last part of a path; `/` alone stays `/`."""
    pure = PureWindowsPath(path) if re.match(r"[A-Za-z]:[\\/]", path) else PurePosixPath(path)
    return pure.name or path
