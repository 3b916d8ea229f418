"""The DataLoader: worker processes make the same batches in the same order as the training process,
from any position, and a worker's failure stops the run as cleanly as the training process's own."""

from __future__ import annotations

import shutil
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from runtime import InputChanged
from runtime.train.data import Batch, TrainData, setup_data
from runtime.train.loader import Loader, batches
from sdxlc.cli.main import main

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "data" / "quickstart"
AUGMENTED = {"flip": True, "random_crop": True, "color_jitter": 0.2, "caption_dropout": 0.3, "shuffle": True}


def _compiled(tmp_path: Path, extra: str) -> dict[str, Any]:
    from sdxlc.pipeline import compile_recipe

    recipe = tmp_path / "r.sdx"
    recipe.write_text(f'sdx 1\ndata "{QUICKSTART}"\nsteps 2\n{extra}\n', encoding="utf-8")
    compiled = compile_recipe(recipe, ())
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    plan: dict[str, Any] = compiled.plan
    return plan


@pytest.mark.parametrize(("extra", "loader", "source"), [
    ("profile cpu\nno cache latents", {"workers": 0, "prefetch": 2, "pin_memory": False}, "default"),
    ("profile a100-40gb\nno cache latents", {"workers": 4, "prefetch": 2, "pin_memory": True}, "profile"),
    ("profile a100-40gb", {"workers": 0, "prefetch": 2, "pin_memory": True}, "derived"),  # latents by default
    ("profile a100-40gb\ncache latents", {"workers": 0, "prefetch": 2, "pin_memory": True}, "derived"),
    ("profile a100-40gb\nloader workers 8 prefetch 4 no pin memory",
     {"workers": 8, "prefetch": 4, "pin_memory": False}, "recipe"),
    ("profile cpu\nworkers 2", {"workers": 2, "prefetch": 2, "pin_memory": False}, "recipe"),
])
def test_the_loader_settings_are_resolved_into_the_plan(tmp_path: Path, extra: str, loader: dict[str, Any],
                                                        source: str) -> None:
    plan = _compiled(tmp_path, extra)
    assert plan["data"]["loader"] == loader
    assert plan["provenance"]["data.loader.workers"]["source"] == source


def test_the_worker_count_is_a_cosmetic_difference(tmp_path: Path) -> None:
    from sdxlc.plan.diff import kind_of

    assert kind_of("data.loader.workers") == kind_of("data.loader.pin_memory") == "cosmetic"


def _data(make_plan: Any, out: Path, folder: Path = QUICKSTART) -> TrainData:
    plan = make_plan(out, training__batch_size=2, data__datasets__0__path=str(folder),
                     data__datasets__0__repeat=2,
                     **{f"data__datasets__0__{key}": value for key, value in AUGMENTED.items()})
    return setup_data(plan)


def _take(data: TrainData, workers: int, count: int, epoch: int = 0,
          start: int = 0) -> list[tuple[Any, Batch]]:
    with batches(data, Loader(workers, 2, False), True, epoch, start) as stream:
        return list(islice(stream, count))


def _same(left: list[tuple[Any, Batch]], right: list[tuple[Any, Batch]]) -> None:
    assert len(left) == len(right)
    for (ticket_a, a), (ticket_b, b) in zip(left, right, strict=True):
        assert ticket_a == ticket_b
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.time_ids, b.time_ids)
        assert (a.captions, a.keys, a.weights) == (b.captions, b.keys, b.weights)


