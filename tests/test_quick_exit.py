"""`sdxlc.cli.quick_exit.leave`: after a run, the process ends without the interpreter's teardown, and
still does what a normal exit does that matters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdxlc.cli.quick_exit import exit_status, leave

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
{torch}
from sdxlc.cli.quick_exit import leave
folder = Path(sys.argv[1])
def late():
    time.sleep(0.3)
    (folder / "thread").write_text("done")
atexit.register(lambda: (folder / "atexit").write_text("ran"))
class Teardown:
    def __del__(self):
        (folder / "teardown").write_text("cleared")
kept = Teardown()  # a module global: only the interpreter's teardown deletes it
threading.Thread(target=late).start()
print("buffered output", end="")
leave({code!r})
raise AssertionError("leave returned")
"""


def _run(tmp_path: Path, code: object, torch: bool = True) -> subprocess.CompletedProcess[str]:
    text = SCRIPT.format(code=code, torch="import torch" if torch else "")
    return subprocess.run([sys.executable, "-c", text, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), (70, 70)])
def test_a_run_process_exits_with_its_status_after_threads_and_atexit(
    tmp_path: Path, code: object, status: int
) -> None:
    proc = _run(tmp_path, code)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == "buffered output"  # flushed before the process ended
    assert (tmp_path / "thread").read_text() == "done"  # a non-daemon thread was waited for
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()  # the module teardown was skipped


def test_a_message_is_printed_and_exits_1(tmp_path: Path) -> None:
    proc = _run(tmp_path, "error: stopped")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: stopped"


def test_without_torch_loaded_it_is_a_normal_exit(tmp_path: Path) -> None:
    proc = _run(tmp_path, 2, torch=False)
    assert proc.returncode == 2
    assert "AssertionError" not in proc.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "teardown").read_text() == "cleared"


def test_in_process_without_torch_it_raises_system_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a compiler-only command
    with pytest.raises(SystemExit) as raised:
        leave(4)
    assert raised.value.code == 4


def test_exit_status_follows_system_exit() -> None:
    assert exit_status(None) == 0
    assert exit_status(2) == 2
    assert exit_status(256 + 3) == 3


def test_an_idle_thread_pool_does_not_keep_the_process(tmp_path: Path) -> None:
    """An executor's idle worker (TorchInductor's compile leaves one) is stopped as a normal exit stops
    it, not waited for forever."""
    code = ("import torch\nfrom concurrent.futures import ThreadPoolExecutor\n"
            "from sdxlc.cli.quick_exit import leave\n"
            "pool = ThreadPoolExecutor(max_workers=2)\nassert pool.submit(lambda: 5).result() == 5\n"
            "leave(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_an_interrupt_while_threads_are_waited_for_keeps_the_status(tmp_path: Path) -> None:
    """A second Ctrl-C while the exit waits for a thread stops the wait, as in a normal exit: the run's
    status stays (3 after an interrupted run), atexit still runs, and no traceback is printed."""
    code = ("import atexit, os, signal, sys, threading, time\nimport torch\nfrom pathlib import Path\n"
            "from sdxlc.cli.quick_exit import leave\n"
            "atexit.register(lambda: Path(sys.argv[1]).write_text('ran'))\n"
            "threading.Thread(target=time.sleep, args=(60,)).start()\n"
            "threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
            "try:\n    raise SystemExit(3)\nexcept SystemExit as done:\n    leave(done.code)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "atexit")], capture_output=True,
                          text=True, timeout=50)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
