"""The generated TextMate grammar, the VS Code extension folder, and the text helpers of the server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdxlc.editor import text, textmate, words
from sdxlc.lang import vocabulary as vocab

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "docs" / "editors" / "vscode"


def test_the_committed_grammar_is_the_generated_one() -> None:
    committed = (ROOT / textmate.COMMITTED).read_text(encoding="utf-8")
    assert committed == textmate.render(), "run: python -m sdxlc.editor.textmate " + str(textmate.COMMITTED)


def test_the_check_mode_and_the_writer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "sdx.tmLanguage.json"
    assert textmate.main(["--check", str(target)]) == 1  # missing
    assert textmate.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == textmate.render()
    assert textmate.main(["--check", str(target)]) == 0
    target.write_text("{}", encoding="utf-8")
    assert textmate.main(["--check", str(target)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert textmate.main(["--check"]) == 2


def _rules(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "match" in node or "begin" in node:
            yield node
        for value in node.values():
            yield from _rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _rules(value)


def test_every_expression_compiles() -> None:
    for rule in _rules(textmate.grammar()):
        for key in ("match", "begin", "end"):
            if key in rule:
                re.compile(rule[key])


def _find(rule: dict[str, Any], line: str) -> list[str]:
    return [m.group(0) for m in re.finditer(rule["match"], line)]


def test_the_lexical_shapes() -> None:
    repo = textmate.grammar()["repository"]
    shapes = {rule["name"]: rule for rule in repo["numbers"]["patterns"]}
    assert _find(shapes["constant.numeric.range.sdx"], "resolution 1024 64..160") == ["64..160"]
    assert _find(shapes["constant.numeric.size.sdx"], "vram 12GB 24GiB") == ["12GB", "24GiB"]
    assert _find(shapes["constant.numeric.percent.sdx"], "warmup 5%") == ["5%"]
    assert _find(shapes["keyword.operator.repeat.sdx"], "block_lr 0, 1e-4 x9") == ["x9"]
    assert _find(shapes["constant.numeric.sdx"], "lr 1e-4 on unet+te1 8x") == ["1e-4"]
    assert _find(repo["malformed"], "lora rank 8x") == ["8x"]
    assert _find(repo["values"], "lr 1e-4 lion lionel") == ["lion"]
    assert _find(repo["values"], "on unet+te1 unet+nope") == ["unet+te1"]
    pair = re.search(repo["pair"]["match"], "args weight_decay=0.01")
    assert pair is not None and pair.group(1) == "weight_decay"
    assert re.search(repo["comment"]["match"], "lr 1e-4  # a note") is not None


def test_statements_start_a_line_or_follow_a_semicolon() -> None:
    repo = textmate.grammar()["repository"]
    lora = repo["statement-lora"]["begin"]
    assert re.search(lora, "lora rank 8") and re.search(lora, "lr 1e-4; lora rank 8")
    assert not re.search(lora, "flora rank 8") and not re.search(lora, "x lora")
    generic = repo["statement"]["begin"]
    assert re.search(generic, "snr gamma 5").group(1) == "snr gamma"  # type: ignore[union-attr]


def _scopes_of(context: str) -> dict[str, str]:
    repo = textmate.grammar()["repository"]
    rule = repo.get(f"statement-{context}", repo["statement"])
    return {inner["name"]: inner["match"] for inner in rule["patterns"] if "name" in inner}


def test_every_vocabulary_word_is_in_the_grammar() -> None:
    repo = textmate.grammar()["repository"]
    begins = [rule["begin"] for name, rule in repo.items() if name.startswith("statement")]
    for entry in vocab.VOCABULARY:
        if entry.context == vocab.STATEMENT:
            assert any(re.fullmatch(begin, entry.words) for begin in begins), entry.words
        elif entry.words:
            contexts = words.contexts() if entry.context == vocab.ANY else [entry.context]
            for context in contexts:
                scope = "constant.language.flag.sdx" if entry.arg == "flag" else "keyword.other.clause.sdx"
                assert re.fullmatch(_scopes_of(context)[scope], entry.words), (context, entry.words)


def test_a_new_vocabulary_word_reaches_the_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = vocab.Entry("sparkle", "lora", "lora.rank", "value", "A word added to the table.")
    monkeypatch.setattr(vocab, "VOCABULARY", (*vocab.VOCABULARY, extra))
    assert re.fullmatch(_scopes_of("lora")["keyword.other.clause.sdx"], "sparkle")
    assert textmate.render() != (ROOT / textmate.COMMITTED).read_text(encoding="utf-8")


# --- the VS Code extension folder ----------------------------------------------------------------------


def test_the_extension_declares_the_language_grammar_and_client() -> None:
    package = json.loads((EXTENSION / "package.json").read_text(encoding="utf-8"))
    for key in ("name", "publisher", "version", "engines", "main", "contributes"):
        assert key in package, key
    assert (EXTENSION / package["main"]).is_file()
    assert "vscode-languageclient" in package["dependencies"]
    assert "onLanguage:sdx" in package["activationEvents"]
    (language,) = package["contributes"]["languages"]
    assert language["id"] == "sdx" and language["extensions"] == [".sdx"]
    config = json.loads((EXTENSION / language["configuration"]).read_text(encoding="utf-8"))
    assert config["comments"]["lineComment"] == "#"
    (grammar,) = package["contributes"]["grammars"]
    assert grammar["language"] == "sdx" and grammar["scopeName"] == textmate.SCOPE
    assert (EXTENSION / grammar["path"]).resolve() == (ROOT / textmate.COMMITTED).resolve()
    settings = package["contributes"]["configuration"]["properties"]
    assert settings["sdx.server.args"]["default"] == ["lsp"]


def test_the_extension_starts_sdxlc_lsp() -> None:
    script = (EXTENSION / "extension.js").read_text(encoding="utf-8")
    assert 'require("vscode-languageclient/node")' in script and "TransportKind.stdio" in script
    node = shutil.which("node")
    if node is not None:  # a syntax check where Node.js is installed
        script_path = str(EXTENSION / "extension.js")
        done = subprocess.run([node, "--check", script_path], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr


# --- reading a document at a position ----------------------------------------------------------------


def test_what_is_being_written() -> None:
    lines = text.lines_of('lora rank 8 ca\nsample "a cat\nlr 1e-4 # lio\nblock_lr 0,\n  1e-4 x9, \nlr 1; sch')
    assert text.writing_at(lines, 0, 14) == text.Writing(("lora", "rank", "8"), "ca")
    assert text.writing_at(lines, 1, 12) is None  # inside a string
    assert text.writing_at(lines, 2, 13) is None  # inside a comment
    assert text.writing_at(lines, 4, 11) == text.Writing(("block_lr", "0", "1e-4", "x9"), "")
    assert text.writing_at(lines, 5, 9) == text.Writing((), "sch")


def test_phrases_under_the_cursor() -> None:
    assert text.phrases_at("lora rank 8 cache te", 19) == ["8 cache te", "cache te", "te"]
    found = text.phrases_at("data x on bad image skip", 11)
    assert "on bad image" in found and found[-1] == "bad"
    assert text.phrases_at("lr 1e-4; cache te", 16)[-1] == "te"
    assert "1e-4 cache" not in text.phrases_at("lr 1e-4; cache te", 10)


def test_the_use_line_that_reaches_a_file() -> None:
    sources = {
        "/r/top.sdx": 'sdx 1\nuse "a.sdx"\nuse "sub/b.sdx"\n',
        "/r/a.sdx": "",
        "/r/sub/b.sdx": 'use "../c.sdx"\n',
        "/r/c.sdx": "",
    }
    assert text.use_line_towards("/r/top.sdx", "/r/a.sdx", sources) == 1
    assert text.use_line_towards("/r/top.sdx", "/r/c.sdx", sources) == 2
    assert text.use_line_towards("/r/top.sdx", "/r/elsewhere.sdx", sources) is None
