"""Experiment trackers through accelerate: the recipe words, the package check before anything is
written, and a real wandb run in offline mode whose files hold the losses the run trained with."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runtime.train import checkpoint
from sdxlc.cli.main import main

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "data" / "quickstart"


def _recipe(folder: Path, log: str) -> Path:
    shutil.copytree(QUICKSTART, folder / "data")
    recipe = folder / "r.sdx"
    recipe.write_text(
        'sdx 1\nprofile cpu\ndata "data" caption .txt\nresolution 64 buckets 64..128 step 32\n'
        f'lora rank 4 on unet\nbatch 2\nsteps 3\nlog every 1 no tensorboard {log}\noutput "out"\n',
        encoding="utf-8")
    return recipe


def _plan(recipe: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["plan", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    plan: dict[str, Any] = json.loads(result.output)
    return plan


def test_log_words_name_the_trackers_with_their_projects_and_packages(tmp_path: Path) -> None:
    plan = _plan(_recipe(tmp_path, 'wandb "styles" mlflow "styles-ml" comet_ml "c"'))
    assert plan["log"]["trackers"] == [
        {"name": "wandb", "project": "styles", "package": "wandb", "module": "wandb"},
        {"name": "mlflow", "project": "styles-ml", "package": "mlflow", "module": "mlflow"},
        {"name": "comet_ml", "project": "c", "package": "comet-ml", "module": "comet_ml"},
    ]
    assert plan["provenance"]["log.trackers"]["source"] == "recipe"
    assert _plan(_recipe(tmp_path / "none", ""))["log"]["trackers"] == []


def test_a_missing_tracker_package_fails_before_anything_is_written(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("aim") is not None:
        pytest.skip("aim is installed here")
    result = CliRunner().invoke(main, ["run", str(_recipe(tmp_path, 'aim "p"'))])
    assert result.exit_code == 3, result.output
    assert "`pip install aim`" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The history rows of an offline wandb run file: a LevelDB-style log of 32 KiB blocks, each record
    a 7-byte header (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last) and a protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    block, position, pieces, records = 32768, 7, b"", []
    while position + 7 <= len(raw):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):
            position += left
            continue
        chunk = raw[position + 7 : position + 7 + length]
        position += 7 + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            records.append(pieces)
    rows = []
    for data in records:
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_files_hold_the_losses_of_the_run(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-elsewhere"))  # the plan's folder wins
    result = CliRunner().invoke(main, ["run", str(_recipe(tmp_path, 'wandb "sdxlc-test"'))])
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "out" / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    rows = [row for row in wandb_history(runs[0]) if "loss/step" in row]
    losses = checkpoint.load_state(tmp_path / "out" / "checkpoints" / "step-000003").position.losses
    assert [row["_step"] for row in rows] == [1, 2, 3]
    assert [row["loss/step"] for row in rows] == pytest.approx(losses, rel=1e-6)
    assert all({"loss/average", "lr/unet", "grad_norm"} <= set(row) for row in rows)
