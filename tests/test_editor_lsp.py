"""`sdxlc lsp` driven over stdio in a subprocess, as an editor drives it: JSON-RPC messages framed with
Content-Length headers; every wait has a timeout, so a hung server fails the test instead of hanging."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 30.0

BAD = "sdx 1\nmodel tiny\nlora rank 8x\nlr 1e-4 loin\n"


class Client:
    """A minimal LSP client: numbered requests, notifications, and a reader thread that queues what
    the server sends."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while True:
                header = stream.readline()
                if not header:
                    self.inbox.put(None)
                    return
                if header in (b"\r\n", b"\n"):
                    break
                name, _, value = header.decode("ascii").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            assert length is not None, "a message without Content-Length"
            self.inbox.put(json.loads(stream.read(length).decode("utf-8")))

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        stdin.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.send({"method": method, "params": params})

    def request(self, method: str, params: dict[str, Any] | None) -> Any:
        self.next_id += 1
        ident = self.next_id
        self.send({"id": ident, "method": method, "params": params})
        reply = self.wait(lambda m: m.get("id") == ident and "method" not in m)
        assert "error" not in reply, reply
        return reply["result"]

    def wait(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such message from the server within {timeout} s")
            try:
                message = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if message is None:
                raise AssertionError("the server closed its output")
            if wanted(message):
                return message

    def diagnostics(self, uri: str, version: int) -> list[dict[str, Any]]:
        """The diagnostics published for a document at a version."""
        found = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                          and m["params"]["uri"] == uri and m["params"].get("version") == version)
        return list(found["params"]["diagnostics"])


