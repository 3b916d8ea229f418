"""Leaving a process that loaded the training stack without the interpreter's teardown.

After `sdxlc run` (or `gen`) has finished, closed and written everything, CPython's shutdown still
clears every module it imported and collects their objects: with torch, diffusers and transformers loaded
that is a second or more of a short run's wall time, spent on nothing the user keeps. `leave` does what a
normal exit does that matters (stops idle thread pools and waits for the process's non-daemon threads,
runs the `atexit` handlers, flushes standard output and error) and then ends the process with
`os._exit`. A process that never imported torch exits the normal way.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

HEAVY_MODULE = "torch"


def exit_status(code: object) -> int:
    """The process status `SystemExit(code)` gives: None is 0, an int itself, anything else printed to
    standard error and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _shutdown_threads() -> None:
    """What the interpreter's exit does first: the threading module's exit callbacks (they stop idle
    thread pools, such as the ones TorchInductor's compile leaves), then a join of the non-daemon threads."""
    shutdown = getattr(threading, "_shutdown", None)
    if callable(shutdown):
        shutdown()
        return
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()


def leave(code: object) -> NoReturn:
    """Exit with `code` as `sys.exit(code)` would, skipping the module teardown once torch is loaded."""
    if HEAVY_MODULE not in sys.modules:
        raise SystemExit(code)
    status = exit_status(code)
    try:
        _shutdown_threads()
    except KeyboardInterrupt:  # Ctrl-C while a thread is waited for stops the wait, as in a normal exit
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(status)
