"""A full disk on each kind of write: a clear error naming the path and the free space, exit 3, and
whatever was written before left intact."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_data_cache import dataset

from runtime import RunError
from sdxlc.cli.data import cache_command
from sdxlc.cli.main import main


def _full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_caching_is_exit_3_naming_the_entry(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.cache import store

    recipe = dataset(tmp_path)
    monkeypatch.setattr(store, "write_safetensors", _full)
    result = CliRunner().invoke(cache_command, [str(recipe)])
    assert result.exit_code == 3, result.output
    assert "could not write" in result.output and ".sdxlc-cache" in result.output
    assert "No space left on device" in result.output and "free on its disk" in result.output
    assert not list((tmp_path / ".sdxlc-cache").rglob("*.tmp"))


def test_a_full_disk_while_writing_samples_stops_the_run_cleanly(make_plan, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from runtime.train.run import execute

    plan = make_plan(tmp_path, training__total_steps=2)
    monkeypatch.setattr(Image.Image, "save", _full)
    with pytest.raises(RunError, match=r"could not write .*samples: No space left on device \(.* free"):
        execute(plan, progress=False)
    out = Path(plan["output"]["dir"])
    assert (out / "tinylora.safetensors").is_file()  # the artifact saved before the samples is whole
    assert not list(out.rglob("*.tmp"))


def test_a_full_disk_before_training_is_exit_3_with_nothing_trained(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sdxlc.plan import contract

    recipe = dataset(tmp_path)
    monkeypatch.setattr(contract, "write_atomic", _full)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 3 and "cannot write" in result.output and "plan.json" in result.output
