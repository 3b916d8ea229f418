"""The image index: answers kept by (inode, size, mtime), files read again only when they change, a
damaged index rebuilt and never trusted, concurrent writers, and the manifest text it feeds."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sdxlc.pipeline import compile_recipe
from sdxlc.plan import buckets as bk
from sdxlc.plan.manifest import Manifest, ManifestImage
from sdxlc.resolve import data as resolve_data
from sdxlc.resolve import index as index_module
from sdxlc.resolve.datasets import ScanResult, scan_dataset
from sdxlc.resolve.index import INDEX_FILE, Index, probe_image

RECIPE = """sdx 1
model tiny
profile cpu
data "d"
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
batch 2
steps 2
output "out"
"""


def dataset(root: Path, count: int = 6) -> Path:
    """`count` small images (PNG and JPEG) in two kohya folders, each but the last with a caption."""
    for n in range(count):
        folder = root / ("2_sks" if n % 2 else "plain")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48 + 8 * n), (n, 0, 0)).save(folder / f"{n}.{'png' if n % 2 else 'jpg'}")
        if n < count - 1:
            (folder / f"{n}.txt").write_text(f"caption {n}", encoding="utf-8")
    return root


class Reads:
    """Counts the header and caption reads the index lets through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images: list[str] = []
        self.captions: list[str] = []
        probe, caption = index_module.probe_image, index_module.read_caption
        monkeypatch.setattr(index_module, "probe_image", lambda p: (self.images.append(str(p)), probe(p))[1])
        monkeypatch.setattr(index_module, "read_caption",
                            lambda p: (self.captions.append(str(p)), caption(p))[1])


def scan(root: Path, cache: Path) -> tuple[ScanResult, Index]:
    index = Index.in_dir(cache)
    result = scan_dataset(root, index=index)
    index.save()
    return result, index


def test_unchanged_files_are_answered_without_reading_a_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = dataset(tmp_path / "d"), tmp_path / "cache"
    reads = Reads(monkeypatch)
    first, index = scan(root, cache)
    assert (len(reads.images), len(reads.captions), index.misses) == (6, 5, 6)
    assert (cache / INDEX_FILE).is_file()
    reads.images.clear(), reads.captions.clear()
    again, index = scan(root, cache)
    assert (reads.images, reads.captions, index.hits, index.misses) == ([], [], 6, 0)
    assert again.items == first.items and again.items[0].sha256 and again.missing_captions == 0


def test_a_changed_image_or_caption_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = dataset(tmp_path / "d"), tmp_path / "cache"
    first, _ = scan(root, cache)
    reads = Reads(monkeypatch)
    grown = root / "2_sks" / "1.png"
    Image.new("RGB", (96, 64)).save(grown)  # new size and bytes
    caption = root / "plain" / "0.txt"
    stamp = caption.stat()
    caption.write_text("caption X", encoding="utf-8")  # same length…
    os.utime(caption, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))  # …a new mtime
    copy = root / "plain" / "2.jpg"  # same bytes, size and mtime, but a new file (inode)
    stamp = copy.stat()
    shutil.copyfile(copy, tmp_path / "copy.jpg")
    os.replace(tmp_path / "copy.jpg", copy)
    os.utime(copy, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    again, index = scan(root, cache)
    assert sorted(Path(p).name for p in reads.images) == ["1.png", "2.jpg"] and index.misses == 2
    assert [Path(p).name for p in reads.captions] == ["0.txt"]
    found = {Path(item.path).name: item for item in again.items}
    assert (found["1.png"].width, found["1.png"].height) == (96, 64)
    assert found["1.png"].sha256 != {Path(i.path).name: i for i in first.items}["1.png"].sha256
    assert found["0.jpg"].caption == "caption X"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "old version", "empty", "json"])
def test_a_damaged_index_is_rebuilt_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    root, cache = dataset(tmp_path / "d"), tmp_path / "cache"
    first, _ = scan(root, cache)
    file = cache / INDEX_FILE
    raw = file.read_bytes()
    damaged = {
        "truncated": raw[: len(raw) // 2],
        "garbage": os.urandom(len(raw)),
        "flipped": raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:],  # one bit of a stored digest
        "old version": raw[:8] + (2).to_bytes(4, "little") + raw[12:],
        "empty": b"",
        "json": json.dumps({"version": 2, "entries": {}}).encode(),
    }[damage]
    file.write_bytes(damaged)
    reads = Reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sdxlc.index"):
        again, index = scan(root, cache)
    assert "is not usable" in caplog.text and "rebuilt" in caplog.text
    assert len(reads.images) == 6 and again.items == first.items  # nothing taken from the damaged file
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdxlc.index"):
        _, index = scan(root, cache)
    assert (index.hits, index.misses, caplog.text) == (6, 0, "")  # the rebuilt file is good