def test_workers_make_the_batches_the_training_process_makes(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = _data(make_plan, tmp_path)
    per_epoch = len(data.epoch(0))
    alone = _take(data, 0, per_epoch + 3)  # into the second epoch
    _same(alone, _take(data, 2, per_epoch + 3))
    places = [(ticket.epoch, ticket.index) for ticket, _ in alone]
    assert places[per_epoch - 1 : per_epoch + 1] == [(0, per_epoch - 1), (1, 0)]
    flips = {flip for _, batch in alone for _, flip in batch.keys}
    assert flips == {False, True}  # the augmentation is on, and the same in both


def test_a_resumed_position_reads_the_same_batches(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = _data(make_plan, tmp_path)
    per_epoch = len(data.epoch(0))
    whole = _take(data, 0, per_epoch + 4)
    _same(whole[per_epoch + 1 :], _take(data, 2, 3, epoch=1, start=1))
    _same(whole[3:6], _take(data, 1, 3, epoch=0, start=3))


def test_an_undecodable_image_is_replaced_alike_with_workers(make_plan, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Bytes as planned that do not decode (the workers are forked with the patched reader)."""
    from runtime.train import data as datamod

    real = datamod.read_checked
    monkeypatch.setattr(datamod, "read_checked",
                        lambda item: b"not an image" if item.path.endswith("03.png") else real(item))
    alone_data, workers_data = _data(make_plan, tmp_path / "a"), _data(make_plan, tmp_path / "b")
    alone = _take(alone_data, 0, len(alone_data.epoch(0)))
    _same(alone, _take(workers_data, 2, len(workers_data.epoch(0))))
    assert len(alone_data.bad) == len(workers_data.bad) == 1
    for data in (alone_data, workers_data):  # warned once, though each worker found it
        assert len([w for w in data.warnings if "03.png" in w]) == 1
    assert all(data.images[image].path.endswith("03.png") for data in (alone_data, workers_data)
               for image in data.bad)


def test_a_changed_image_in_a_worker_raises_input_changed(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "data"
    shutil.copytree(QUICKSTART, folder)
    data = _data(make_plan, tmp_path, folder)
    changed = folder / "00.png"
    raw = bytearray(changed.read_bytes())
    raw[-20] ^= 0xFF  # the same size: only the sha256 check on reading sees it
    changed.write_bytes(bytes(raw))
    with pytest.raises(InputChanged, match="00.png: its bytes changed") as caught:
        _take(data, 2, len(data.epoch(0)))
    assert caught.value.changes == [f"{changed}: its bytes changed since it was planned"]


def test_a_run_whose_worker_reads_a_changed_image_exits_3(tmp_path: Path) -> None:
    shutil.copytree(QUICKSTART, tmp_path / "data")
    (tmp_path / "r.sdx").write_text(
        'sdx 1\nprofile cpu\ndata "data" caption .txt\nresolution 64 buckets 64..128 step 32\n'
        "lora rank 4 on unet\nbatch 2\nsteps 2\nlog every 1 no tensorboard\nloader workers 2\n"
        'output "out"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "r.sdx"), "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    for name in sorted(p.name for p in (tmp_path / "data").glob("*.png")):
        image = tmp_path / "data" / name
        raw = bytearray(image.read_bytes())
        raw[-20] ^= 0xFF
        image.write_bytes(bytes(raw))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "p.json")])
    assert result.exit_code == 3, result.output
    assert "its bytes changed" in result.output and "Traceback" not in result.output


def test_a_run_resumed_with_workers_ends_with_the_weights_of_one_without(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    from runtime.train import checkpoint
    from runtime.train.run import execute

    def plan(out: Path, workers: int) -> dict[str, Any]:
        return make_plan(out, training__total_steps=4, training__batch_size=2, sample__prompts=[],
                         save={"every_steps": 2, "keep": 3, "dtype": "fp32"},
                         data__loader={"workers": workers, "prefetch": 2, "pin_memory": False},
                         **{f"data__datasets__0__{key}": value for key, value in AUGMENTED.items()})

    execute(plan(tmp_path / "whole", 0), progress=False)
    saved = tmp_path / "whole" / "checkpoints" / "step-000002"
    shutil.copytree(saved, tmp_path / "resumed" / "checkpoints" / saved.name)
    resume = checkpoint.find(tmp_path / "resumed", "latest")
    execute(plan(tmp_path / "resumed", 2), progress=False, resume=resume)
    whole = load_file(str(tmp_path / "whole" / "tinylora.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "tinylora.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_a_worker_killed_for_memory_is_a_run_error(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from runtime import RunError
    from runtime.train.loader import _received

    def dying() -> Any:
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed.")
        yield

    with pytest.raises(RunError, match=r"worker stopped: .*pid 4242.*fewer workers"):
        next(_received(_data(make_plan, tmp_path), dying()))
