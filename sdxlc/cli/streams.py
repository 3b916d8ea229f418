"""Output that outlives its reader: `sdxlc run … | head -1`, or a closed terminal window, must not stop
a training run halfway.

Python ignores SIGPIPE, so writing to a pipe whose reader has gone raises BrokenPipeError from whatever
print or progress line comes next: inside the training loop, that would end the run without its saved
result. `tolerate_closed_output` puts a thin proxy over standard output and error that drops what is
written once its reader has gone (every other attribute is the stream's own), so the run trains and saves
as it would have; the files, not the printed lines, are its results.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class _Tolerant:
    """A text stream that stops writing, silently, once its pipe is closed."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self.gone = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def tolerate_closed_output() -> None:
    """Wrap sys.stdout and sys.stderr (once) so that a closed pipe drops output instead of raising."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Tolerant):
            setattr(sys, name, _Tolerant(stream))
