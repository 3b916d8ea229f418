"""No input makes the compiler raise: every failure is a diagnostic with a position.

Hypothesis mutates the shipped recipes (deleting, duplicating, swapping and corrupting tokens and
characters) and also builds statements from the language's own words with random arguments.
"""

from __future__ import annotations

import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdxlc.lang.vocabulary import VOCABULARY
from sdxlc.pipeline import compile_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
SHIPPED = [p.read_text(encoding="utf-8") for p in sorted(RECIPES.glob("*.sdx"))]
WORDS = sorted({w for entry in VOCABULARY for w in entry.words})
PIECES = WORDS + [
    "1e-4",
    "8",
    "0",
    "-1",
    "5%",
    "512..2048",
    "x9",
    ",",
    ";",
    '"',
    '"data"',
    "#",
    "\n",
    "..",
    "1e999",
    "nan",
    "12GB",
    "unet+te1",
    "\t",
    "\\",
    "é",
    "🙂",
]
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compile(tmp: Path, text: str) -> None:
    (tmp / "data").mkdir(exist_ok=True)
    if not (tmp / "data" / "quickstart").exists():
        (tmp / "data" / "quickstart").symlink_to(RECIPES / "data" / "quickstart")
    base = tmp / "base"
    if not base.exists():
        base.symlink_to(RECIPES / "base", target_is_directory=True)
    recipe = tmp / "fuzz.sdx"
    recipe.write_text(text, encoding="utf-8")
    result = compile_recipe(recipe)
    for diag in result.diagnostics:
        assert diag.code.startswith("SDX") and diag.message
        if diag.span is not None:
            assert diag.span.line >= 1 and diag.span.column >= 1
    if result.plan is None:
        assert result.errors, "no plan and no error"


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


_ops = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 10_000), st.sampled_from(PIECES)), min_size=1, max_size=6
)


@SETTINGS
@given(recipe=st.sampled_from(SHIPPED), ops=_ops)
def test_mutated_recipes_never_raise(
    tmp_path_factory: object, recipe: str, ops: list[tuple[int, int, str]]
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")  # type: ignore[attr-defined]
    _compile(tmp, _mutate(recipe, ops))


_statement = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map(" ".join)


@SETTINGS
@given(lines=st.lists(_statement, min_size=1, max_size=10))
def test_statements_from_the_vocabulary_never_raise(tmp_path_factory: object, lines: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("words")  # type: ignore[attr-defined]
    _compile(tmp, 'model tiny\ndata "data/quickstart"\n' + "\n".join(lines) + "\n")


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=string.printable + "é…🙂\x00", max_size=200))
def test_arbitrary_text_never_raises(tmp_path_factory: object, text: str) -> None:
    tmp = tmp_path_factory.mktemp("text")  # type: ignore[attr-defined]
    _compile(tmp, text)
