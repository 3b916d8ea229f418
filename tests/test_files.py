"""sdxlc/plan/files.py: a file (or a checkpoint folder) is either its old self or its whole new self."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sdxlc.plan import files
from sdxlc.plan.files import atomic_folder, atomic_path, write_atomic


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_atomic_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "plan.json"
    assert write_atomic(target, b"first") == target  # missing folders are made
    write_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert leftovers(target.parent) == []


def test_new_files_get_the_permissions_open_gives(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.safetensors", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644  # not mkstemp's 0o600


def test_atomic_path_hands_a_temporary_name_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "entry.safetensors"
    target.write_bytes(b"old")
    with atomic_path(target) as temp:
        assert temp.parent == tmp_path and temp != target and temp.name.endswith(".tmp")
        temp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing moves before the writer is done
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(ValueError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise ValueError("the writer failed")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_failing_replace_surfaces_as_oserror_and_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "plan.json"
    target.write_bytes(b"previous")

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError) as caught:
        write_atomic(target, b"next")
    assert caught.value.strerror == "No space left on device"
    assert target.read_bytes() == b"previous" and leftovers(tmp_path) == []


def test_a_failing_fsync_surfaces_as_oserror_and_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "index.json"
    target.write_bytes(b"previous")

    def io_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", io_error)
    with pytest.raises(OSError):
        write_atomic(target, b"next")
    assert target.read_bytes() == b"previous" and leftovers(tmp_path) == []


def test_an_unwritable_folder_is_an_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        write_atomic(blocker / "plan.json", b"x")  # a file where the folder should be


def test_a_fifo_or_device_is_never_replaced_by_a_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        write_atomic(fifo, b"x")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]


def test_atomic_folder_replaces_a_folder_whole(tmp_path: Path) -> None:
    final = tmp_path / "checkpoints" / "step-000004"
    with atomic_folder(final) as temp:
        assert temp.name == f".step-000004.tmp-{os.getpid()}"
        (temp / "state.json").write_text("{}", encoding="utf-8")
        assert not final.exists()
    with atomic_folder(final) as temp:  # saving the same step again replaces it
        (temp / "plan.json").write_text("{}", encoding="utf-8")
    assert sorted(p.name for p in final.iterdir()) == ["plan.json"]
    assert leftovers(final.parent) == []


def test_atomic_folder_removes_its_folder_when_the_block_raises(tmp_path: Path) -> None:
    final = tmp_path / "step-000008"
    with atomic_folder(final) as temp:
        (temp / "state.json").write_text("old", encoding="utf-8")
    with pytest.raises(OSError), atomic_folder(final) as temp:
        (temp / "state.json").write_text("new", encoding="utf-8")
        raise OSError(28, "No space left on device")
    assert (final / "state.json").read_text(encoding="utf-8") == "old"
    assert leftovers(tmp_path) == []