def uri(path: Path) -> str:
    return path.resolve().as_uri()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One server for the module's tests (each opens its own documents): started, initialized, and at
    the end shut down and told to exit, which it must do with status 0."""
    root = tmp_path_factory.mktemp("workspace")
    command = [sys.executable, "-m", "sdxlc.cli", "lsp", "--stdio"]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    lsp = Client(process)
    try:
        result = lsp.request("initialize", {"processId": None, "rootUri": uri(root), "capabilities": {}})
        assert result["serverInfo"]["name"] == "sdxlc"
        lsp.notify("initialized", {})
        yield lsp
        assert lsp.request("shutdown", None) is None
        lsp.notify("exit", {})
        assert process.wait(timeout=WAIT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_S)


def _open(lsp: Client, path: Path, text: str, version: int = 1) -> list[dict[str, Any]]:
    item = {"uri": uri(path), "languageId": "sdx", "version": version, "text": text}
    lsp.notify("textDocument/didOpen", {"textDocument": item})
    return lsp.diagnostics(uri(path), version)


def _span(diag: dict[str, Any]) -> tuple[int, int, int, int]:
    start, end = diag["range"]["start"], diag["range"]["end"]
    return start["line"], start["character"], end["line"], end["character"]


def test_diagnostics_of_an_unsaved_buffer_with_their_exact_ranges(client: Client, tmp_path: Path) -> None:
    recipe = tmp_path / "bad.sdx"  # never written: the editor's text is checked
    found = _open(client, recipe, BAD)
    by_code = {d["code"]: d for d in found}
    assert set(by_code) == {"SDX0501", "SDX0202", "SDX0403"}
    assert _span(by_code["SDX0202"]) == (2, 10, 2, 12)  # `8x` on `lora rank 8x`
    assert by_code["SDX0202"]["message"].startswith("malformed value `8x`")
    assert _span(by_code["SDX0403"]) == (3, 8, 3, 12)  # `loin`
    assert "unknown optimizer `loin`" in by_code["SDX0403"]["message"]
    assert "did you mean `lion`?" in by_code["SDX0403"]["message"]
    assert all(d["source"] == "sdxlc" and d["severity"] == 1 for d in found)


def test_a_change_is_checked_again(client: Client, tmp_path: Path) -> None:
    recipe = tmp_path / "r.sdx"
    _open(client, recipe, BAD)
    fixed = BAD.replace("8x", "8").replace("loin", "lion")
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri(recipe), "version": 2},
                                             "contentChanges": [{"text": fixed}]})
    assert [d["code"] for d in client.diagnostics(uri(recipe), 2)] == ["SDX0501"]


def test_a_save_checks_again_with_the_files_as_they_are_now(client: Client, tmp_path: Path) -> None:
    base = tmp_path / "base.sdx"
    base.write_text("sdx 1\n", encoding="utf-8")
    recipe = tmp_path / "r.sdx"
    text = 'sdx 1\nuse "base.sdx"\n'
    recipe.write_text(text, encoding="utf-8")
    assert [d["code"] for d in _open(client, recipe, text)] == ["SDX0501"]
    base.write_text("sdx 1\nlr 1e-4 loin\n", encoding="utf-8")  # changed outside the editor
    client.notify("textDocument/didSave", {"textDocument": {"uri": uri(recipe)}})
    assert sorted(d["code"] for d in client.diagnostics(uri(recipe), 1)) == ["SDX0403", "SDX0501"]


def test_an_error_in_a_used_file_sits_on_the_use_line(client: Client, tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "common.sdx").write_text("sdx 1\nbatch 2 acumulate 2\n", encoding="utf-8")
    recipe = tmp_path / "r.sdx"
    recipe.write_text("", encoding="utf-8")
    found = _open(client, recipe, 'sdx 1\nuse "base/common.sdx"\nmodel tiny\n')
    unknown = next(d for d in found if d["code"] == "SDX0201")
    assert _span(unknown) == (1, 0, 1, 21)  # the whole `use` line
    assert unknown["message"].startswith("base/common.sdx:2:9: unknown word `acumulate`")
    place = unknown["relatedInformation"][0]["location"]
    assert place["uri"] == uri(tmp_path / "base" / "common.sdx")
    assert _span({"range": place["range"]}) == (1, 8, 1, 17)


def test_ranges_count_utf16_units(client: Client, tmp_path: Path) -> None:
    text = 'sdx 1\nmodel tiny\nsample "🐱 cat" sizes 512\n'
    found = _open(client, tmp_path / "u.sdx", text)
    unknown = next(d for d in found if d["code"] == "SDX0201")
    assert _span(unknown) == (2, 16, 2, 21)  # the cat is two UTF-16 units


def test_completion_offers_keywords_clauses_and_values(client: Client, tmp_path: Path) -> None:
    recipe = tmp_path / "c.sdx"
    _open(client, recipe, "sdx 1\nlo\nlora rank 8 \nlr 1e-4 \n")

    def labels(line: int, character: int) -> set[str]:
        position = {"line": line, "character": character}
        result = client.request("textDocument/completion", {"textDocument": {"uri": uri(recipe)},
                                                            "position": position})
        return {item["label"] for item in result["items"]}

    at_start = labels(1, 2)
    assert {"lora", "lr", "schedule", "use"} <= at_start and "rank" not in at_start
    in_lora = labels(2, 12)
    assert {"alpha", "dropout", "on", "cache te"} <= in_lora and "lora" not in in_lora
    after_lr = labels(3, 8)
    assert {"lion", "adamw", "prodigy"} <= after_lr


def test_hover_explains_words_phrases_and_codes(client: Client, tmp_path: Path) -> None:
    recipe = tmp_path / "h.sdx"
    _open(client, recipe, "sdx 1\nlora rank 8 cache te\nlr 1e-4 loin\n# see SDX0572\n")

    def hover(line: int, character: int) -> str:
        result = client.request("textDocument/hover", {"textDocument": {"uri": uri(recipe)},
                                                       "position": {"line": line, "character": character}})
        return str(result["contents"]["value"])

    assert "LoRA rank" in hover(1, 6)
    assert hover(1, 18).startswith("`cache te` (clause of any statement)")
    assert hover(3, 8).startswith("SDX0572 (error)")
    assert "SDX0403 (error)" in hover(2, 9)  # the diagnostic under the cursor is explained too


def test_requests_for_documents_not_opened_are_answered_without_reading_them(client: Client) -> None:
    """A hover or completion for a URI the client never opened answers nothing: the server does not read
    it (`/dev/zero` would never end) and keeps serving."""
    position = {"line": 0, "character": 0}
    for target in ("file:///dev/zero", "file:///no/such/recipe.sdx"):
        params = {"textDocument": {"uri": target}, "position": position}
        assert client.request("textDocument/hover", params) is None
        result = client.request("textDocument/completion", params)
        assert result["items"] == []


def test_the_other_commands_do_not_load_pygls() -> None:
    code = "import sys, sdxlc.cli.main; print(*sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert not loaded & {"pygls", "lsprotocol", "cattrs"}
