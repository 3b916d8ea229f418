"""Two processes on the CPU (gloo, `accelerate.debug_launcher`) train the tiny model: the ranks end with
identical weights, equal to one process trained on the same global batch (docs/SCALE.md). Both caches
are on: each rank encodes half the images and captions and the ranks exchange them.

The comparison needs both runs to draw the same noise for the same batch: the loop reseeds torch before
every batch from the batch's position in the global batch order (rank r's c-th batch is global batch c·N
+ r; runtime/train/loop.py `batch_seed`), so the runs differ only in how the gradients are averaged: all-
reduced over two ranks versus accumulated over two micro-steps in one. Those sums are the same numbers
added in another order. With two ranks over gloo the order happens to be the same too (g0/2 + g1/2 both
ways) and the weights come out bitwise equal; the tolerance, 1e-6 absolute on weights of size ~1, leaves
room only for float32 rounding of a different reduction order, amplified over three Adam steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import QUICKSTART, build_plan

STEPS = 3  # one epoch of 6 batches: 3 steps of 2 batches


def lora_state(models: Any) -> dict[str, torch.Tensor]:
    unet = models.accelerator.unwrap_model(models.pipe.unet)
    return {name: p.detach().cpu().clone() for name, p in unet.named_parameters() if p.requires_grad}


CACHE = {"text_encoder": True, "latents": True}  # both caches, filled by the ranks together


def plan_for(out: Path, world: int, to_disk: bool = False, steps: int = STEPS) -> dict[str, Any]:
    """Batch 2 per micro-step; global batch 4 as 2 processes × 1 or 1 process × accumulate 2."""
    launch = {"processes": world, "world_size": world, "distributed_type": "MULTI_GPU" if world > 1 else "NO",
              "batches_per_step": 2, "global_batch": 4}
    cache = {**CACHE, "to_disk": to_disk, "dir": str(out.parent / "cache")}
    plan = build_plan(out, training={"batch_size": 2, "accumulate": 2 // world, "total_steps": steps},
                      sample={"prompts": []}, launch=launch, data={"cache": cache})
    plan["launch"].update(batches_per_step=2, global_batch=4)
    return plan


def counting(conditioning: Any, counts: dict[str, int], made: list[Any]) -> None:
    """Count the images and captions this process encodes itself; keep the Conditioning it builds."""
    encode_finite, encode_text = conditioning.encode_finite, conditioning.encode_text
    init = conditioning.Conditioning.__init__

    def images(*args: Any) -> Any:
        counts["images"] += 1
        return encode_finite(*args)

    def captions(models: Any, texts: list[str]) -> Any:
        counts["captions"] += len(texts)
        return encode_text(models, texts)

    def build(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    conditioning.encode_finite, conditioning.encode_text = images, captions
    conditioning.Conditioning.__init__ = build


def rank_main(out: str, to_disk: bool = False, steps: int = STEPS) -> None:
    """One rank of the two-process run (inherits the test process by fork)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from runtime.train import conditioning
    from runtime.train.run import run_plan
    from sdxlc.plan.contract import plan_hash

    AcceleratorState._reset_state(reset_partial_state=True)  # the parent's single-process state
    GradientState._reset_state()
    state = PartialState(cpu=True)
    plan = plan_for(Path(out) / "run2", 2, to_disk, steps)
    plan["plan_hash"] = plan_hash(plan)
    counts, made = {"images": 0, "captions": 0}, []  # type: ignore[var-annotated]
    counting(conditioning, counts, made)
    _, models = run_plan(plan, progress=False)
    totals = {"latents": vars(made[0].latent_counts), "text": vars(made[0].text_counts),
              "cached": (len(made[0].latents) + len(made[0].latent_keys),
                         len(made[0].text) + len(made[0].text_keys)),
              "held": made[0].held_tensors()}
    torch.save({"weights": lora_state(models), "encoded": counts, "totals": totals},
               Path(out) / f"rank{state.process_index}.pt")


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    from accelerate import debug_launcher
    from accelerate.state import AcceleratorState, GradientState

    from runtime.train.run import run_plan

    debug_launcher(rank_main, args=(str(tmp_path),), num_processes=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    images, captions = 12, _captions()
    # each rank encoded its half of the images and captions and ended with the whole cache
    assert [r["encoded"]["images"] for r in ranks] == [images // 2, images // 2]
    assert sorted(r["encoded"]["captions"] for r in ranks) == [captions // 2, captions - captions // 2]
    for r in ranks:
        assert r["totals"]["cached"] == (images, captions)
        assert r["totals"]["latents"] == {"encoded": images, "reused": 0}
        assert r["totals"]["text"] == {"encoded": captions, "reused": 0}
    rank0, rank1 = ranks[0]["weights"], ranks[1]["weights"]
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert (tmp_path / "run2" / "tinylora.safetensors").exists()

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    from runtime.train.conditioning import Conditioning

    original = Conditioning.batch
    try:
        _, models = run_plan(plan_for(tmp_path / "run1", 1), progress=False)
    finally:
        Conditioning.batch = original  # type: ignore[method-assign]
    single = lora_state(models)
    initial = {name: p for name, p in single.items() if "lora_B" in name}
    assert any(p.abs().max() > 0 for p in initial.values())  # lora_B starts at zero: training moved it
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-6, msg=name)


def test_two_processes_share_the_disk_cache(tmp_path: Path) -> None:
    """With `to disk` each rank writes its share, then every rank reads the others' entries."""
    from accelerate import debug_launcher

    debug_launcher(rank_main, args=(str(tmp_path), True, 1), num_processes=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    captions = _captions()
    assert [r["encoded"]["images"] for r in ranks] == [6, 6]
    assert sum(r["encoded"]["captions"] for r in ranks) == captions
    for r in ranks:
        assert r["totals"]["cached"] == (12, captions)
        assert r["totals"]["held"] == 0  # only the keys: each batch reads its entries from disk
        assert r["totals"]["latents"] == {"encoded": 12, "reused": 0}
    assert len(list((tmp_path / "cache" / "latents").rglob("*.safetensors"))) == 12
    assert len(list((tmp_path / "cache" / "text").rglob("*.safetensors"))) == captions
    # a second run (its first run's results moved aside) encodes nothing: every rank reuses its share
    (tmp_path / "run2").rename(tmp_path / "run1-moved")
    debug_launcher(rank_main, args=(str(tmp_path), True, 1), num_processes=2)
    again = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for r in again:
        assert r["encoded"] == {"images": 0, "captions": 0}
        assert r["totals"]["latents"] == {"encoded": 0, "reused": 12}
        assert r["totals"]["text"] == {"encoded": 0, "reused": captions}


def _captions() -> int:
    return len({p.read_text(encoding="utf-8").strip() for p in QUICKSTART.glob("*.txt")})


# `sdxlc run` launching two processes under `accelerate launch` (relaunch) is checked on one real run
# in tests/test_plan_file.py (test_launched_processes_run_the_plan_file_and_never_compile).
