"""Scan snapshots against changes their stamps could miss, and against a damaged cache: a warm plan is
always the plan a cold plan (no cache folder) gives on the same files, and a bad input is reported, never
a crash."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_scan_snapshot import cold, plan

from sdxlc.resolve import data as resolve_data
from sdxlc.resolve import snapshot

RECIPE = """sdx 1
model tiny
profile cpu
data "{data}"
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
batch 2
steps 2
output "out"
"""


def age(root: Path) -> None:
    """Every file and folder under root (and root) last modified an hour ago: a settled dataset."""
    past = time.time() - 3600
    for folder, folders, files in os.walk(root, topdown=False):
        for name in files + folders:
            os.utime(os.path.join(folder, name), (past, past), follow_symlinks=False)
        os.utime(folder, (past, past))


def dataset(root: Path) -> Path:
    """Four small images (PNG and JPEG), each with a caption."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(4):
        Image.new("RGB", (64 + 8 * n, 64), (n, 0, 0)).save(root / f"{n}.{'png' if n % 2 else 'jpg'}")
        (root / f"{n}.txt").write_text(f"caption {n}", encoding="utf-8")
    return root


def recipe(tmp_path: Path, data: str = "d") -> Path:
    file = tmp_path / "r.sdx"
    file.write_text(RECIPE.format(data=data), encoding="utf-8")
    return file


def warmed(tmp_path: Path, setup: Callable[[Path, Path], None] | None = None) -> Path:
    root = dataset(tmp_path / "d")
    if setup is not None:
        setup(tmp_path, root)
    age(root)
    file = recipe(tmp_path)
    plan(file)
    assert list((tmp_path / resolve_data.CACHE_DIR / snapshot.SNAPSHOT_DIR).glob("scan-*.bin"))
    return file


def _in_place(file: Path, data: bytes) -> None:
    """`data` written over the file in place (same inode and size), its modification time put back."""
    stamp = file.stat()
    assert len(data) == stamp.st_size
    with open(file, "r+b") as handle:
        handle.write(data)
    os.utime(file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


def _image_rewritten(tmp_path: Path) -> None:
    file = tmp_path / "d" / "1.png"
    data = bytearray(file.read_bytes())
    data[-20] ^= 0xFF  # a bad CRC: a bad image now
    _in_place(file, bytes(data))


def _caption_rewritten(tmp_path: Path) -> None:
    _in_place(tmp_path / "d" / "0.txt", b"CAPTION 0")


@pytest.mark.parametrize("change", [_image_rewritten, _caption_rewritten])
def test_a_file_rewritten_with_its_size_and_modification_time_put_back_is_seen(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    file = warmed(tmp_path)
    before = plan(file)
    change(tmp_path)
    after = plan(file)
    assert after != before
    assert after == cold(file)


def _dangling(tmp_path: Path, root: Path) -> None:
    (root / "more").symlink_to(tmp_path / "later")


def _to_a_file(tmp_path: Path, root: Path) -> None:
    (tmp_path / "later").write_text("a file", encoding="utf-8")
    (root / "more").symlink_to(tmp_path / "later")


@pytest.mark.parametrize("setup", [_dangling, _to_a_file])
def test_a_symlink_whose_target_becomes_a_folder_of_images_is_seen(
    tmp_path: Path, setup: Callable[[Path, Path], None]
) -> None:
    file = warmed(tmp_path, setup)
    assert plan(file)[0]["data"]["images"] == 4
    (tmp_path / "later").unlink(missing_ok=True)
    (tmp_path / "later").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "later" / "x.png")  # the dataset's listings are as they were
    after = plan(file)
    assert after[0]["data"]["images"] == 5
    assert after == cold(file)


def test_a_file_name_that_is_not_utf8_is_a_bad_input_not_a_crash(tmp_path: Path) -> None:
    root = dataset(tmp_path / "d")
    Image.new("RGB", (64, 64)).save(os.fsencode(root) + b"/bad\xff.png")
    file = recipe(tmp_path)
    first = plan(file)
    assert first[0]["data"]["images"] == 4
    assert any("bad\\xff.png: its file name is not UTF-8" in w for w in first[0]["warnings"])
    assert plan(file) == first == cold(file)


def test_a_manifest_row_with_a_lone_surrogate_is_a_bad_input_not_a_crash(tmp_path: Path) -> None:
    root = dataset(tmp_path / "d")
    (root / "list.jsonl").write_text(
        '{"path": "0.jpg", "caption": "ok"}\n{"path": "1.png", "caption": "bad \\ud800"}\n'
        '{"path": "\\udcff.png"}\n{"path": "\\ud800.png"}\n', encoding="utf-8")
    first = plan(recipe(tmp_path, "d/list.jsonl"))
    assert first[0]["data"]["images"] == 1
    [skipped] = [w for w in first[0]["warnings"] if w.startswith("skipped 3 bad input")]
    assert skipped.count("is not UTF-8 text (a lone surrogate)") == 3, skipped


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = dataset(tmp_path / "d")
    dataset(root / "locked")
    scandir = os.scandir

    def refused(path: Any) -> Any:
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    compiled = plan(recipe(tmp_path))
    assert compiled[0]["data"]["images"] == 4
    assert any("locked: folder cannot be listed (Permission denied)" in w for w in compiled[0]["warnings"])


def test_a_manifest_key_file_copied_from_another_plan_is_not_trusted(tmp_path: Path) -> None:
    file = warmed(tmp_path)
    keys = tmp_path / resolve_data.CACHE_DIR / snapshot.SNAPSHOT_DIR
    [first] = keys.glob("manifest-*.txt")
    (tmp_path / "d" / "0.txt").write_text("another caption", encoding="utf-8")
    age(tmp_path / "d")
    plan(file)
    [second] = [key for key in keys.glob("manifest-*.txt") if key != first]
    shutil.copyfile(first, second)  # names the first plan's manifest, intact in the store
    assert plan(file) == cold(file)
