"""The statement cache: a recipe read before gives the statements a fresh parse gives, without the parser;
damaged, foreign or stale entries are never used, texts with syntax errors are never kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sdxlc.lang import ast
from sdxlc.lang import parser as parser_module
from sdxlc.lang import statement_cache as cache
from sdxlc.lang.lower import load_recipe
from sdxlc.lang.statement_cache import read_statements

ROOT = Path(__file__).resolve().parent.parent
TEXTS = sorted([*ROOT.glob("recipes/**/*.sdx"), *ROOT.glob("tests/cases/*.sdx")])
ODD = ['lr 1e-4 x9, "a \\"b\\"\\n", 50%, 8GiB, 1..4, 1e999, 8x, é=2\n', "sdx 1\n\n  # only a comment\n",
       "block_lr 0, 1e-4 x9,\n  5e-5 x3, 0\nargs weight_decay=0.01 betas=0.9,0.99\n", ""]


def _fresh(text: str, file: str) -> tuple[list[ast.Statement], list[object]]:
    tree, diags = parser_module.parse_recovering(text, file)
    return ast.build(tree, file), list(diags)


def _no_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str, file: str) -> None:
        raise AssertionError("the parser ran")

    monkeypatch.setattr(parser_module, "parse_recovering", refuse)


def _entries(home: Path) -> list[Path]:
    return sorted((home / "sdxlc").glob(f"{cache.PREFIX}*.json"))


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("SDXLC_NO_PARSER_CACHE", raising=False)
    return tmp_path


def test_cached_statements_equal_parsed_ones(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")) for path in TEXTS]
    texts += [(f"odd{n}.sdx", text) for n, text in enumerate(ODD)]
    expected = {name: _fresh(text, name) for name, text in texts}
    assert [read_statements(text, name) for name, text in texts] == [expected[name] for name, _ in texts]
    kept = [name for name, _ in texts if not expected[name][1]]
    assert len(_entries(home)) == len(set(kept)) > 5
    _no_parser(monkeypatch)
    for name in kept:
        text = dict(texts)[name]
        statements, diags = read_statements(text, name)
        assert diags == [] and statements == expected[name][0]
        assert [repr(s) for s in statements] == [repr(s) for s in expected[name][0]]  # ints stay ints


def test_texts_with_syntax_errors_are_not_kept(home: Path) -> None:
    statements, diags = read_statements('lr = = 3\nbatch 2\ndata "x\n', "broken.sdx")
    assert diags and statements
    assert _entries(home) == []


def test_a_text_json_cannot_hold_is_parsed_and_not_kept(home: Path) -> None:
    text = 'sample prompts "a \ud800 b"\n'  # a lone surrogate, as an editor's buffer may hold
    assert read_statements(text, "a.sdx") == _fresh(text, "a.sdx")
    assert _entries(home) == []


def test_an_editors_buffer_is_not_kept(home: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.sdx"
    recipe.write_text("batch 2\n", encoding="utf-8")
    load_recipe(recipe, unsaved={recipe.resolve(): "batch 3\n"})
    assert _entries(home) == []
    load_recipe(recipe)
    assert len(_entries(home)) == 1


def test_the_name_is_part_of_the_key(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_statements("batch 2\n", "a.sdx")
    _no_parser(monkeypatch)
    [statement], _ = read_statements("batch 2\n", "a.sdx")
    assert statement.span.file == "a.sdx"
    with pytest.raises(AssertionError, match="the parser ran"):
        read_statements("batch 2\n", "b.sdx")


@pytest.mark.parametrize("damage", ["payload", "digest", "key", "truncate", "shape", "span"])
def test_a_damaged_entry_is_parsed_again_and_replaced(home: Path, damage: str) -> None:
    text, name = "batch 2 accumulate 4\nlr 1e-4\n", "r.sdx"
    expected = _fresh(text, name)
    read_statements(text, name)
    [entry] = _entries(home)
    key, digest, payload = entry.read_text(encoding="utf-8").split("\n", 2)
    if damage == "payload":  # another word, with the old digest
        payload = payload.replace("accumulate", "accumulatf")
    elif damage == "digest":
        digest = "0" * 64
    elif damage == "key":
        key = "f" * 64
    elif damage == "truncate":
        payload = payload[: len(payload) // 2]
    if damage in ("shape", "span"):  # well formed and digested, but not statements
        span = '{"s":[1,1,1,2]}' if damage == "shape" else '{"s":[1,1.5,1,2]}'
        word = f'{{"n":"Word","f":["batch"{"" if damage == "shape" else "," + span}]}}'
        payload = f'[{{"n":"Statement","f":[{word},[],{span}]}}]'
        digest = hashlib.sha256(payload.encode()).hexdigest()
    entry.write_text(f"{key}\n{digest}\n{payload}", encoding="utf-8")
    assert read_statements(text, name) == expected
    assert entry.read_text(encoding="utf-8").split("\n", 1)[0] == cache._key(text, name)  # written again


def test_statements_that_would_not_read_back_equal_are_not_kept(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode = cache._encode

    def lossy(node: object, file: str) -> object:
        return "lost" if isinstance(node, str) else encode(node, file)

    monkeypatch.setattr(cache, "_encode", lossy)
    assert read_statements("batch 2\n", "a.sdx") == _fresh("batch 2\n", "a.sdx")
    assert _entries(home) == []


def test_no_entries_when_caching_is_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("SDXLC_NO_PARSER_CACHE", "1")
    assert read_statements("batch 2\n", "a.sdx") == _fresh("batch 2\n", "a.sdx")
    assert list(tmp_path.iterdir()) == []


def test_an_unmakeable_folder_only_means_parsing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.delenv("SDXLC_NO_PARSER_CACHE", raising=False)
    assert read_statements("batch 2\n", "a.sdx") == _fresh("batch 2\n", "a.sdx")
    assert list(tmp_path.iterdir()) == [blocker]


def test_the_oldest_entries_go_past_the_limit(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    for n in range(1, 6):
        before = set(_entries(home))
        read_statements(f"batch {n}\n", "a.sdx")
        [new] = set(_entries(home)) - before
        os.utime(new, ns=(n * 10**9, n * 10**9))  # in order, whatever the clock's resolution
    assert len(_entries(home)) == 3
    _no_parser(monkeypatch)
    read_statements("batch 5\n", "a.sdx")  # the newest is still there


def test_the_key_follows_what_reads_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache._key("batch 2\n", "a.sdx")
    assert before != cache._key("batch 3\n", "a.sdx") != cache._key("batch 2\n", "b.sdx")
    assert cache._key("ab", "c") != cache._key("b", "ac")
    readers = cache._readers()
    monkeypatch.setattr(cache, "_readers", lambda: readers + b"\0another grammar")
    assert cache._key("batch 2\n", "a.sdx") != before
    assert b"__version__" in readers  # lark's version is part of it
