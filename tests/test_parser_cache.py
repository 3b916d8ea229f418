"""The cached recipe parser: loaded from the cache file, it reads every text as a freshly built one does."""

from __future__ import annotations

from pathlib import Path

import pytest
from lark import Lark, UnexpectedInput

from sdxlc.lang import parser as parser_module

ROOT = Path(__file__).resolve().parent.parent
TEXTS = sorted([*ROOT.glob("recipes/**/*.sdx"), *ROOT.glob("tests/cases/*.sdx")])
BROKEN = ["lora rank 8 on unet bf16 cache te; lr 1e-4 lion; block_lr 0, 1e-4 x9,", "lr = = 3", "data \"x",
          "batch 2 accumulate", "\tsample every 250 steps \"a\" size", "lora rank 8\n  on"]


def _fresh(monkeypatch: pytest.MonkeyPatch, cache_home: Path | None) -> Lark:
    """A parser built (or loaded) now, not the one the module keeps."""
    if cache_home is None:
        monkeypatch.setenv("SDXLC_NO_PARSER_CACHE", "1")
    else:
        monkeypatch.delenv("SDXLC_NO_PARSER_CACHE", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    built: Lark = parser_module.parser.__wrapped__()
    return built


def _reading(lark: Lark, text: str) -> str:
    try:
        tree = lark.parse(text)
    except UnexpectedInput as error:
        return f"{type(error).__name__} {error.line}:{error.column} {sorted(getattr(error, 'expected', []))}"
    return "\n".join(f"{t.data} {t.meta.line}:{t.meta.column}-{t.meta.end_line}:{t.meta.end_column} "
                     f"{[(c.type, str(c), c.line, c.column) for c in t.children if not hasattr(c, 'data')]}"
                     for t in tree.iter_subtrees_topdown())


def test_cached_parser_reads_every_text_as_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    built = _fresh(monkeypatch, None)
    writes = _fresh(monkeypatch, tmp_path)  # builds and writes the cache file
    [cache_file] = (tmp_path / "sdxlc").iterdir()
    stamp = cache_file.stat().st_mtime_ns
    loaded = _fresh(monkeypatch, tmp_path)  # loads it
    assert cache_file.stat().st_mtime_ns == stamp
    assert [t.name for t in loaded.terminals] == [t.name for t in built.terminals]
    texts = [path.read_text(encoding="utf-8") for path in TEXTS] + BROKEN
    assert len(texts) > len(BROKEN)
    for text in texts:
        assert _reading(loaded, text) == _reading(built, text) == _reading(writes, text)


def test_a_damaged_cache_file_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("SDXLC_NO_PARSER_CACHE", raising=False)
    cache_file = parser_module._cache_file(parser_module.GRAMMAR.read_text(encoding="utf-8"))
    assert cache_file is not None and cache_file.parent == tmp_path / "sdxlc"
    cache_file.write_bytes(b"not a parser\n")
    lark = _fresh(monkeypatch, tmp_path)
    assert _reading(lark, "batch 2 accumulate 2").startswith("start ")
    assert cache_file.read_bytes() != b"not a parser\n"  # written again, whole


def test_each_grammar_has_its_own_cache_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("SDXLC_NO_PARSER_CACHE", raising=False)
    assert parser_module._cache_file("start: A\nA: \"a\"") != parser_module._cache_file("start: B\nB: \"b\"")


def test_no_cache_where_the_folder_cannot_be_made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    lark = _fresh(monkeypatch, blocker)  # `file/sdxlc` cannot be a folder
    assert parser_module._cache_file("start: A\nA: \"a\"") is None
    assert _reading(lark, "batch 2").startswith("start ")
    assert list(tmp_path.iterdir()) == [blocker]
