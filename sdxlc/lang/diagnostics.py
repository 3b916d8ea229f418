"""Diagnostics: the catalog of every problem the compiler reports, and its two renderings.

Each problem has a stable code. Codes are grouped by the stage that finds them:

- SDX01xx  syntax (the grammar could not read the text)
- SDX02xx  vocabulary and values (unknown words, malformed numbers, missing or wrong arguments)
- SDX03xx  structure (duplicates, `use` files and their order, `--set` strings)
- SDX04xx  schema (paths and values checked against schema/recipe.schema.json)
- SDX05xx  semantic checks (combinations of settings)
- SDX06xx  hardware and estimates

Text rendering follows rustc: `error[CODE]: message`, `--> file:line:col`, the source line with
carets under the span, `= help:` and any related spans ("first set here") beneath.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column, end column exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def at(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span | None
    help: str | None = None
    related: tuple[tuple[Span, str], ...] = ()


CATALOG: dict[str, tuple[Severity, str]] = {
    # SDX01xx syntax
    "SDX0101": ("error", "unexpected character"),
    "SDX0102": ("error", "unterminated string"),
    "SDX0103": ("error", "unexpected token"),
    "SDX0104": ("error", "unexpected end of input"),
    # SDX02xx vocabulary and values
    "SDX0201": ("error", "unknown word"),
    "SDX0202": ("error", "malformed value"),
    "SDX0203": ("error", "wrong kind of argument"),
    "SDX0204": ("error", "missing argument"),
    "SDX0205": ("error", "statement keyword inside another statement"),
    "SDX0206": ("error", "statement does not start with a keyword"),
    "SDX0207": ("error", "block_lr needs 23 values"),
    "SDX0208": ("warning", "word not supported by this recipe schema; ignored"),
    "SDX0209": ("error", "control character in a string"),
    "SDX0210": ("error", "string or path too long"),
    # SDX03xx structure, duplicates, use
    "SDX0301": ("error", "the same setting is given two different values"),
    "SDX0302": ("warning", "the same setting is given twice"),
    "SDX0303": ("error", "`use` cycle"),
    "SDX0304": ("error", "`use` after other statements"),
    "SDX0305": ("error", "cannot read recipe file"),
    "SDX0306": ("error", "malformed `--set`"),
    "SDX0307": ("error", "recipe file is not a regular file, or too large"),
    "SDX0308": ("error", "`use` chain too deep"),
    "SDX0309": ("error", "a dataset index beyond the recipe's datasets"),
    "SDX0310": ("error", "too many errors in one file; the rest is not checked"),
    # SDX04xx schema
    "SDX0401": ("error", "not allowed by the recipe schema"),
    "SDX0402": ("error", "unknown recipe path"),
    "SDX0403": ("error", "value is not one of the allowed values"),
    "SDX0404": ("error", "value out of range"),
    "SDX0405": ("error", "value does not have the required form"),
    "SDX0406": ("error", "a section cannot be set as a whole"),
    "SDX0407": ("warning", "value outside the usual range"),
    # SDX05xx data and semantic checks
    "SDX0501": ("error", "no training data"),
    "SDX0502": ("error", "dataset folder does not exist"),
    "SDX0503": ("error", "dataset folder holds no readable image"),
    "SDX0504": ("error", "no bucket fits the bucket range"),
    "SDX0505": ("error", "both steps and epochs given"),
    "SDX0506": ("error", "the constant schedule has no warmup"),
    "SDX0507": ("error", "warmup as long as the run"),
    "SDX0508": ("error", "data or output folder at a filesystem root or in a system folder"),
    "SDX0509": ("error", "output folder and data folder inside each other"),
    "SDX0510": ("error", "model file missing or not an SDXL single-file checkpoint"),
    "SDX0511": ("error", "model is neither a folder nor a hub id"),
    "SDX0512": ("error", "pickle checkpoint without `allow pickle`"),
    "SDX0513": ("error", "config folder of a single-file model is missing or incomplete"),
    "SDX0514": ("warning", "`config` for a model that is not a single file"),
    "SDX0515": ("warning", "`init normal` with a LoRA"),
    "SDX0516": ("error", "a path that cannot be resolved"),
    "SDX0517": ("error", "the model is not SDXL"),
    "SDX0518": ("error", "a single file that does not fit its config folder"),
    "SDX0520": ("error", "cached text-encoder outputs with caption shuffle or dropout"),
    "SDX0521": ("error", "cached text-encoder outputs with text-encoder training"),
    "SDX0522": ("error", "bucket step or resolution not a multiple of 32"),
    "SDX0523": ("error", "fp16 with the stock SDXL VAE"),
    "SDX0524": ("error", "precision not supported by the hardware profile"),
    "SDX0525": ("error", "cached latents with random crop or colour jitter"),
    "SDX0526": ("warning", "bf16 on a CPU without native bf16 instructions"),
    "SDX0528": ("error", "empty timestep range"),
    "SDX0529": ("error", "every block learning rate is 0"),
    "SDX0530": ("error", "bad input files with `on bad image fail`"),
    "SDX0531": ("error", "regularization images without training images"),
    "SDX0532": ("error", "every training dataset has loss weight 0"),
    "SDX0533": ("error", "a derived count beyond its limit"),
    "SDX0535": ("warning", "a mask file with an alpha channel (its transparent pixels train)"),
    "SDX0536": ("warning", "training images without a mask (they train unmasked)"),
    "SDX0537": ("warning", "`mask alpha` on images without an alpha channel"),
    "SDX0538": ("warning", "a mask whose shape differs from its image's"),
    "SDX0539": ("error", "the folder of `mask` or `control` is missing or inside the dataset folder"),
    "SDX0540": ("error", "unknown optimizer argument"),
    "SDX0541": ("error", "optimizer argument of the wrong type"),
    "SDX0542": ("error", "optimizer needs CUDA"),
    "SDX0543": ("warning", "Adafactor with gradient clipping"),
    "SDX0544": ("error", "Adafactor's relative_step with a learning-rate schedule"),
    "SDX0545": ("warning", "Prodigy with a learning rate far from 1"),
    "SDX0546": ("error", "Adafactor's warmup_init without relative_step"),
    "SDX0550": ("error", "zero terminal SNR without v-prediction"),
    "SDX0560": ("warning", "a sharding strategy for a LoRA"),
    "SDX0561": ("warning", "several processes on the CPU"),
    "SDX0562": ("error", "a sharding strategy without CUDA"),
    "SDX0563": ("error", "several machines on the CPU profile"),
    "SDX0564": ("warning", "one optimizer step needs more batches than an epoch has"),
    "SDX0570": ("error", "more than one training method"),
    "SDX0571": ("error", "the LoRA file to continue from cannot be read"),
    "SDX0572": ("error", "the LoRA file does not match the recipe"),
    "SDX0573": ("error", "cached text-encoder outputs with textual inversion"),
    "SDX0574": ("error", "the fused backward pass without Adafactor"),
    "SDX0575": ("error", "the fused backward pass with gradient accumulation"),
    "SDX0576": ("error", "the fused backward pass with several processes"),
    "SDX0577": ("error", "full bf16 without bf16 mixed precision"),
    "SDX0578": ("error", "a diffusers save without a full fine-tune"),
    "SDX0579": ("warning", "a setting the training method does not use"),
    "SDX0580": ("error", "ControlNet-LLLite without control images"),
    "SDX0581": ("warning", "control images that the training method does not use"),
    "SDX0582": ("error", "sample control images that do not match the prompts"),
    "SDX0583": ("error", "a sample control image that cannot be read"),
    "SDX0584": ("warning", "`block_lr` with ControlNet-LLLite"),
    "SDX0585": ("error", "DoRA with a LoHa or LoKr adapter"),
    "SDX0586": ("error", "dropout with a LoHa or LoKr adapter"),
    "SDX0587": ("error", "a LoKr factor of 0"),
    "SDX0588": ("error", "a LoRA on a text encoder whose layer groups it does not have"),
    "SDX0589": ("error", "an LLLite sample size that is not a multiple of 32"),
    "SDX0590": ("warning", "a cadence longer than the run"),
    "SDX0591": ("warning", "Adafactor with a schedule other than constant_with_warmup"),
    "SDX0592": ("error", "a validation split that leaves no training image"),
    "SDX0593": ("error", "`validate` without validation images"),
    "SDX0594": ("warning", "an EMA that never updates"),
    "SDX0595": ("error", "`ema` or `validate` with FSDP"),
    # SDX06xx hardware and estimate
    "SDX0601": ("warning", "`profile auto` found no GPU"),
    "SDX0602": ("error", "unknown hardware profile"),
    "SDX0610": ("error", "the run does not fit the hardware profile"),
    "SDX0611": ("error", "`base fp8` with a fine-tune"),
    "SDX0612": ("error", "`offload text encoders` while the text encoders train"),
    "SDX0613": ("warning", "an offload word on the CPU profile"),
    "SDX0614": ("error", "`base fp8` with FSDP"),
    "SDX0615": ("error", "`base fp8` with DoRA"),
    "SDX0616": ("warning", "an offload word beside the cache that frees the same component"),
    "SDX0617": ("warning", "the in-memory caches take much host RAM on a GPU profile"),
    "SDX0618": ("warning", "`compile` with an adapter whose layers break the compiled graph"),
}


def make(
    code: str,
    message: str,
    span: Span | None,
    help: str | None = None,
    related: Iterable[tuple[Span, str]] = (),
) -> Diagnostic:
    """A diagnostic whose severity comes from the catalog (an uncatalogued code is an error).

    Values quoted in the message or help are made printable and long ones shortened (`shown`)."""
    severity, _title = CATALOG.get(code, ("error", ""))
    help_text = _tidy(help) if help is not None else None
    return Diagnostic(code, severity, _tidy(message), span, help_text, tuple(related))


# Characters a terminal would act on or hide: controls, surrogates, format characters, line separators.
_INVISIBLE = frozenset({"Cc", "Cs", "Cf", "Zl", "Zp"})
_QUOTE = re.compile(r"`([^`]*)`")  # quotes pair left to right: the text between two is not one


def invisible(char: str) -> bool:
    """Whether a character cannot be shown as itself (a control, a surrogate, a format character)."""
    return unicodedata.category(char) in _INVISIBLE


def printable(text: str) -> str:
    """`text` with every invisible character written as an escape (`\\x1b`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(ascii(char)[1:-1] if invisible(char) else char for char in text)


def shown(text: str, limit: int = 60) -> str:
    """A value as a message quotes it: printable, and at most about `limit` characters."""
    text = printable(text)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 11]}…{text[-10:]}"


