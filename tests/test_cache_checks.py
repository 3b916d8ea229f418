"""Disk caches that hit across processes and are checked on every read; `sdxlc cache --verify/--prune`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from test_data_cache import counts, dataset

from sdxlc.cli.data import cache_command


def _entries(tmp_path: Path, kind: str) -> list[Path]:
    return sorted((tmp_path / ".sdxlc-cache" / kind).rglob("*.safetensors"))


def test_the_latent_cache_hits_in_a_second_process(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    first = CliRunner().invoke(cache_command, [str(recipe)])  # in this process, then in a fresh one
    assert first.exit_code == 0, first.output
    # another hash seed: dict and set orders differ between the processes
    seed = "3" if os.environ.get("PYTHONHASHSEED") == "2" else "2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": seed}
    second = subprocess.run([sys.executable, "-m", "sdxlc.cli", "cache", str(recipe)], text=True,
                            capture_output=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert counts(first.output) == {"latent cache": (6, 0), "text-encoder cache": (6, 0)}
    assert counts(second.stdout) == {"latent cache": (0, 6), "text-encoder cache": (0, 6)}
    assert len(_entries(tmp_path, "latents")) == 6


def test_damaged_and_nan_entries_are_encoded_again_with_a_warning(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cache_command, [str(recipe)]).exit_code == 0
    truncated, poisoned, renamed = _entries(tmp_path, "latents")[:3]
    truncated.write_bytes(truncated.read_bytes()[:50])
    tensors = load_file(poisoned)
    save_file({"parameters": torch.full_like(tensors["parameters"], float("nan"))}, poisoned)
    save_file({"other": tensors["parameters"]}, renamed)
    result = runner.invoke(cache_command, [str(recipe)])
    assert result.exit_code == 0, result.output
    assert counts(result.output)["latent cache"] == (3, 3)
    assert f"{truncated} is damaged (unreadable" in result.output
    assert f"{poisoned} is damaged (`parameters` holds NaN" in result.output
    assert f"{renamed} is damaged (holds ['other']" in result.output
    assert torch.isfinite(load_file(poisoned)["parameters"]).all()  # encoded again, stored over it


def test_verify_removes_damaged_entries_and_prune_keeps_only_what_recipes_use(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cache_command, [str(recipe)]).exit_code == 0
    first = _entries(tmp_path, "text")[0]
    first.write_bytes(b"\0" * 20)
    # what a kill during a write leaves (sdxlc/plan/files.py's temporary name), and one being written now
    left = first.parent / f".{first.name}.0badf00d.tmp"
    left.write_bytes(b"half an entry")
    os.utime(left, (left.stat().st_atime, left.stat().st_mtime - 3600))
    writing = first.parent / f".{first.name}.feedf00d.tmp"
    writing.write_bytes(b"an entry being written")
    result = runner.invoke(cache_command, [str(recipe), "--verify"])
    assert result.exit_code == 0 and "verified 12 entries: 1 damaged" in result.output, result.output
    assert "removed 1 temporary files that interrupted writes left" in result.output
    assert not first.exists() and not left.exists() and writing.exists()
    stray = first.parent / ("f" * 64 + ".safetensors")
    save_file({"states": torch.ones(2, 2), "pooled": torch.ones(2)}, stray)
    result = runner.invoke(cache_command, [str(recipe), "--prune"])
    assert result.exit_code == 0 and "pruned: 1 entries" in result.output and "11 kept" in result.output
    assert not stray.exists()


def test_an_entry_of_the_wrong_shape_is_encoded_again(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cache_command, [str(recipe)]).exit_code == 0
    latent, text = _entries(tmp_path, "latents")[0], _entries(tmp_path, "text")[0]
    save_file({"parameters": torch.zeros(3, 3, 3)}, latent)
    save_file({"states": torch.zeros(5, 7), "pooled": torch.zeros(3)}, text)
    result = runner.invoke(cache_command, [str(recipe)])
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"latent cache": (1, 5), "text-encoder cache": (1, 5)}
    assert f"{latent} is damaged (`parameters` is torch.float32 of shape (3, 3, 3), expected" in result.output
    assert f"{text} is damaged (`pooled` is torch.float32 of shape (3,), expected" in result.output


def test_prune_refuses_a_recipe_without_a_disk_cache(tmp_path: Path) -> None:
    recipe = dataset(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cache_command, [str(recipe)]).exit_code == 0
    plain = tmp_path / "plain.sdx"
    plain.write_text(recipe.read_text(encoding="utf-8").replace(" to disk", ""), encoding="utf-8")
    result = runner.invoke(cache_command, [str(plain), "--prune"])
    assert result.exit_code == 1 and "keeps no cache on disk" in result.output
    assert len(_entries(tmp_path, "latents")) == 6


def _aged(path: Path, seconds: float = 3600) -> Path:
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime - seconds), follow_symlinks=False)
    return path


def test_only_the_temporary_files_of_entry_writes_are_stale(tmp_path: Path) -> None:
    """`.<key>.safetensors.<8 hex>.tmp` in its key's folder, as sdxlc/plan/files.py names them: never
    another file that ends in `.tmp`, a link, a folder, or a file reached through a linked folder."""
    from runtime.cache import store

    root, key = tmp_path / "cache", "ab" + "0" * 62
    shard = root / "latents" / "ab"
    shard.mkdir(parents=True)
    left = shard / f".{key}.safetensors.0badf00d.tmp"
    left.write_bytes(b"half an entry")
    _aged(left)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ".notes.tmp"
    victim.write_text("someone's file", encoding="utf-8")
    _aged(victim)
    (root / "latents" / "zz").symlink_to(outside)  # a folder linked into the cache
    mine = shard / ".notes.tmp"
    mine.write_text("not a cache write", encoding="utf-8")
    _aged(mine)
    folder = shard / f".{key}.safetensors.12345678.tmp"
    folder.mkdir()
    _aged(folder)
    link = shard / f".{key}.safetensors.87654321.tmp"
    link.symlink_to(victim)
    _aged(link)
    assert store.stale_temps(root) == [left]
    assert store.remove_stale_temps(root) == (1, [])
    assert victim.exists() and mine.exists() and folder.is_dir() and link.is_symlink() and not left.exists()


def test_a_temporary_file_that_cannot_be_removed_is_reported_and_the_check_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache folder this user cannot write (a shared cache): `--verify` still checks the entries."""
    recipe = dataset(tmp_path)
    key = "cd" + "1" * 62
    shard = tmp_path / ".sdxlc-cache" / "text" / "cd"
    shard.mkdir(parents=True)
    left = shard / f".{key}.safetensors.0badf00d.tmp"
    left.write_bytes(b"half an entry")
    _aged(left)
    unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    result = CliRunner().invoke(cache_command, [str(recipe), "--verify"])
    assert result.exit_code == 0, result.output
    assert f"{left} could not be removed: Permission denied" in result.output
    assert "verified 0 entries: 0 damaged" in result.output and left.exists()
