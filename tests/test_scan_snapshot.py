"""Scan snapshots and the reused manifest text: a warm plan takes a dataset's scan from its snapshot only
while every folder listing and every image and caption file is as it was, and any change gives exactly
the plan a cold plan (no cache folder) gives."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdxlc.pipeline import compile_recipe
from sdxlc.resolve import data as resolve_data
from sdxlc.resolve import snapshot

RECIPE = """sdx 1
model tiny
profile cpu
data "d"{extra}
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
batch 2
steps 2
output "out"
"""
AN_HOUR = 3600


def dataset(root: Path, count: int = 8) -> Path:
    """`count` small images (PNG and JPEG of a few sizes) in a kohya folder and a plain one, each but the
    last with a caption."""
    for n in range(count):
        folder = root / ("2_sks dog" if n % 2 else "plain")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64 + 8 * (n % 3), 48 + 8 * n), (n, 0, 0)).save(
            folder / f"{n}.{'png' if n % 2 else 'jpg'}")
        if n < count - 1:
            (folder / f"{n}.txt").write_text(f"caption {n}", encoding="utf-8")
    age(root)
    return root


def age(root: Path) -> None:
    """Every file and folder under root (and root) last modified an hour ago: settled, as a dataset
    is between two plans."""
    past = time.time() - AN_HOUR
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            os.utime(os.path.join(folder, name), (past, past))
        os.utime(folder, (past, past))


def recipe(tmp_path: Path, extra: str = "") -> Path:
    file = tmp_path / "r.sdx"
    file.write_text(RECIPE.format(extra=extra), encoding="utf-8")
    return file


def plan(file: Path) -> tuple[dict[str, Any], str]:
    """The sealed plan (less its provenance) and the manifest's text."""
    compiled = compile_recipe(file)
    assert compiled.plan is not None and compiled.manifest is not None, compiled.diagnostics
    return {k: v for k, v in compiled.plan.items() if k != "provenance"}, compiled.manifest.text()


def cold(file: Path) -> tuple[dict[str, Any], str]:
    """The plan with no cache folder (no index, snapshot or manifest store); the cache is put back."""
    cache = file.parent / resolve_data.CACHE_DIR
    kept = file.parent / "kept-cache"
    if cache.exists():
        shutil.move(cache, kept)
    try:
        return plan(file)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if kept.exists():
            shutil.move(kept, cache)


def snapshots(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / resolve_data.CACHE_DIR / snapshot.SNAPSHOT_DIR).glob("scan-*.bin"))


