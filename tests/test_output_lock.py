"""A running run's output folder is locked: a second run (fresh, `--overwrite`, `--resume`) never moves or
mixes its files, and a killed run leaves no stale lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdxlc.cli.main import main
from sdxlc.plan import layout, lock

ROOT = Path(__file__).resolve().parent.parent
HOLD = (
    "import sys, time\nfrom pathlib import Path\nfrom sdxlc.plan import lock\n"
    "held = lock.acquire(Path(sys.argv[1]))\n"
    "if len(sys.argv) > 2:  # a process it launches shares the lock\n"
    "    import subprocess\n"
    "    subprocess.run([sys.executable, '-c', sys.argv[2], sys.argv[1]], check=True)\n"
    "print('held', flush=True)\ntime.sleep(600)\n"
)
SHARE = (
    "import sys\nfrom pathlib import Path\nfrom sdxlc.plan import lock\n"
    "print('shared' if not lock.acquire(Path(sys.argv[1])).owned else 'owned', flush=True)\n"
)

pytestmark = pytest.mark.skipif(not lock.LOCKS, reason="no flock here")


def _hold(out: Path, *child: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Another process that holds `out`'s lock until it is killed, and what it printed before."""
    env = {k: v for k, v in os.environ.items() if k != lock.INHERITED}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), *child], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    assert proc.stdout is not None
    lines = []
    while (line := proc.stdout.readline().strip()) != "held":
        assert line or proc.poll() is None, f"the holder ended: {lines}"
        lines.append(line)
    return proc, lines


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _recipe(folder: Path) -> Path:
    import shutil

    shutil.copytree(ROOT / "recipes" / "data" / "quickstart", folder / "data")
    recipe = folder / "r.sdx"
    recipe.write_text(
        'sdx 1\nmodel tiny\nprofile cpu\ndata "data" caption .txt\nresolution 64 buckets 64..128 step 32\n'
        "lora rank 4 on unet\nlr 1e-3 adamw\nbatch 2\nsteps 2\nseed 5\nlog every 1 no tensorboard\n"
        'save every 2 steps keep 3\noutput "out"\n',
        encoding="utf-8",
    )
    return recipe


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_second_run_into_a_running_runs_folder_is_refused_and_changes_nothing(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    recipe = _recipe(tmp_path)
    out = tmp_path / "out"
    # what a run still training has written so far: its plan, manifest and logs
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "events.out.tfevents.1").write_bytes(b"first run's events")
    (out / "plan.json").write_text(json.dumps({"plan_hash": "f" * 64}), encoding="utf-8")
    (out / f"manifest-{'f' * 12}.json").write_text("{}", encoding="utf-8")
    holder, _ = _hold(out)
    holders.append(holder)
    before = _files(out)
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = CliRunner().invoke(main, ["run", str(recipe), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert f"output folder {out} is in use by a running run (pid {holder.pid})" in result.output, extra
        assert "earlier run" not in result.output and "Traceback" not in result.output
        assert _files(out) == before, extra
        assert not (out / layout.PREVIOUS).exists()
    # the run's own process dies the hard way: the kernel frees the lock, nothing stale is left
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 2 and "holds the results of another run" in result.output, result.output
    result = CliRunner().invoke(main, ["run", str(recipe), "--overwrite"])
    assert result.exit_code == 0, result.output
    (aside,) = (out / layout.PREVIOUS).iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["logs", f"manifest-{'f' * 12}.json", "plan.json"]
    assert (aside / "logs" / "events.out.tfevents.1").read_bytes() == b"first run's events"
    assert (out / lock.LOCK_FILE).is_file() and (out / "r.safetensors").is_file()
    assert layout.results(out, json.loads((out / "plan.json").read_text())["plan_hash"]) != []
    with lock.acquire(out) as again:  # the run ended: released, in this process as in any other
        assert again.owned
        assert lock.holder(out) == os.getpid()


def test_the_lock_is_refused_to_others_until_its_holder_is_killed(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    out = tmp_path / "not" / "there" / "yet"
    holder, _ = _hold(out)
    holders.append(holder)
    assert lock.holder(out) == holder.pid
    with pytest.raises(lock.OutputLocked, match=rf"in use by a running run \(pid {holder.pid}\)"):
        lock.acquire(out)
    assert isinstance(lock.OutputLocked("x"), layout.OutputInUse)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    held = lock.acquire(out)
    try:
        assert held.owned and lock.holder(out) == os.getpid()
        inner = lock.acquire(out)  # the CLI holds it, then the runtime takes it again in the same process
        inner.release()
        probe = subprocess.run([sys.executable, "-c", SHARE, str(out)], capture_output=True, text=True,
                               cwd=ROOT, env={k: v for k, v in os.environ.items() if k != lock.INHERITED})
        assert "in use by a running run" in probe.stderr and f"pid {os.getpid()}" in probe.stderr
    finally:
        held.release()
    assert lock.INHERITED not in os.environ
    lock.acquire(out).release()


def test_the_processes_a_run_launches_share_its_lock(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    out = tmp_path / "out"
    holder, printed = _hold(out, SHARE)
    holders.append(holder)
    assert printed == ["shared"]
    with pytest.raises(lock.OutputLocked):  # this process was not launched by the holder
        lock.acquire(out)


def test_without_flock_a_run_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "LOCKS", False)
    with lock.acquire(tmp_path / "out") as held:
        assert not held.owned
    assert not (tmp_path / "out").exists()


LAUNCHER = (
    "import os, subprocess, sys, time\nfrom pathlib import Path\nfrom sdxlc.plan import lock\n"
    "held = lock.acquire(Path(sys.argv[1]))\n"
    "child = subprocess.Popen([sys.executable, '-c', sys.argv[2], sys.argv[1]], stdout=subprocess.PIPE,\n"
    "                         text=True)\n"
    "print(child.stdout.readline().strip(), child.pid, flush=True)\nprint('held', flush=True)\n"
    "time.sleep(600)\n"
)
RANK = (
    "import sys, time\nfrom pathlib import Path\nfrom sdxlc.plan import lock\n"
    "shared = lock.join(Path(sys.argv[1]))\n"
    "print('joined' if shared.shared is not None else 'alone', flush=True)\ntime.sleep(600)\n"
)


def test_a_launched_process_keeps_the_folder_in_use_after_its_launcher_is_killed(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != lock.INHERITED}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(out), RANK], stdout=subprocess.PIPE,
                                text=True, cwd=ROOT, env=env)
    holders.append(launcher)
    assert launcher.stdout is not None
    state, pid = launcher.stdout.readline().split()
    assert state == "joined"
    assert launcher.stdout.readline().strip() == "held"
    launcher.send_signal(signal.SIGKILL)  # the launcher dies; the process it launched trains on
    launcher.wait()
    with pytest.raises(lock.OutputLocked, match="launcher has ended"):
        lock.acquire(out)
    assert lock.INHERITED not in os.environ
    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the kernel drops the rank's lock once the process is gone
        try:
            lock.acquire(out).release()
            break
        except lock.OutputLocked:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_join_outside_a_launched_run_holds_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lock.INHERITED, raising=False)
    shared = lock.join(tmp_path / "out")
    assert shared.shared is None and not shared.owned
    assert not (tmp_path / "out").exists()


def test_a_ranks_file_that_cannot_be_opened_leaves_no_lock_held(tmp_path: Path) -> None:
    """An error on `.sdxlc-run.ranks.lock` is reported, and the folder's lock is let go with it: the
    process can take the folder once the file is fixed."""
    out = tmp_path / "out"
    (out / lock.RANKS_FILE).mkdir(parents=True)  # a folder in its place: cannot be opened
    with pytest.raises(IsADirectoryError):
        lock.acquire(out)
    assert lock.INHERITED not in os.environ
    (out / lock.RANKS_FILE).rmdir()
    with lock.acquire(out) as held:
        assert held.owned


def test_a_process_whose_launcher_has_ended_stops_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    held = lock.acquire(out)
    inherited = os.environ[lock.INHERITED]
    held.release()  # the launcher is gone; its environment lives on in the process it launched
    monkeypatch.setenv(lock.INHERITED, inherited)
    with pytest.raises(lock.OutputLocked, match="no longer holds its output folder"):
        lock.join(out)
    lock.acquire(out).release()  # the refused join left nothing held