def number_text(value: Any) -> str:
    """A number as a message writes it: whole numbers in full, others shortest (`1e-05`, `0.3`)."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:g}"
    if isinstance(value, float):
        return str(int(value)) if abs(value) < 1e16 else f"{value:g}"
    return str(value)


def _tidy(text: str) -> str:
    text = printable(text) if not text.isprintable() else text
    if len(text) <= 80:
        return text
    return _QUOTE.sub(lambda m: m.group(0) if len(m.group(1)) <= 80
                      else f"`{shown(m.group(1))}` ({len(m.group(1))} characters)", text)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word`, or None when nothing is close enough."""
    return _closest(word.lower(), tuple(dict.fromkeys(choices)))


@functools.lru_cache(maxsize=4096)
def _closest(word: str, options: tuple[str, ...]) -> str | None:
    import difflib  # loaded for a misspelt word, not by every compile

    lowered = {option.lower(): option for option in options}
    found = difflib.get_close_matches(word, list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None


def suggestion(word: str, choices: Iterable[str]) -> str | None:
    """A `help:` text proposing the closest choice, if any."""
    best = did_you_mean(word, choices)
    return f"did you mean `{best}`?" if best is not None else None


_COLORS = {"error": "\x1b[1;31m", "warning": "\x1b[1;33m", "gutter": "\x1b[1;34m", "bold": "\x1b[1m"}
_RESET = "\x1b[0m"


class _Painter:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, style: str, text: str) -> str:
        return f"{_COLORS[style]}{text}{_RESET}" if self.color else text


