"""`sdxlc lsp`: the language server of `.sdx` recipes for editors (docs/EDITORS.md).

pygls is imported only here, inside the command, so that the other commands start without it. Exit
codes as for the rest of `sdxlc`: 0 after the client's `shutdown` and `exit`, 3 when the server cannot
start.
"""

from __future__ import annotations

import sys

import click

EXIT_RUN = 3


@click.command("lsp")
@click.option("--stdio", is_flag=True, help="Talk over stdin and stdout (the default and only transport).")
def lsp_command(stdio: bool) -> None:
    """Run the language server (diagnostics, completion, hover) over stdin and stdout."""
    try:
        from sdxlc.editor.server import serve
    except ImportError as exc:  # pygls is a dependency; a broken install says what is missing
        click.echo(f"error: `sdxlc lsp` needs pygls ({exc}): pip install 'pygls>=2,<3'", err=True)
        sys.exit(EXIT_RUN)
    serve()


__all__ = ["lsp_command"]
