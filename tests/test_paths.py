"""Dangerous folders are refused before anything is scanned: `data` or `output` at a filesystem root or
in /proc, /sys or /dev, an output folder inside (or equal to, or holding) a data folder, links that loop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sdxlc.pipeline import Compiled, compile_recipe

ROOT = Path(__file__).resolve().parent.parent


def _compile(tmp_path: Path, text: str) -> Compiled:
    (tmp_path / "data").mkdir(exist_ok=True)
    if not (tmp_path / "data" / "quickstart").exists():
        (tmp_path / "data" / "quickstart").symlink_to(ROOT / "recipes" / "data" / "quickstart")
    recipe = tmp_path / "r.sdx"
    recipe.write_text("model tiny\n" + text, encoding="utf-8")
    return compile_recipe(recipe)


def _codes(compiled: Compiled) -> list[tuple[str, int | None]]:
    return [(d.code, d.span.line if d.span else None) for d in compiled.errors]


@pytest.mark.parametrize("folder", ["/", "//", "/tmp/..", "/proc", "/proc/self", "/sys/kernel", "/dev",
                                    "/dev/shm"])
def test_a_data_folder_at_a_root_or_in_a_system_folder_is_never_scanned(tmp_path: Path, folder: str) -> None:
    start = time.perf_counter()
    compiled = _compile(tmp_path, f'data "{folder}"\n')
    assert time.perf_counter() - start < 2
    assert _codes(compiled) == [("SDX0508", 2)]
    assert compiled.errors[0].help is not None


@pytest.mark.parametrize("folder", ["/", "/proc/x", "/dev/null", "/sys"])
def test_an_output_folder_at_a_root_or_in_a_system_folder_is_an_error(tmp_path: Path, folder: str) -> None:
    compiled = _compile(tmp_path, f'data "data/quickstart"\noutput "{folder}"\n')
    assert _codes(compiled) == [("SDX0508", 3)]


def _images(folder: Path) -> Path:
    """A real folder of two training images (links are followed: the data is where they end)."""
    folder.mkdir(parents=True)
    for name in ("00.png", "00.txt", "01.png", "01.txt"):
        (folder / name).write_bytes((ROOT / "recipes" / "data" / "quickstart" / name).read_bytes())
    return folder


@pytest.mark.parametrize("output", ["imgs/set", "imgs/set/out", "./imgs//set/", "imgs", ".", "link"])
def test_an_output_folder_inside_or_around_the_data_is_an_error(tmp_path: Path, output: str) -> None:
    _images(tmp_path / "imgs" / "set")
    (tmp_path / "link").symlink_to(tmp_path / "imgs" / "set")
    compiled = _compile(tmp_path, f'data "imgs/set"\noutput "{output}"\n')
    (diag,) = compiled.errors
    assert (diag.code, diag.span.line if diag.span else None) == ("SDX0509", 3)
    assert diag.related and diag.related[0][0].line == 2


def test_the_default_output_folder_inside_the_data_is_an_error_at_the_data_line(tmp_path: Path) -> None:
    _images(tmp_path / "imgs")
    compiled = _compile(tmp_path, 'data "."\n')
    assert _codes(compiled) == [("SDX0509", 2)]


def test_an_output_folder_beside_the_data_is_fine(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, 'data "data/quickstart"\noutput "out/x"\n')
    assert compiled.errors == [] and compiled.plan is not None


def test_a_manifest_beside_the_output_is_fine(tmp_path: Path) -> None:
    rows = "".join(f'{{"path": "data/quickstart/0{i}.png", "caption": "a"}}\n' for i in range(4))
    (tmp_path / "list.jsonl").write_text(rows)
    compiled = _compile(tmp_path, 'data "list.jsonl"\noutput "."\n')
    assert [d.code for d in compiled.errors] == []


@pytest.mark.parametrize("line", ['data "loop"', 'output "loop/x"', 'lora from "loop"', 'vae "loop"'])
def test_a_path_whose_links_loop_is_an_error(tmp_path: Path, line: str) -> None:
    (tmp_path / "loop").symlink_to("loop")
    body = line + "\n" if line.startswith("data") else f'data "data/quickstart"\n{line}\n'
    compiled = _compile(tmp_path, body)
    assert [d.code for d in compiled.errors] == ["SDX0516"]
    assert compiled.errors[0].span is not None
