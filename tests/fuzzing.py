"""Fuzz cases for the compiler, shared by tests/test_fuzz.py (a few hundred) and bench/fuzz_recipes.py
(over ten thousand).

A case is a recipe (bytes, as stored), its `--set` options and the files beside it (recipes it uses,
pipes, links). Each family of hypothesis strategies aims at one class of input: mutated shipped
recipes, statements from the vocabulary, arbitrary text, extreme numbers, control characters, long
names, deep `use` chains, junk `--set`, filesystem-shaped strings, and every training method under
every launch strategy. `run_case` compiles one case in a sandbox folder and classifies the outcome the
way the command line would: an escaping exception is exit 70.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from sdxlc.lang.diagnostics import render_text, to_json
from sdxlc.lang.vocabulary import VOCABULARY, leaf_paths, schema_node
from sdxlc.pipeline import compile_recipe
from sdxlc.plan.contract import to_text

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
SHIPPED = [p.read_text(encoding="utf-8") for p in sorted(RECIPES.glob("*.sdx"))]
WORDS = sorted({w for entry in VOCABULARY for w in entry.words.split()})
BASE = 'model tiny\ndata "data/quickstart"\n'
PROFILES = sorted(p.stem for p in (ROOT / "schema" / "profiles").glob("*.json"))


@dataclass(frozen=True)
class Case:
    """One compiler input: the recipe's bytes, `--set` options, and files beside the recipe."""

    family: str
    recipe: bytes
    sets: tuple[str, ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()  # name -> content (written beside the recipe)
    links: tuple[tuple[str, str], ...] = ()  # name -> symlink target
    fifos: tuple[str, ...] = ()  # named pipes beside the recipe

    def to_json(self) -> dict[str, Any]:
        """The case as a regression-corpus entry: text as text, bytes that are no UTF-8 in base64."""
        return {
            "family": self.family,
            "recipe": _encoded(self.recipe),
            "sets": list(self.sets),
            "files": {name: _encoded(data) for name, data in self.files},
            "links": dict(self.links),
            "fifos": list(self.fifos),
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Case:
        return cls(
            entry["family"],
            _decoded(entry["recipe"]),
            tuple(entry.get("sets", ())),
            tuple((name, _decoded(data)) for name, data in entry.get("files", {}).items()),
            tuple(entry.get("links", {}).items()),
            tuple(entry.get("fifos", ())),
        )


def _encoded(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _decoded(value: str | dict[str, str]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else base64.b64decode(value["base64"])


def _text(family: str, text: str, sets: tuple[str, ...] = (), **extra: Any) -> Case:
    return Case(family, text.encode("utf-8", "surrogatepass"), sets, **extra)


# --- families -------------------------------------------------------------------------------------

PIECES = WORDS + [
    "1e-4", "8", "0", "-1", "5%", "512..2048", "x9", ",", ";", '"', '"data"', "#", "\n", "..", "1e999",
    "nan", "12GB", "unet+te1", "\t", "\\", "é", "🙂",
]


def _mutate(text: str, ops: list[tuple[int, int, str]]) -> str:
    tokens = text.replace("\n", " \n ").split(" ")
    for kind, where, piece in ops:
        if not tokens:
            break
        i = where % len(tokens)
        if kind == 0:
            del tokens[i]
        elif kind == 1:
            tokens.insert(i, piece)
        elif kind == 2:
            tokens[i] = piece
        elif kind == 3:
            tokens.insert(i, tokens[(i * 7 + 3) % len(tokens)])
        else:
            token = tokens[i]
            if token:
                cut = where % len(token)
                tokens[i] = token[:cut] + piece[:1] + token[cut + 1 :]
    return " ".join(tokens).replace(" \n ", "\n")


_ops = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 10_000), st.sampled_from(PIECES)),
                min_size=1, max_size=6)
mutated = st.builds(lambda recipe, ops: _text("mutated", _mutate(recipe, ops)),
                    st.sampled_from(SHIPPED), _ops)

_statement = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map(" ".join)
words = st.lists(_statement, min_size=1, max_size=10).map(
    lambda lines: _text("words", BASE + "\n".join(lines)))

arbitrary = st.text(alphabet=st.characters(codec="utf-8"), max_size=300).map(lambda t: _text("text", t))

# Numbers: at the edges of every range, past float and int limits, and in every numeric field.
EXTREMES = [
    "0", "-0", "1", "-1", "0.5", "1e9", "1e-9", "1e308", "1e-308", "1e309", "-1e309", "1e-400", "4294967295",
    "4294967296", "18446744073709551615", "18446744073709551616", "9223372036854775808", "2147483648",
    "100", "10", "1e6", "1e18", "nan", "inf", "-inf", ".5", "5.", "0x10", "1_000", "+1", "1e", "x9", "5%",
    "100%", "1e400%", "12GB", "0..0", "1000..0", "1..1e999",
]
_number = st.one_of(
    st.sampled_from(EXTREMES),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(1, 6000).map(lambda k: "0" * k + "1"),
    st.integers(20, 6000).map(lambda k: "9" * k),
    st.integers(1, 400).map(lambda k: f"1e{k}"),
)
NUMERIC_PATHS = sorted(
    path.replace("*", "0") for path in leaf_paths()
    if (schema_node(path.replace("*", "0")) or {}).get("type") in ("integer", "number", "array")
)
NUMBER_LINES = [
    "steps {n}", "epochs {n}", "seed {n}", "lr {n}", "batch {n} accumulate {n}",
    'data "data/quickstart" repeat {n}',
    "noise offset {n} snr gamma {n} perturbation {n} multires {n} discount {n}", "timesteps {n}..{n}",
    'sample "x" size {n} steps {n} cfg {n} seed {n} every {n} steps', "lora rank {n} alpha {n} dropout {n}",
    "resolution {n} buckets {n}..{n} step {n}", "block_lr {n} x23", "block_lr {n} x{n}",
    "gpus {n}; machines {n}",
    "optimizer adamw args eps={n} weight_decay={n} betas={n},{n}", "save every {n} epochs keep {n}",
    "model tiny seed {n} init normal {n}", "loss huber c {n}", "clip {n}", "schedule cosine warmup {n}",
    'data "data/quickstart" dropout {n} tag dropout {n} color jitter {n} loss weight {n} keep {n}',
    "log every {n}", "finetune unet te1 lr {n}", 'embedding "<t>" vectors {n}', "lr {n} prodigy",
]


@st.composite
def numbers(draw: st.DrawFn) -> Case:
    value = draw(_number)
    if draw(st.booleans()):
        line = draw(st.sampled_from(NUMBER_LINES)).replace("{n}", value)
        return _text("numbers", BASE + line + "\n")
    path = draw(st.sampled_from(NUMERIC_PATHS))
    if draw(st.booleans()):
        return _text("numbers", BASE + f"set {path} {value}\n")
    return _text("numbers", BASE, (f"{path}={value}",))


# Control and invisible characters, in strings, words, `--set` values and raw bytes.
CONTROLS = [chr(c) for c in range(32)] + ["\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\u202e", "\u200b"]
_dirty = st.lists(st.sampled_from(CONTROLS + ["a", "é", "\\n", "\\t", '\\"', "\\\\", " "]),
                 min_size=1, max_size=12).map("".join)
STRING_LINES = [
    'name "{s}"', 'output "{s}"', 'sample "{s}"', 'data "data/quickstart" prefix "{s}" separator "{s}"',
    'embedding "{s}" init "{s}"', 'profile "{s}"', 'model "{s}"', 'use "{s}"', 'vae "{s}"', "name {s}",
    'data "{s}"', 'data "data/quickstart" caption "{s}" default caption "{s}"', 'lora from "{s}"',
    'optimizer adamw args foreach="{s}"', "set output.name {s}", "{s}",
]
SET_STRINGS = ["output.name", "output.dir", "sample.prompts", "data.0.prefix", "profile", "model.source",
               "embedding.token", "optimizer.args.x"]


@st.composite
def controls(draw: st.DrawFn) -> Case:
    text = draw(_dirty)
    if draw(st.integers(0, 3)) == 0:  # a `--set` value, where surrogates from a byte argv can come in
        value = text + draw(st.sampled_from(["", "\udcff", "\udc80x", "\ud800"]))
        return _text("controls", BASE, (f"{draw(st.sampled_from(SET_STRINGS))}={value}",))
    line = draw(st.sampled_from(STRING_LINES)).replace("{s}", text)
    recipe = (BASE + line + "\n").encode("utf-8")
    if draw(st.booleans()):  # bytes that are no UTF-8, and a BOM
        recipe = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xed\xa0\x80"])) + recipe
    return Case("controls", recipe)


# Long names, strings, paths, lists and files.
_size = st.sampled_from([100, 256, 300, 1025, 4000, 20_000, 70_000])
LONG_LINES = [
    "name {a}", 'sample "{a}"', 'data "{a}"', 'data "{p}"', "profile {a}", "set optimizer.args.{a} 1",
    'output "{p}"', "{a} 1", 'model "{a}"', 'embedding "{a}"', 'lora from "{p}"', "lr 1e-4 x{k}",
    "block_lr {l}", 'sample {q}', 'use "{p}"', "--{a}", "set data.{k}.repeat 2",
]


@st.composite
def long_inputs(draw: st.DrawFn) -> Case:
    size = draw(_size)
    char = draw(st.sampled_from(["a", "é", "9", "_", "🙂"]))
    if draw(st.integers(0, 4)) == 0:  # a whole file of lines: the limit and the parse speed
        line = draw(st.sampled_from(["lr 1e-4 adamw", "zz", "seed 1", "lr =", "1,", "#c", 'sample "x"']))
        count = draw(st.sampled_from([100, 1000, 4000, 6000, 12_000]))
        return _text("long", BASE + "\n".join([line] * count) + "\n")
    fill = {"{a}": char * size, "{p}": "a/" * (size // 2), "{k}": str(size), "{l}": ",".join(["1e-4"] * size),
            "{q}": ", ".join(['"x"'] * (size // 8 + 1))}
    line = draw(st.sampled_from(LONG_LINES))
    for key, value in fill.items():
        line = line.replace(key, value)
    if draw(st.integers(0, 3)) == 0:
        return _text("long", BASE, (f"{draw(st.sampled_from(SET_STRINGS))}={char * size}",))
    return _text("long", BASE + line + "\n")


# `use`: deep chains, cycles, special files, big and broken files.
SPECIAL_USES = ["/dev/zero", "/dev/null", "/dev/urandom", "/proc/self/status", "/proc/self/fd/0", ".", "",
                "missing.sdx", "/", "pipe.sdx", "big.sdx", "bad.sdx", "bom.sdx", "loop.sdx", "errors.sdx",
                "fuzz.sdx", "dir", "a/../fuzz.sdx", "/nonexistent/x.sdx"]
_SIDE_FILES = (
    ("big.sdx", b"seed 1\n" * 20_000),
    ("bad.sdx", b"seed 1\n\xff\xfe\nlr 1e-4\n"),
    ("bom.sdx", b"\xef\xbb\xbfseed 2\n"),
    ("errors.sdx", b"lr =\nrank 8\nseed x\nsteps 1e99\nuse \"fuzz.sdx\"\n"),
)


@st.composite
def includes(draw: st.DrawFn) -> Case:
    kind = draw(st.integers(0, 2))
    links, fifos = (("loop.sdx", "loop.sdx"), ("dir", ".")), ("pipe.sdx",)
    if kind == 0:  # a chain of `use`, possibly closing on itself
        depth = draw(st.integers(1, 40))
        back = draw(st.one_of(st.none(), st.integers(0, depth - 1)))
        files = []
        for i in range(depth):
            target = f"u{i + 1}.sdx" if i + 1 < depth else (f"u{back}.sdx" if back is not None else "")
            body = (f'use "{target}"\n' if target else "") + f"seed {i}\n"
            files.append((f"u{i}.sdx", body.encode()))
        return Case("includes", (f'use "u0.sdx"\n{BASE}').encode(), (), tuple(files))
    targets = draw(st.lists(st.sampled_from(SPECIAL_USES), min_size=1, max_size=4))
    head = "".join(f'use "{t}"\n' for t in targets)
    body = head + BASE if kind == 1 else BASE + head  # a late `use` is an error of its own
    return Case("includes", body.encode(), (), _SIDE_FILES, links, fifos)


# `--set`: junk paths, indices and values.
_INDICES = ["0", "1", "7", "01", "-1", "99999999999", "9" * 50, "²", "٣", "*", "", "0x1"]
_set_path = st.one_of(
    st.sampled_from(leaf_paths()).flatmap(
        lambda p: st.sampled_from(_INDICES).map(lambda i: p.replace("*", i))),
    st.lists(st.sampled_from(["data", "lora", "optimizer", "args", "x", "", "0", "__class__", "é", " "]),
             min_size=1, max_size=4).map(".".join),
)
_set_value = st.one_of(_number, _dirty, st.sampled_from([
    "", "true", "unet+te1", "0.9,0.99", '"a cat"', "a, b", '"', "=", "x9", "1e-4 x9", "a=b", "#", ";", "\n"]))


@st.composite
def junk_sets(draw: st.DrawFn) -> Case:
    count = draw(st.integers(1, 4))
    sets = []
    for _ in range(count):
        path, value = draw(_set_path), draw(_set_value)
        sep = draw(st.sampled_from(["=", "=", " = ", "", "==", ":"]))
        sets.append(f"{path}{sep}{value}")
    return _text("sets", BASE, tuple(sets))


# Filesystem-shaped strings where the recipe names folders and files.
FS_STRINGS = [
    "/", "//", "/.", "/proc", "/proc/self", "/proc/self/fd", "/sys", "/sys/kernel", "/dev", "/dev/shm",
    "/dev/zero",
    "/dev/null", "/tmp/..", "/proc/..", "//proc//self", ".", "./", "..", "data", "data/quickstart",
    "./data//quickstart/", "data/quickstart/..", "data/quickstart/00.png", "~", "~/x", "$HOME", "C:\\", "C:",
    "\\\\server\\share", "file:///etc", "/nonexistent/x", "nonexistent", " ", "out", "out/x",
    "data/quickstart/out",
    "dir", "loop.sdx", "a" * 300, "a/" * 600, "x.jsonl", "x.csv", "data/quickstart/00.txt", ".sdxlc-cache",
]
FS_LINES = ['data "{f}"', 'output "{f}"', 'model "{f}"', 'vae "{f}"', 'lora from "{f}"',
            'model "{f}" config "{f}"',
            'data "{f}"\noutput "{g}"', 'output "{f}"\ndata "{g}"', 'embedding "<t>"\ndata "{f}"']


@st.composite
def fs_paths(draw: st.DrawFn) -> Case:
    line = draw(st.sampled_from(FS_LINES))
    for key in ("{f}", "{g}"):
        line = line.replace(key, draw(st.sampled_from(FS_STRINGS)))
    body = "model tiny\n" + line + "\n"
    if "data " not in line:
        body = BASE + line + "\n"
    return _text("paths", body, (), links=(("loop.sdx", "loop.sdx"), ("dir", ".")))


# Every training method under every launch strategy, process count and profile.
METHOD_LINES = ["lora rank 4", "lora on unet+te1+te2", "finetune unet", "finetune unet+te1+te2 full bf16",
                "finetune unet fused backward\noptimizer adafactor", 'embedding "<t>" init "cat"', ""]


@st.composite
def launches(draw: st.DrawFn) -> Case:
    lines = [
        draw(st.sampled_from(METHOD_LINES)),
        f"strategy {draw(st.sampled_from(['ddp', 'deepspeed-zero2', 'fsdp']))}",
        f"gpus {draw(st.sampled_from([1, 2, 3, 8, 1024]))}",
        f"machines {draw(st.sampled_from([1, 2, 4]))}",
        f"profile {draw(st.sampled_from(PROFILES))}",
        draw(st.sampled_from(["", "bf16", "fp16", "fp32", "fp16 vae fp32"])),
        draw(st.sampled_from(["", "checkpointing", "cache te", "cache latents", "fit auto",
                              "batch 4 accumulate 2"])),
        draw(st.sampled_from(["", "lr 1e-4 adamw8bit", "lr 1e-5 paged_lion8bit", "optimizer prodigy",
                              "optimizer adafactor", "optimizer sgd"])),
        draw(st.sampled_from(["", 'sample "x" every 10 steps', "steps 20", "epochs 3"])),
    ]
    return _text("launch", BASE + "\n".join(line for line in lines if line) + "\n")


FAMILIES: dict[str, st.SearchStrategy[Case]] = {
    "mutated": mutated, "words": words, "text": arbitrary, "numbers": numbers(), "controls": controls(),
    "long": long_inputs(), "includes": includes(), "sets": junk_sets(), "paths": fs_paths(),
    "launch": launches(),
}


# --- running a case ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How the command line would have ended, and what the diagnostics looked like."""

    exit: int  # 0 plan, 1 recipe errors, 70 internal error
    seconds: float
    unlocated: list[str] = field(default_factory=list)  # codes of errors without a usable place
    codes: list[str] = field(default_factory=list)
    crash: str = ""  # the escaped exception, for exit 70
    errors: int = 0  # error diagnostics


def sandbox(folder: Path) -> Path:
    """A folder with the shipped data and base recipes linked in, where cases are compiled."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    for link, target in (("data/quickstart", RECIPES / "data" / "quickstart"), ("base", RECIPES / "base")):
        if not (folder / link).exists():
            (folder / link).symlink_to(target, target_is_directory=True)
    return folder


def run_case(case: Case, folder: Path) -> Outcome:
    """Compile one case in a sandbox folder (see `sandbox`) and classify it as the CLI would."""
    made = _materialise(case, folder)
    start = time.perf_counter()
    try:
        compiled = compile_recipe(folder / "fuzz.sdx", case.sets)
        diags = compiled.ordered()
        render_text(diags, compiled.sources, color=True).encode("utf-8")
        json.dumps(to_json(diags))
        if compiled.plan is not None:
            to_text(compiled.plan).encode("utf-8")
    except Exception as error:  # what `sdxlc.cli.main.entry` turns into exit 70
        return Outcome(70, time.perf_counter() - start, crash=f"{type(error).__name__}: {error}"[:300])
    finally:
        _clean(made)
    seconds = time.perf_counter() - start
    unlocated = [d.code for d in diags if d.severity == "error" and not _located(d.span, compiled.sources)]
    exit_code = 1 if compiled.errors else 0
    if compiled.plan is None and not compiled.errors:
        exit_code, unlocated = 70, [*unlocated, "no plan and no error"]
    return Outcome(exit_code, seconds, unlocated, [d.code for d in diags], errors=len(compiled.errors))


def _located(span: Any, sources: dict[str, str]) -> bool:
    if span is None or span.line < 1 or span.column < 1:
        return False
    text = sources.get(span.file)
    return text is None or span.line <= text.count("\n") + 1


def _materialise(case: Case, folder: Path) -> list[Path]:
    made = []
    for name, data in ((("fuzz.sdx", case.recipe),) + case.files):
        (folder / name).write_bytes(data)
        made.append(folder / name)
    for name, target in case.links:
        (folder / name).symlink_to(target)
        made.append(folder / name)
    for name in case.fifos:
        os.mkfifo(folder / name)
        made.append(folder / name)
    return made


def _clean(made: list[Path]) -> None:
    for path in made:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