def test_a_damaged_index_never_stops_a_plan(tmp_path: Path) -> None:
    dataset(tmp_path / "d")
    (tmp_path / "r.sdx").write_text(RECIPE, encoding="utf-8")
    first = compile_recipe(tmp_path / "r.sdx")
    assert first.plan is not None
    (tmp_path / ".sdxlc-cache" / INDEX_FILE).write_bytes(b"SDXLCIDX" + b"\xff" * 200)
    again = compile_recipe(tmp_path / "r.sdx")
    assert again.plan is not None and again.plan["plan_hash"] == first.plan["plan_hash"]


def test_a_changed_caption_changes_the_plan(tmp_path: Path) -> None:
    dataset(tmp_path / "d")
    (tmp_path / "r.sdx").write_text(RECIPE, encoding="utf-8")
    first = compile_recipe(tmp_path / "r.sdx")
    caption = tmp_path / "d" / "2_sks" / "1.txt"
    stamp = caption.stat()
    caption.write_text("caption 9", encoding="utf-8")  # same size
    os.utime(caption, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    again = compile_recipe(tmp_path / "r.sdx")
    assert first.plan is not None and again.plan is not None and first.manifest and again.manifest
    assert again.plan["plan_hash"] != first.plan["plan_hash"]
    assert "caption 9" in {image.caption for image in again.manifest.images}


def _scan_and_save(args: tuple[str, str]) -> int:
    root, cache = args
    for _ in range(4):
        index = Index.in_dir(cache)
        scan_dataset(Path(root), index=index)
        index.dirty = True  # write every time: the writers race
        index.save()
    return 0


def test_two_processes_writing_the_index_leave_a_whole_file(tmp_path: Path) -> None:
    root, cache = dataset(tmp_path / "d", 12), tmp_path / "cache"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_scan_and_save, [(str(root), str(cache))] * 2) == [0, 0]
    _, index = scan(root, cache)
    assert (index.hits, index.misses) == (12, 0)
    assert [p.name for p in cache.iterdir()] == [INDEX_FILE]  # no temporary file left behind


def test_a_png_with_an_exif_orientation_is_turned(tmp_path: Path) -> None:
    picture = Image.new("RGB", (40, 20))
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(tmp_path / "turned.png", exif=exif)
    picture.save(tmp_path / "plain.png")
    assert probe_image(tmp_path / "turned.png")[:3] == (20, 40, None)
    assert probe_image(tmp_path / "plain.png")[:3] == (40, 20, None)


def test_the_manifest_text_is_the_canonical_json() -> None:
    crop = bk.cover_crop(300, 200, (96, 64))
    images = tuple(
        ManifestImage(path, "ab" * 32, 123, 300, 200, 1, caption, "default", 3, (96, 64), crop)
        for path, caption in [("/d/é \"q\".png", "tab\there, line\nbreak, \\ back, \x01 ctl, ☃"),
                              ("/d/b.png", "")]
    )
    manifest = Manifest(images)
    body = {"version": 1, "images": [image.to_json() for image in images]}
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    assert manifest.text() == expected


def test_the_bucket_report_reads_the_resolved_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset(tmp_path / "d")
    (tmp_path / "r.sdx").write_text(RECIPE, encoding="utf-8")
    compiled = compile_recipe(tmp_path / "r.sdx")
    assert compiled.plan is not None
    with monkeypatch.context() as patched:
        patched.setattr(resolve_data, "scan_dataset", None)  # no second scan
        from_memory = resolve_data.bucket_details(compiled.plan)
    resolve_data._RESOLVED.clear()
    scanned = resolve_data.bucket_details(compiled.plan)
    assert scanned == from_memory and from_memory[0]["images"] == 6


def test_an_index_with_a_good_checksum_but_rows_sdxlc_never_writes_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, cache = dataset(tmp_path / "d"), tmp_path / "cache"
    cache.mkdir()
    body = b"[" * 100_000 + b"]" * 100_000  # nested too deeply to parse
    header = index_module._HEADER.pack(b"SDXLCIDX", index_module.INDEX_VERSION, index_module._ORDER, 0,
                                       len(body), hashlib.sha256(body).digest())
    (cache / INDEX_FILE).write_bytes(header + body)
    with caplog.at_level(logging.WARNING, logger="sdxlc.index"):
        again, index = scan(root, cache)
    assert "is not usable" in caplog.text and index.misses == 6 and len(again.items) == 6