def render_text(diags: list[Diagnostic], sources: dict[str, str], color: bool = False) -> str:
    """All diagnostics in rustc style, separated by blank lines."""
    paint = _Painter(color)
    return "\n".join(_render_one(diag, sources, paint) for diag in diags)


def _render_one(diag: Diagnostic, sources: dict[str, str], paint: _Painter) -> str:
    spans = [s for s in [diag.span, *(s for s, _ in diag.related)] if s is not None]
    width = max((len(str(s.line)) for s in spans), default=1)
    head = paint(diag.severity, f"{diag.severity}[{diag.code}]") + paint("bold", f": {diag.message}")
    lines = [head]
    if diag.span is not None:
        lines += _snippet(diag.span, sources, width, "^", "", paint, diag.severity)
    for span, label in diag.related:
        lines += _snippet(span, sources, width, "-", label, paint, "gutter")
    if diag.help:
        lines.append(f"{' ' * width} {paint('gutter', '=')} {paint('bold', 'help')}: {diag.help}")
    return "\n".join(lines) + "\n"


def _snippet(
    span: Span, sources: dict[str, str], width: int, mark: str, label: str, paint: _Painter, style: str
) -> list[str]:
    pad = " " * width
    bar = paint("gutter", "|")
    out = [f"{pad}{paint('gutter', '-->')} {span.at()}"]
    text = sources.get(span.file)
    source_lines = text.split("\n") if text is not None else []  # as the parser counts lines
    if not 1 <= span.line <= len(source_lines):
        if label:
            out.append(f"{pad} {paint('gutter', '=')} note: {label}")
        return out
    line_text = _visible(source_lines[span.line - 1].removesuffix("\r").expandtabs(1))
    start = max(span.column - 1, 0)
    end = span.end_column - 1 if span.end_line == span.line else len(line_text)
    count = max(end - start, 1)
    underline = paint(style, mark * count + (f" {label}" if label else ""))
    out.append(f"{pad} {bar}")
    out.append(f"{paint('gutter', str(span.line).rjust(width))} {bar} {line_text}")
    out.append(f"{pad} {bar} {' ' * start}{underline}")
    return out


def _visible(line: str) -> str:
    """A source line as the snippet prints it: one visible character for each invisible one, so that
    the carets stay under their columns and the terminal never acts on the text."""
    if line.isprintable():
        return line
    return "".join(_picture(char) if invisible(char) else char for char in line)


def _picture(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control pictures: ␀ ␁ … ␛ …
    return "\u2421" if code == 0x7F else "\ufffd"


def to_json(diags: list[Diagnostic]) -> list[dict[str, Any]]:
    """Diagnostics as plain dicts for `--format json`."""
    return [_as_dict(diag) for diag in diags]


def _span_fields(span: Span | None) -> dict[str, Any]:
    if span is None:
        return {"file": None, "line": None, "column": None, "end_line": None, "end_column": None}
    return {
        "file": span.file,
        "line": span.line,
        "column": span.column,
        "end_line": span.end_line,
        "end_column": span.end_column,
    }


def _as_dict(diag: Diagnostic) -> dict[str, Any]:
    return {
        "code": diag.code,
        "severity": diag.severity,
        "message": diag.message,
        **_span_fields(diag.span),
        "help": diag.help,
        "related": [{**_span_fields(span), "message": label} for span, label in diag.related],
    }
