"""`to disk` caches keep only their keys in memory: each batch reads its entries from the disk cache when it
is trained on (checked on read), so a run's memory does not grow with the data set, and it trains exactly as
the same run with the caches held in memory. An entry damaged after the caching pass is encoded again."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime import RunError
from runtime.train import checkpoint
from runtime.train.run import execute


def _plan(make_plan: Any, out: Path, to_disk: bool, cache_dir: Path, **more: Any) -> dict[str, Any]:
    return make_plan(out, training__total_steps=4, sample={"prompts": []},
                     save={"every_steps": 4, "keep": 1},
                     data__cache={"text_encoder": True, "latents": True, "to_disk": to_disk,
                                  "dir": str(cache_dir)}, **more)


def _losses(plan: dict[str, Any]) -> list[float]:
    execute(plan, progress=False)
    out = Path(plan["output"]["dir"])
    return list(checkpoint.load_state(checkpoint.folder_for(out, 4)).position.losses)


def test_a_to_disk_run_trains_exactly_as_an_in_memory_cached_one(make_plan: Any, tmp_path: Path) -> None:
    memory = _losses(_plan(make_plan, tmp_path / "memory", False, tmp_path / "c1"))
    filled = _losses(_plan(make_plan, tmp_path / "filled", True, tmp_path / "c2"))  # encodes, then reads
    reused = _losses(_plan(make_plan, tmp_path / "reused", True, tmp_path / "c2"))  # reads what it stored
    assert len(memory) == 4
    assert filled == pytest.approx(memory, abs=1e-7, rel=0)
    assert reused == pytest.approx(memory, abs=1e-7, rel=0)


def _conditioning(plan: dict[str, Any]) -> Any:
    from runtime.model.load import setup_model
    from runtime.train.conditioning import Conditioning
    from runtime.train.data import all_captions, setup_data

    models, data = setup_model(plan), setup_data(plan)
    said: list[str] = []
    conditioning = Conditioning(models, data, plan["data"]["cache"], said.append)
    entries = len({s.image for s in data.samples}) + len(all_captions(data))
    return conditioning, data, entries, said


def test_to_disk_holds_no_entry_in_memory(make_plan: Any, tmp_path: Path) -> None:
    memory, _, entries, _ = _conditioning(_plan(make_plan, tmp_path / "m", False, tmp_path / "c"))
    disk, _, _, _ = _conditioning(_plan(make_plan, tmp_path / "d", True, tmp_path / "c"))
    assert entries > 4
    assert memory.held_tensors() == len(memory.latents) + 2 * len(memory.text) == entries + len(memory.text)
    assert disk.held_tensors() == 0 and not disk.latents and not disk.text
    assert set(disk.latent_keys) == set(memory.latents) and set(disk.text_keys) == set(memory.text)


def _same_bucket(data: Any) -> list[int]:
    """Two samples of one bucket (a batch)."""
    bucket = data.samples[0].bucket
    return [i for i, sample in enumerate(data.samples) if sample.bucket == bucket][:2]


def _batch(conditioning: Any, data: Any) -> tuple[Any, tuple[torch.Tensor, ...]]:
    batch = conditioning.batch(_same_bucket(data), random.Random(0))
    torch.manual_seed(0)
    return batch, conditioning.encode(batch)


def test_an_entry_damaged_after_the_caching_pass_is_encoded_again(make_plan: Any, tmp_path: Path) -> None:
    plan = _plan(make_plan, tmp_path / "d", True, tmp_path / "c")
    conditioning, data, _, said = _conditioning(plan)
    batch, expected = _batch(conditioning, data)
    disk_key = conditioning.latent_keys[batch.keys[0]][0]
    entry = conditioning.disk.path("latents", disk_key)
    entry.write_bytes(entry.read_bytes()[:40])  # truncated between the caching pass and the batch
    text = conditioning.disk.path("text", conditioning.text_keys[batch.captions[0]])
    text.unlink()  # gone
    _, again = _batch(conditioning, data)
    for got, want in zip(again, expected, strict=True):
        assert torch.equal(got, want)
    assert any(str(entry) in line and "damaged" in line and "encoded again" in line for line in said)
    assert any(str(text) in line and "gone" in line and "encoded again" in line for line in said)
    assert conditioning.disk.load("latents", disk_key) is not None  # stored again, intact


def test_a_gone_entry_without_its_encoder_names_the_entry(make_plan: Any, tmp_path: Path) -> None:
    plan = _plan(make_plan, tmp_path / "d", True, tmp_path / "c")
    conditioning, data, _, _ = _conditioning(plan)
    batch = conditioning.batch(_same_bucket(data), random.Random(0))
    conditioning.disk.path("latents", conditioning.latent_keys[batch.keys[0]][0]).unlink()
    conditioning.models.pipe.vae = None
    with pytest.raises(RunError, match=r"latents cache: the entry for the latents of .* is damaged or gone"):
        conditioning.encode(batch)


def test_the_rule_sizes_the_entries_the_runtime_holds(make_plan: Any, tmp_path: Path) -> None:
    from sdxlc.estimate.analytic import model_facts
    from sdxlc.plan.cache_memory import cache_bytes, held_bytes

    plan = _plan(make_plan, tmp_path / "m", False, tmp_path / "c")
    conditioning, _, _, _ = _conditioning(plan)
    latents = sum(t.nbytes for t in conditioning.latents.values())
    text = sum(s.nbytes + p.nbytes for s, p in conditioning.text.values())
    sizes = cache_bytes(plan, model_facts(plan))
    assert sizes["latents"] == latents  # exact: every image at its bucket
    per_caption = text // len(conditioning.text)
    assert sizes["text_encoder"] == plan["data"]["images"] * per_caption >= text  # one per image at most
    assert held_bytes(plan, model_facts(plan)) == sum(sizes.values())
    on_disk = {**plan, "data": {**plan["data"], "cache": {**plan["data"]["cache"], "to_disk": True}}}
    batch = plan["training"]["batch_size"]
    largest = max(t.nbytes for t in conditioning.latents.values())
    assert held_bytes(on_disk, model_facts(plan)) == batch * (largest + per_caption)


RECIPE = """sdx 1
model "{model}"
profile {profile}
data "{data}" caption .txt
resolution 64 no buckets
lora rank 4 on unet modules attention
batch 2
steps 2
output "out"
{cache}
"""


def _compiled(tmp_path: Path, profile: str, cache: str) -> Any:
    from sdxlc.pipeline import _compile_once

    root = Path(__file__).resolve().parent.parent / "recipes"
    recipe = tmp_path / f"{profile}.sdx"
    recipe.write_text(RECIPE.format(model=root / "models" / "tiny-shapes", data=root / "data" / "outlines",
                                    profile=profile, cache=cache))
    result, plan, layers = _compile_once(recipe, (), None, None)
    assert plan is not None and layers is not None, [d.message for d in result.diagnostics]
    return result, plan, layers


def test_the_cpu_estimate_and_exact_count_the_in_memory_caches(tmp_path: Path) -> None:
    from runtime.exact.host import adjust
    from sdxlc.estimate.analytic import model_facts
    from sdxlc.plan.cache_memory import held_bytes

    _, memory, _ = _compiled(tmp_path, "cpu", "cache te\ncache latents")
    _, disk, _ = _compiled(tmp_path, "cpu", "cache te to disk\ncache latents to disk")
    _, gpu, _ = _compiled(tmp_path, "l4-24gb", "cache te\ncache latents")
    held = memory["estimate"]["vram_breakdown"]["cache_entries"]
    batch = disk["estimate"]["vram_breakdown"]["cache_entries"]
    images = memory["data"]["images"]
    # 16 captions of (77 × 80 + 48) fp32 values and 16 latents of 2 × 4 × 8 × 8 fp32 values
    assert images == 16 and held == images * (77 * 80 + 48) * 4 + images * 2 * 4 * 8 * 8 * 4
    assert batch == 2 * ((77 * 80 + 48) * 4 + 2 * 4 * 8 * 8 * 4)  # one batch's entries
    assert "cache_entries" not in gpu["estimate"]["vram_breakdown"]
    result: dict[str, Any] = {"breakdown": {}, "peak_bytes": 100, "resident_bytes": 50,
                              "phase_peaks": {"step": 100}, "notes": []}
    adjust(memory, {}, result)  # `--exact` adds the same term by the same rule
    state = memory["estimate"]["vram_breakdown"].get("runtime_state", 0)
    assert result["breakdown"]["cache_entries"] == held == held_bytes(memory, model_facts(memory))
    assert result["peak_bytes"] == 100 + state + held


def test_a_gpu_plan_warns_when_the_in_memory_caches_are_large(tmp_path: Path) -> None:
    from sdxlc.estimate.cache_warning import cache_ram_warning
    from sdxlc.resolve.profiles import load_profile

    result, plan, layers = _compiled(tmp_path, "l4-24gb", "cache te\ncache latents")
    assert not [d for d in result.diagnostics if d.code == "SDX0617"]  # 16 small images: nothing to say
    profile = load_profile("l4-24gb")
    data = plan["data"]
    data["images"] = data["datasets"][0]["images"] = 50_000
    data["buckets"]["table"] = [{"width": 1024, "height": 1024, "images": 50_000, "batches": 25_000}]
    found = cache_ram_warning(plan, profile, layers)
    assert [d.code for d in found] == ["SDX0617"] and found[0].severity == "warning"
    # in bf16 on the L4: 50k × 2 × 4 × 128² × 2 bytes of latents, 50k × (77 × 80 + 48) × 2 of captions
    assert plan["precision"]["mixed"] == "bf16" and not plan["precision"]["vae_fp32"]
    assert "up to 12.8 GiB" in found[0].message and "12.2 GiB of latents" in found[0].message
    assert "0.6 GiB of text-encoder outputs" in found[0].message
    data["cache"]["to_disk"] = True
    assert cache_ram_warning(plan, profile, layers) == []
    data["cache"]["to_disk"] = False
    assert cache_ram_warning(plan, load_profile("cpu"), layers) == []  # the cpu estimate counts it instead


def test_the_default_budget_binds_in_memory_caches_only(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from sdxlc.resolve import cache_defaults

    monkeypatch.setattr(cache_defaults, "DEFAULT_BUDGET_BYTES", 1024)
    memory = _compiled(tmp_path, "cpu", "")[1]
    disk = _compiled(tmp_path, "cpu", "to disk")[1]
    for key in ("text_encoder", "latents"):
        assert memory["data"]["cache"][key] is False
        assert "`cache " in memory["provenance"][f"data.cache.{key}"]["at"]
        assert " to disk` to cache on disk" in memory["provenance"][f"data.cache.{key}"]["at"]
        assert disk["data"]["cache"][key] is True  # `to disk` holds only the keys: the budget does not bind
    assert disk["data"]["cache"]["to_disk"] is True
