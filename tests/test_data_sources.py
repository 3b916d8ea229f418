"""Data sources at compile time: folders, kohya repeat folders, manifests, bad inputs, the index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from sdxlc.pipeline import Compiled, compile_recipe
from sdxlc.plan import buckets as bk
from sdxlc.resolve.datasets import scan_dataset
from sdxlc.resolve.index import Index, probe_image

RECIPE = """sdx 1
model tiny
profile cpu
{data}
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
batch 2
steps 2
output "out"
"""


def image(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path, format=fmt)
    return path


def compile_text(tmp_path: Path, data: str) -> Compiled:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(RECIPE.format(data=data), encoding="utf-8")
    return compile_recipe(recipe)


def test_bucket_assignment_and_crop_on_known_sizes() -> None:
    buckets = bk.make_buckets(64, 64, 128, 32)
    assert (64, 64) in buckets and all(w * h <= 64 * 64 for w, h in buckets)
    table = [(128, 32), (96, 64), (64, 64), (64, 96), (32, 128)]
    assert bk.assign(300, 200, table) == (96, 64)
    assert bk.assign(200, 300, table) == (64, 96)
    assert bk.assign(50, 50, table) == (64, 64)
    crop = bk.cover_crop(300, 200, (96, 64))
    assert (crop.scaled_w, crop.scaled_h, crop.top, crop.left) == (96, 64, 0, 0)
    crop = bk.cover_crop(200, 100, (64, 64))  # 2:1 into a square: scaled to 128x64, cut 32 px from the left
    assert (crop.scaled_w, crop.scaled_h, crop.top, crop.left) == (128, 64, 0, 32)


def test_formats_modes_and_exif_are_read(tmp_path: Path) -> None:
    image(tmp_path / "a.png", (40, 30), "LA")
    image(tmp_path / "b.png", (40, 30), "P")
    image(tmp_path / "c.tif", (40, 30), "CMYK")
    image(tmp_path / "d.png", (40, 30), "I;16")
    rotated = Image.new("RGB", (40, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "e.jpg", exif=exif)
    scan = scan_dataset(tmp_path)
    assert scan.problems == []
    sizes = {Path(i.path).name: (i.width, i.height) for i in scan.items}
    assert sizes == {"a.png": (40, 30), "b.png": (40, 30), "c.tif": (40, 30), "d.png": (40, 30),
                     "e.jpg": (30, 40)}


def test_each_bad_input_is_reported_with_its_path(tmp_path: Path) -> None:
    data = tmp_path / "d"
    image(data / "good.png", (64, 64))
    (data / "empty.png").write_bytes(b"")
    (data / "garbage.jpg").write_bytes(b"this is not an image at all")
    Image.effect_noise((64, 64), 50).convert("RGB").save(data / "trunc.png")
    whole = (data / "trunc.png").read_bytes()
    (data / "trunc.png").write_bytes(whole[: len(whole) // 2])
    Image.effect_noise((64, 64), 50).convert("RGB").save(data / "cut.jpg")
    jpeg = (data / "cut.jpg").read_bytes()
    (data / "cut.jpg").write_bytes(jpeg[: len(jpeg) - 40])
    (data / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    image(data / "badcap.png", (64, 64))
    (data / "badcap.txt").write_bytes(b"caf\xe9 latin-1")
    os.symlink(data, data / "loop")
    scan = scan_dataset(data)
    reasons = {Path(p.path).name: p.reason for p in scan.problems}
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["garbage.jpg"]
    assert "truncated" in reasons["trunc.png"] or "corrupt" in reasons["trunc.png"]
    assert "truncated JPEG" in reasons["cut.jpg"]
    assert "unsupported" in reasons["photo.heic"]
    assert "UTF-8" in reasons["badcap.png"]
    assert "symlink loop" in reasons["loop"]
    assert [Path(i.path).name for i in scan.items] == ["good.png"]


def test_decompression_bomb_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    probe = probe_image(image(tmp_path / "big.png", (40, 30)))
    assert probe.error is not None and "decompression bomb" in probe.error


def test_bad_images_are_skipped_with_a_warning_or_fail_the_recipe(tmp_path: Path) -> None:
    image(tmp_path / "d" / "a.png", (64, 64))
    image(tmp_path / "d" / "b.png", (96, 64))
    (tmp_path / "d" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    skipped = compile_text(tmp_path, 'data "d"')
    assert skipped.plan is not None and skipped.plan["data"]["images"] == 2
    assert any("broken.png" in w and "skipped 1 bad" in w for w in skipped.plan["warnings"])
    failed = compile_text(tmp_path, 'data "d" on bad image fail')
    assert failed.plan is None
    assert [d.code for d in failed.errors] == ["SDX0530"] and "broken.png" in failed.errors[0].message


def test_small_images_are_upscaled_with_a_warning(tmp_path: Path) -> None:
    image(tmp_path / "d" / "tiny.png", (20, 20))
    compiled = compile_text(tmp_path, 'data "d"')
    assert compiled.plan is not None
    assert any("upscaled" in w and "tiny.png" in w for w in compiled.plan["warnings"])


def test_kohya_folders_multiply_repeats(tmp_path: Path) -> None:
    image(tmp_path / "d" / "10_sks" / "a.png", (64, 64))
    image(tmp_path / "d" / "plain" / "b.png", (64, 64))
    compiled = compile_text(tmp_path, 'data "d" repeat 2')
    assert compiled.plan is not None
    dataset = compiled.plan["data"]["datasets"][0]
    assert dataset["images"] == 2 and dataset["samples"] == 2 * 10 + 2
    assert compiled.plan["data"]["samples_per_epoch"] == 22


def test_manifests_list_images_kept_elsewhere(tmp_path: Path) -> None:
    image(tmp_path / "elsewhere" / "a.png", (64, 64))
    image(tmp_path / "elsewhere" / "b.png", (96, 64))
    rows = [{"path": "elsewhere/a.png", "caption": "sks, red", "weight": 3}, {"path": "elsewhere/b.png"},
            {"path": "elsewhere/missing.png", "caption": "x"}]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "list.csv").write_text("path,caption\nelsewhere/a.png,\"sks, red\"\n", encoding="utf-8")
    scan = scan_dataset(tmp_path / "list.jsonl")
    assert [(Path(i.path).name, i.caption, i.repeat) for i in scan.items] == [("a.png", "sks, red", 3),
                                                                              ("b.png", "", 1)]
    assert "missing.png" in scan.problems[0].path
    assert [i.caption for i in scan_dataset(tmp_path / "list.csv").items] == ["sks, red"]
    compiled = compile_text(tmp_path, 'data "list.jsonl" default caption "sks"')
    assert compiled.plan is not None and compiled.plan["data"]["datasets"][0]["source"] == "manifest"
    assert compiled.plan["data"]["samples_per_epoch"] == 4


def test_the_index_is_reused_until_a_file_changes(tmp_path: Path) -> None:
    for n in range(5):
        image(tmp_path / "d" / f"{n}.png", (64, 32 + n))
    index = Index(tmp_path / "index.json")
    scan_dataset(tmp_path / "d", index=index)
    index.save()
    again = Index(tmp_path / "index.json")
    scan_dataset(tmp_path / "d", index=again)
    assert (again.hits, again.misses) == (5, 0)
    image(tmp_path / "d" / "2.png", (80, 32))
    os.utime(tmp_path / "d" / "2.png", ns=(1, 1))
    third = Index(tmp_path / "index.json")
    items = scan_dataset(tmp_path / "d", index=third).items
    assert (third.hits, third.misses) == (4, 1) and items[2].width == 80


def test_kohya_folders_caption_uncaptioned_images_with_their_class_tokens(tmp_path: Path) -> None:
    image(tmp_path / "d" / "10_sks dog" / "a.png", (64, 64))
    image(tmp_path / "d" / "10_sks dog" / "b.png", (64, 64))
    (tmp_path / "d" / "10_sks dog" / "b.txt").write_text("sks dog, on a sofa", encoding="utf-8")
    image(tmp_path / "d" / "plain" / "c.png", (64, 64))
    scan = scan_dataset(tmp_path / "d")
    found = {Path(i.path).name: (i.caption, i.caption_source) for i in scan.items}
    assert found["a.png"] == ("sks dog", "folder 10_sks dog")
    assert found["b.png"] == ("sks dog, on a sofa", str(tmp_path / "d" / "10_sks dog" / "b.txt"))
    assert found["c.png"] == ("", "default")
    assert scan.folder_captions == 1 and scan.missing_captions == 1
    compiled = compile_text(tmp_path, 'data "d"')
    assert compiled.plan is not None
    assert any("1 image(s) in d have no .txt caption and train with their kohya folder's class tokens" in w
               for w in compiled.plan["warnings"]), compiled.plan["warnings"]
