// Starts `sdxlc lsp` over stdio for .sdx recipes (settings: sdx.server.path, sdx.server.args).
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration("sdx");
  const folder = vscode.workspace.workspaceFolders && vscode.workspace.workspaceFolders[0];
  const server = {
    command: config.get("server.path", "sdxlc"),
    args: config.get("server.args", ["lsp"]),
    transport: TransportKind.stdio,
    options: folder ? { cwd: folder.uri.fsPath } : {},
  };
  client = new LanguageClient(
    "sdx",
    "sdx recipes (sdxlc lsp)",
    { run: server, debug: server },
    {
      documentSelector: [
        { scheme: "file", language: "sdx" },
        { scheme: "untitled", language: "sdx" },
      ],
    },
  );
  context.subscriptions.push({ dispose: () => (client ? client.stop() : undefined) });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