class Scans:
    """Counts the scans that walk the folders (the snapshot's fallback)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        scan = snapshot.scan_dataset

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return scan(*args, **kwargs)

        monkeypatch.setattr(snapshot, "scan_dataset", counted)


@pytest.fixture
def warmed(tmp_path: Path) -> Path:
    """A dataset and its recipe, planned once: the snapshot is written."""
    dataset(tmp_path / "d")
    file = recipe(tmp_path)
    plan(file)
    assert len(snapshots(tmp_path)) == 1
    return file


def test_an_unchanged_dataset_is_planned_from_its_snapshot_without_a_scan(
    warmed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = plan(warmed)
    scans = Scans(monkeypatch)
    with monkeypatch.context() as patched:  # neither the entries nor the text of the manifest are made
        patched.setattr(resolve_data, "manifest", None)
        again = plan(warmed)
    assert scans.count == 0
    assert again == first == cold(warmed)
    assert again[0]["data"]["images"] == 8


def _edit_caption(root: Path) -> None:  # in place: the folder's listing and modification time stay
    with open(root / "plain" / "0.txt", "r+", encoding="utf-8") as handle:
        handle.write("CAPTION")


def _rewrite_image_same_size(root: Path) -> None:  # in place, same size, other bytes (a bad CRC)
    file = root / "2_sks dog" / "1.png"
    data = bytearray(file.read_bytes())
    data[-20] ^= 0xFF
    with open(file, "r+b") as handle:
        handle.write(bytes(data))


def _replace_image_same_size(root: Path) -> None:  # same size and modification time, another inode
    file = root / "plain" / "2.jpg"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01  # other bytes: another sha256
    (root / "new.jpg").write_bytes(bytes(data))
    stamp = file.stat()
    os.replace(root / "new.jpg", file)
    os.utime(file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    os.utime(root / "plain", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # even the folder's
    assert file.stat().st_size == stamp.st_size


def _touch(root: Path) -> None:  # nothing but the modification time changes: the same plan
    os.utime(root / "plain" / "0.jpg")


def _add_image(root: Path) -> None:
    Image.new("RGB", (128, 64), (0, 9, 0)).save(root / "plain" / "added.png")


def _add_caption(root: Path) -> None:  # the image without a caption gets one
    (root / "2_sks dog" / "7.txt").write_text("now captioned", encoding="utf-8")


def _remove_image(root: Path) -> None:
    (root / "plain" / "4.jpg").unlink()


def _rename_image(root: Path) -> None:
    os.rename(root / "plain" / "0.jpg", root / "plain" / "z.jpg")


def _move_between_folders(root: Path) -> None:  # changes the image's repeats and folder caption
    os.rename(root / "plain" / "6.jpg", root / "2_sks dog" / "6.jpg")


def _add_folder(root: Path) -> None:
    (root / "plain" / "deeper").mkdir()
    Image.new("RGB", (64, 64)).save(root / "plain" / "deeper" / "deep.png")


@pytest.mark.parametrize("change", [
    _edit_caption, _rewrite_image_same_size, _replace_image_same_size, _touch, _add_image, _add_caption,
    _remove_image, _rename_image, _move_between_folders, _add_folder,
])
def test_a_changed_dataset_plans_as_a_cold_plan_would(
    warmed: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]
) -> None:
    before = plan(warmed)
    change(warmed.parent / "d")
    scans = Scans(monkeypatch)
    after = plan(warmed)
    assert scans.count == 1  # the snapshot was not trusted
    assert after == cold(warmed)
    assert (after == before) == (change is _touch)


def test_a_settled_change_is_snapshotted_again(warmed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = warmed.parent / "d"
    _add_image(root)
    fresh = plan(warmed)  # the folder was modified just now: no snapshot of it is trusted yet
    age(root)
    assert plan(warmed) == fresh
    scans = Scans(monkeypatch)
    assert plan(warmed) == fresh
    assert scans.count == 0 and fresh[0]["data"]["images"] == 9
    assert fresh == cold(warmed)


def test_a_dataset_modified_moments_ago_is_not_snapshotted(tmp_path: Path) -> None:
    dataset(tmp_path / "d")
    _add_image(tmp_path / "d")
    plan(recipe(tmp_path))
    assert snapshots(tmp_path) == []


@pytest.mark.parametrize("extra", [" caption .cap", " repeat 3", ' caption .txt default caption "x"'])
def test_another_data_line_does_not_use_the_snapshot(
    warmed: Path, monkeypatch: pytest.MonkeyPatch, extra: str
) -> None:
    (warmed.parent / "d" / "plain" / "0.cap").write_text("other", encoding="utf-8")
    age(warmed.parent / "d")
    plan(warmed)  # a settled folder: snapshotted again for the recipe as it is
    file = recipe(warmed.parent, extra)
    scans = Scans(monkeypatch)
    changed = plan(file)
    assert scans.count == 1
    assert changed == cold(file)


def test_a_symlinked_image_whose_target_changes_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside.png"
    Image.new("RGB", (64, 64)).save(outside)
    root = dataset(tmp_path / "d")
    (root / "plain" / "link.png").symlink_to(outside)
    age(root)
    file = recipe(tmp_path)
    plan(file)
    Image.new("RGB", (128, 64)).save(outside)
    scans = Scans(monkeypatch)
    after = plan(file)
    assert scans.count == 1 and after == cold(file)


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-7])


def _flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x55
    file.write_bytes(bytes(data))


def _foreign_body_with_a_good_checksum(file: Path) -> None:
    import hashlib
    import marshal

    raw = file.read_bytes()
    key = raw[12:44]
    body = marshal.dumps(("not", "a", "snapshot"))
    file.write_bytes(snapshot._HEADER.pack(snapshot._MAGIC, snapshot.SNAPSHOT_VERSION, key, len(body),
                                           hashlib.sha256(body).digest()) + body)


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _foreign_body_with_a_good_checksum,
                                    lambda file: file.write_bytes(b""), lambda file: file.write_text("junk")])
def test_a_damaged_snapshot_is_ignored_and_rewritten(
    warmed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
) -> None:
    expected = plan(warmed)
    [file] = snapshots(warmed.parent)
    damage(file)
    scans = Scans(monkeypatch)
    with caplog.at_level(logging.INFO, logger="sdxlc.snapshot"):
        assert plan(warmed) == expected
    assert scans.count == 1 and "not usable" in caplog.text
    plan(warmed)  # the snapshot, rewritten whole, is used again
    assert scans.count == 1
    assert expected == cold(warmed)


def test_a_manifest_store_entry_that_changed_is_not_reused(
    warmed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = plan(warmed)
    [stored] = (warmed.parent / resolve_data.CACHE_DIR / "manifests").glob("manifest-*.json")
    stored.write_text(stored.read_text(encoding="utf-8").replace("caption 1", "caption X"), encoding="utf-8")
    made = []
    manifest = resolve_data.manifest
    monkeypatch.setattr(resolve_data, "manifest", lambda *a: made.append(1) or manifest(*a))
    assert plan(warmed) == expected
    assert made == [1]
