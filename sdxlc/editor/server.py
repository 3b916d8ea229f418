"""The language server of `.sdx` recipes (`sdxlc lsp`), over stdio.

Each open recipe is compiled as `sdxlc check` compiles it, at its real path (so `use` files, data
folders and models resolve as they will), with the editor's unsaved text of every open recipe read
instead of the file on disk. A document is checked when it is opened or saved, and a moment after the
last change while it is being typed; checks run one at a time on a worker thread, and a check made
stale by a newer change is dropped. Completion and hover read only the document's text.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import uri_scheme
from pygls.workspace import TextDocument

from sdxlc import __version__
from sdxlc.editor import features, text

TYPING_PAUSE_S = 0.3  # how long typing must pause before a changed document is checked again


class RecipeServer(LanguageServer):
    """The server and what it keeps per document: the pending check and the diagnostics last sent."""

    def __init__(self) -> None:
        super().__init__("sdxlc", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.pending: dict[str, asyncio.Task[None]] = {}
        self.published: dict[str, list[lsp.Diagnostic]] = {}
        self.checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxlc-check")

    def schedule(self, uri: str, delay: float) -> None:
        """Check a document after `delay` seconds, replacing a check not yet finished."""
        earlier = self.pending.pop(uri, None)
        if earlier is not None:
            earlier.cancel()
        self.pending[uri] = asyncio.get_running_loop().create_task(self._check(uri, delay))

    async def _check(self, uri: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if uri not in self.workspace.text_documents:
            return
        doc = self.workspace.get_text_document(uri)
        codec = self.workspace.position_codec
        args = (path_of(doc), uri, self.unsaved(), codec)
        try:
            found = await asyncio.get_running_loop().run_in_executor(self.checker, features.check, *args)
        except Exception as exc:  # a compiler bug: said in the editor's log; the server goes on
            message = f"sdxlc {__version__}: internal error checking {uri}: {type(exc).__name__}: {exc}"
            self.window_log_message(lsp.LogMessageParams(lsp.MessageType.Error, message))
            return
        self.published[uri] = found
        self.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=uri, diagnostics=found, version=doc.version)
        )

    def unsaved(self) -> dict[Path, str]:
        """The text of every open recipe, by resolved path."""
        docs: dict[str, TextDocument] = self.workspace.text_documents
        return {path_of(doc).resolve(): doc.source for doc in docs.values() if _is_recipe(doc)}

    def forget(self, uri: str) -> None:
        """A closed document: its pending check is dropped and its diagnostics cleared."""
        earlier = self.pending.pop(uri, None)
        if earlier is not None:
            earlier.cancel()
        self.published.pop(uri, None)
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


def _is_recipe(doc: TextDocument) -> bool:
    return doc.language_id == "sdx" or doc.uri.endswith(".sdx")


def path_of(doc: TextDocument) -> Path:
    """Where a document's recipe lives: its file, or for an unsaved new document a name in the current
    folder (so that paths in it are relative to where the editor started the server)."""
    if uri_scheme(doc.uri) == "file":
        return Path(os.path.abspath(doc.path))
    return Path(os.getcwd()) / (Path(doc.path).name or "untitled.sdx")


def _lines(server: RecipeServer, uri: str) -> list[str]:
    """An open document's lines; none for a document the client did not open (never read from disk:
    its URI may name a device or a folder)."""
    if uri not in server.workspace.text_documents:
        return []
    return text.lines_of(server.workspace.get_text_document(uri).source)


def _column(server: RecipeServer, lines: list[str], position: lsp.Position) -> int:
    """A client position's column in characters."""
    at = lsp.Position(position.line, position.character)  # the codec may change what it is given
    return int(server.workspace.position_codec.position_from_client_units(lines, at).character)


def build() -> RecipeServer:
    """A server with its features registered."""
    server = RecipeServer()

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: RecipeServer, params: lsp.DidOpenTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri, 0)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: RecipeServer, params: lsp.DidChangeTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri, TYPING_PAUSE_S)

    @server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: RecipeServer, params: lsp.DidSaveTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri, 0)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: RecipeServer, params: lsp.DidCloseTextDocumentParams) -> None:
        ls.forget(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_COMPLETION)
    def completion(ls: RecipeServer, params: lsp.CompletionParams) -> lsp.CompletionList:
        lines = _lines(ls, params.text_document.uri)
        column = _column(ls, lines, params.position)
        items = features.completions(lines, params.position.line, column)
        return lsp.CompletionList(is_incomplete=False, items=items)

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    def hover(ls: RecipeServer, params: lsp.HoverParams) -> lsp.Hover | None:
        uri = params.text_document.uri
        lines = _lines(ls, uri)
        column = _column(ls, lines, params.position)
        return features.hover(lines, params.position, column, ls.published.get(uri, []))

    return server


def serve(**io: Any) -> None:
    """Run the server on stdin and stdout until the client says `exit` or closes the pipe."""
    server = build()
    try:
        server.start_io(**io)
    finally:
        server.checker.shutdown(wait=False, cancel_futures=True)
