"""Limits on what a recipe may say, beyond its schema types: string lengths and characters, the
size of recipe files and the depth of `use` chains, and the messages for values past a schema bound.

Every string a recipe gives is checked where it is written: an invisible character (a control, a
surrogate, a format character such as a right-to-left mark) in a name or path is an error; free text
such as a prompt may hold tabs, new lines and format characters (an emoji's joiner), but no other
control. A string longer than its schema field's `maxLength` is an error, and a path is also checked
part by part against the file system's name limit.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxlc.lang.ast import LowerError
from sdxlc.lang.diagnostics import Span, invisible, make, number_text, printable, shown

MAX_FILE_BYTES = 32 * 1024  # one recipe file; real recipes are a few hundred bytes to a few KiB
MAX_TOTAL_BYTES = 64 * 1024  # a recipe with every file it uses
MAX_USE_DEPTH = 8  # files in a chain of `use`, the recipe itself included
MAX_FILE_ERRORS = 200  # errors reported for one file before the rest of it is skipped
MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255  # one folder or file name (NAME_MAX of Linux, macOS and Windows)
MAX_FREE_CHARS = 256  # a string without a `maxLength` of its own (optimizer `args`)
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))  # the kernel's and the devices' files

# Free text: a tab or a new line (written `\t`, `\n`) is part of the text; any other control is not.
TEXT_FIELDS = frozenset({
    "sample.prompts", "data.*.prefix", "data.*.suffix", "data.*.default_caption", "data.*.separator",
    "embedding.init",
})
_TEXT_OK = frozenset({"Cf", "Zl", "Zp"})  # invisible but harmless in free text
# File system paths (and hub ids, which are checked the same way).
PATH_FIELDS = frozenset({
    "model.source", "model.config", "model.vae", "data.*.path", "output.dir", "lora.from", "use",
})


@dataclass(frozen=True)
class Problem:
    """What is wrong with a string: a diagnostic code, a message and a help text."""

    code: str
    message: str
    help: str


def generic(path: str) -> str:
    """A recipe path with its dataset index written as `*` (`data.2.path` → `data.*.path`)."""
    parts = path.split(".")
    if len(parts) > 2 and parts[0] == "data":
        parts[1] = "*"
    return ".".join(parts)


def string_problem(path: str, value: str, node: dict[str, Any]) -> Problem | None:
    """Why a string is not a value of the recipe path (whose schema is `node`), or None."""
    field = generic(path)
    text = field in TEXT_FIELDS
    for index, char in enumerate(value):
        if invisible(char) and not (text and (char in "\t\n" or unicodedata.category(char) in _TEXT_OK)):
            what = "free text may hold `\\t` and `\\n`, no other control" if text else (
                "names and paths cannot hold control or invisible characters")
            message = f"`{path}` holds the invisible character `{printable(char)}` at character {index + 1}"
            return Problem("SDX0209", message, f"remove it: {what}")
    limit = int(node.get("maxLength", MAX_PATH_CHARS if field in PATH_FIELDS else MAX_FREE_CHARS))
    if len(value) > limit:
        return Problem("SDX0210", f"`{path}` is {len(value)} characters long; at most {limit} are allowed",
                       f"`{shown(value, 40)}` is far longer than any real value")
    if field in PATH_FIELDS:
        return _path_problem(path, value)
    return None


def check_strings(value: Any, node: dict[str, Any], path: str, span: Span, spans: list[Span]) -> None:
    """Raise the error for a string (or a string of a list) that is not a value of `path`; `spans` has
    one span per list element."""
    values, item = (value, node.get("items", {})) if isinstance(value, list) else ([value], node)
    for index, text in enumerate(values):
        if isinstance(text, str) and (problem := string_problem(path, text, item)) is not None:
            where = spans[index] if isinstance(value, list) and index < len(spans) else span
            raise LowerError(make(problem.code, problem.message, where, problem.help))


_BOUND_WORDS = {
    "minimum": "below its lowest value",
    "exclusiveMinimum": "not above",
    "maximum": "above its highest value",
    "exclusiveMaximum": "not below",
}


def beyond(path: str, value: Any, keyword: str, bound: Any) -> str:
    """`training.steps` is 1000000000, above its highest value 100000000."""
    return f"`{path}` is {number_text(value)}, {_BOUND_WORDS[keyword]} {number_text(bound)}"


def not_a_multiple(path: str, value: Any, step: Any) -> tuple[str, str]:
    """The message and help for a value that must be a multiple of `step` (a sample size of 100)."""
    step, low = int(step), int(value) // int(step) * int(step)
    hint = f"use {low} or {low + step}" if low else f"use {step}"
    return f"`{path}` is {number_text(value)}, not a multiple of {step}", hint


def _path_problem(path: str, value: str) -> Problem | None:
    for part in value.replace("\\", "/").split("/"):
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            return Problem("SDX0210", f"`{path}` has a name of {size} bytes (`{shown(part, 30)}`)",
                           f"file and folder names have at most {MAX_NAME_BYTES} bytes")
    return None


class RecipeFileError(Exception):
    """A recipe file that cannot be read: a diagnostic code, a message, and where a bad byte is."""

    def __init__(self, code: str, message: str, help: str | None = None, at: tuple[int, int] | None = None):
        super().__init__(message)
        self.code, self.message, self.help, self.at = code, message, help, at


def read_recipe(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a recipe file: a regular file of at most `limit` bytes, UTF-8 with or without a BOM.

    Opening never blocks (a FIFO is refused, not waited on) and at most `limit + 1` bytes are read, so
    `/dev/zero` or a huge file cannot hold the compiler up."""
    system = in_system_folder(path)
    if system is not None:
        raise RecipeFileError("SDX0307", f"`{path}` is in {system}, a system folder, not a recipe file",
                              "name a `.sdx` file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            os.close(fd)
            raise RecipeFileError("SDX0307", f"`{path}` is {kind}, not a recipe file", "name a `.sdx` file")
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise RecipeFileError("SDX0305", f"cannot read `{path}`: {error.strerror or error}") from None
    except ValueError as error:  # a NUL in the path
        raise RecipeFileError("SDX0305", f"cannot read `{path}`: {error}") from None
    if len(data) > limit:
        raise _too_large(path, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = len(data[data.rfind(b"\n", 0, error.start) + 1 : error.start].decode("utf-8", "replace")) + 1
        raise RecipeFileError("SDX0305", f"`{path}` is not UTF-8 text (byte 0x{data[error.start]:02x})",
                              "save the recipe as UTF-8", (line, column)) from None


def read_unsaved(path: Path, text: str, limit: int = MAX_FILE_BYTES) -> str:
    """An editor's unsaved text of a recipe file, held to the size limit of a file on disk."""
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise _too_large(path, limit)
    return text.removeprefix("\ufeff")


def _too_large(path: Path, limit: int) -> RecipeFileError:
    return RecipeFileError("SDX0307", f"`{path}` is larger than {limit // 1024} KiB",
                           f"recipes are read whole and kept small: at most {limit // 1024} KiB "
                           f"per file and {MAX_TOTAL_BYTES // 1024} KiB with the files they use")


def in_system_folder(path: Path) -> Path | None:
    """The system folder (/proc, /sys, /dev) a path lies in, links resolved; None for any other path."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return None
    return next((folder for folder in SYSTEM_FOLDERS if real == folder or folder in real.parents), None)


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
