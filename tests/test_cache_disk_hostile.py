"""`to disk` caches under a hostile user: entries swapped or moved between keys, a cache folder that cannot be
searched, a full disk while an entry is encoded again. Each ends in a correct recovery or a RunError (exit 3)
naming the entry, never in a wrong latent or an internal error."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cache_disk_batches import _batch, _conditioning, _plan, _same_bucket

from runtime import RunError


def test_entries_swapped_between_keys_are_noticed_and_encoded_again(make_plan: Any, tmp_path: Path) -> None:
    conditioning, data, _, said = _conditioning(_plan(make_plan, tmp_path / "d", True, tmp_path / "c"))
    batch, expected = _batch(conditioning, data)
    disk = conditioning.disk
    first, second = (disk.path("latents", conditioning.latent_keys[key][0]) for key in batch.keys)
    assert first != second and not torch.equal(disk.load("latents", first.stem)["parameters"],
                                               disk.load("latents", second.stem)["parameters"])
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())  # same shapes, another image's latent
    second.write_bytes(first_bytes)
    caption = batch.captions[0]
    text = disk.path("text", conditioning.text_keys[caption])
    other = next(disk.path("text", key) for c, key in conditioning.text_keys.items() if c != caption)
    text.write_bytes(other.read_bytes())  # another caption's outputs
    _, again = _batch(conditioning, data)
    for got, want in zip(again, expected, strict=True):
        assert torch.equal(got, want)
    for file in (first, second, text):
        assert any(str(file) in line and "moved or copied here" in line for line in said), said
        assert disk.load(file.parent.parent.name, file.stem) is not None  # stored again under its own key


def test_a_cache_folder_that_cannot_be_searched_stops_the_run_naming_it(
        make_plan: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conditioning, data, _, _ = _conditioning(_plan(make_plan, tmp_path / "d", True, tmp_path / "c"))
    batch = conditioning.batch(_same_bucket(data), _rng())
    root = conditioning.disk.root
    stat = Path.stat

    def denied(self: Path, **kwargs: Any) -> Any:  # `chmod 000` on the cache folder (root ignores modes)
        if self.is_relative_to(root / "latents"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", denied)
    with pytest.raises(RunError, match=r"could not write .*latents.*Permission denied"):
        conditioning.encode(batch)


def test_a_full_disk_while_an_entry_is_encoded_again_stops_the_run_cleanly(
        make_plan: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.cache import store

    conditioning, data, _, _ = _conditioning(_plan(make_plan, tmp_path / "d", True, tmp_path / "c"))
    batch = conditioning.batch(_same_bucket(data), _rng())
    entry = conditioning.disk.path("latents", conditioning.latent_keys[batch.keys[0]][0])
    entry.write_bytes(entry.read_bytes()[:40])  # damaged: encoded again

    def full(path: Any, tensors: Any, metadata: Any = None) -> None:
        Path(path).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "write_safetensors", full)
    with pytest.raises(RunError, match=r"latents of .* is damaged or gone, and storing it again failed: "
                                       r"could not write .*No space left on device.* before are intact"):
        conditioning.encode(batch)
    assert not list(conditioning.disk.root.rglob("*.tmp"))  # no half entry left behind
    assert len(entry.read_bytes()) == 40  # the damaged entry is untouched (encoded again next time)


def test_a_nan_entry_between_epochs_is_encoded_again(make_plan: Any, tmp_path: Path) -> None:
    conditioning, data, _, said = _conditioning(_plan(make_plan, tmp_path / "d", True, tmp_path / "c"))
    batch, expected = _batch(conditioning, data)
    disk, key = conditioning.disk, conditioning.latent_keys[batch.keys[0]][0]
    tensors = disk.load("latents", key)
    disk.store("latents", key, {"parameters": torch.full_like(tensors["parameters"], float("nan"))})
    _, again = _batch(conditioning, data)
    for got, want in zip(again, expected, strict=True):
        assert torch.equal(got, want)
    assert any("NaN" in line and "encoded again" in line for line in said)


def _rng() -> Any:
    import random

    return random.Random(0)
