"""The training step's hot loop: losses are read from the device only at the run's read points, a
diverging run still stops at the exact batch and saves nothing from NaN weights, and the optimizer
implementation the plan names is the one the runtime builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_lora_modules_kohya import compile_text

from runtime import RunError
from runtime.train import checkpoint, loop, readout
from runtime.train.optim import make_optimizer
from runtime.train.run import run_plan

ROOT = Path(__file__).resolve().parent.parent


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of `.item()`, `float(tensor)`, `.tolist()` and `readout.to_host` while the loop trains."""
    counts = {"item": 0, "float": 0, "tolist": 0, "to_host": 0, "training": 0}
    for name, key in (("item", "item"), ("__float__", "float"), ("tolist", "tolist")):
        real = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _real: Any = real, _key: str = key) -> Any:
            counts[_key] += counts["training"]
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_host, real_steps = readout.to_host, loop._steps

    def to_host(values: torch.Tensor) -> list[float]:
        counts["to_host"] += 1
        return real_host(values)

    def steps(*args: Any) -> None:
        counts["training"] = 1
        try:
            real_steps(*args)
        finally:
            counts["training"] = 0

    monkeypatch.setattr(readout, "to_host", to_host)
    monkeypatch.setattr(loop, "_steps", steps)
    return counts


def test_the_loss_is_read_only_at_the_log_points(make_plan, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's for-loop AdamW reads every tensor's step count with `.item()`: the fused one reads none
    plan = make_plan(tmp_path, training__total_steps=6, training__accumulate=2, log__every_steps=3,
                     optimizer__max_grad_norm=1.0, optimizer__implementation="fused")
    counts = _count_reads(monkeypatch)
    result, _ = run_plan(plan, progress=False)
    assert result.steps == 6
    # 12 batches, 6 optimizer steps: one transfer after step 3 and one after step 6, nothing else
    assert counts["to_host"] == 2
    assert counts["item"] == counts["float"] == 0, counts
    assert counts["tolist"] == 2, counts
    assert result.final_loss == result.final_loss and result.average_loss == result.average_loss  # not NaN


def _diverging(monkeypatch: pytest.MonkeyPatch, at: int) -> list[tuple[int, int]]:
    """Batch `at` (1-based, in training order) gives a NaN loss; returns the (epoch, position) of each
    batch as the loop seeds it."""
    real_loss, real_seed = loop.batch_loss, loop.batch_seed
    seen: list[tuple[int, int]] = []

    def batch_seed(seed: int, epoch: int, position: int) -> int:
        seen.append((epoch, position))
        return real_seed(seed, epoch, position)

    def batch_loss(*args: Any) -> torch.Tensor:
        loss = real_loss(*args)
        return loss * float("nan") if len(seen) == at else loss

    monkeypatch.setattr(loop, "batch_seed", batch_seed)
    monkeypatch.setattr(loop, "batch_loss", batch_loss)
    return seen


@pytest.mark.parametrize(("accumulate", "at", "step", "save"), [(1, 3, 3, 2), (2, 4, 2, 1)])
def test_a_divergence_is_found_at_its_batch_and_nothing_is_saved_after_it(  # type: ignore[no-untyped-def]
        make_plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accumulate: int, at: int, step: int,
        save: int) -> None:
    # batch `at` (in optimizer step `step`) turns the weights to NaN; the loss is read at the next save
    plan = make_plan(tmp_path, training__total_steps=6, training__accumulate=accumulate, log__every_steps=100,
                     save__every_steps=save, save__keep=10)
    seen = _diverging(monkeypatch, at)
    with pytest.raises(RunError) as raised:
        run_plan(plan, progress=False)
    epoch, position = seen[at - 1]
    said = f"the loss became nan at step {step} (epoch {epoch + 1}, batch {position + 1}:"
    assert said in str(raised.value)
    out = Path(plan["output"]["dir"])
    saved = [p.name for p in checkpoint.complete(out)]
    assert saved and all(int(name.split("-")[1]) < step for name in saved), saved
    assert not (out / "tinylora.safetensors").exists()
    assert not list(out.glob(f"tinylora-step{step:06d}*")) and not list(out.glob("tinylora-step00000[3-6]*"))


def test_losses_read_late_are_the_losses_of_each_step(make_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, float]] = []
    plan = make_plan(tmp_path, training__total_steps=6, log__every_steps=4)
    from runtime.train.run import Run

    real = Run.on_loss

    def on_loss(self: Run, step: int, loss: float, lr: float) -> None:
        seen.append((step, loss))
        real(self, step, loss, lr)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Run, "on_loss", on_loss)
        result, _ = run_plan(plan, progress=False)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert result.final_loss == seen[-1][1] and all(0 < loss < 10 for _, loss in seen)


@pytest.mark.parametrize(("implementation", "fused", "foreach"), [
    ("fused", True, False), ("foreach", False, True), ("for_loop", False, False), (None, None, None),
])
def test_the_plan_implementation_is_the_optimizer_built(  # type: ignore[no-untyped-def]
        make_plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, implementation: str | None,
        fused: bool | None, foreach: bool | None) -> None:
    # a plan without the field (an older sdxlc) passes `args` as they are
    chosen = {} if implementation is None else {"optimizer__implementation": implementation}
    plan = make_plan(tmp_path, training__total_steps=1, **chosen)
    built: list[torch.optim.Optimizer] = []

    def making(*args: Any) -> torch.optim.Optimizer:
        built.append(make_optimizer(*args))
        return built[-1]

    monkeypatch.setattr(loop, "make_optimizer", making)
    run_plan(plan, progress=False)
    assert len(built) == 1 and isinstance(built[0], torch.optim.AdamW)
    assert built[0].defaults["fused"] is fused and built[0].defaults["foreach"] is foreach


@pytest.mark.parametrize(("text", "implementation", "source"), [
    ("profile cpu\n", "fused", "profile"),
    ("profile rtx4090-24gb\n", "foreach", "profile"),
    ("profile cpu\nlr 1e-3 sgd\n", "fused", "profile"),
    ("profile cpu\noptimizer adamw args foreach=true\n", "foreach", "recipe"),
    ("profile cpu\noptimizer sgd args foreach=false\n", "for_loop", "recipe"),
    ("profile rtx4090-24gb\noptimizer adamw args fused=true\n", "fused", "recipe"),
    ("profile cpu\nlr 1e-3 adamw8bit\n", None, "derived"),
    ("profile cpu\nlr 1e-3 adafactor\n", None, "derived"),
])
def test_the_compiler_chooses_the_implementation(tmp_path: Path, text: str, implementation: str | None,
                                                 source: str) -> None:
    compiled = compile_text(tmp_path, text)
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    optimizer = compiled.plan["optimizer"]
    assert optimizer["implementation"] == implementation
    assert "foreach" not in optimizer["args"] and "fused" not in optimizer["args"]
    assert compiled.plan["provenance"]["optimizer.implementation"]["source"] == source


def test_foreach_with_fused_is_a_compile_error(tmp_path: Path) -> None:
    compiled = compile_text(tmp_path, "profile cpu\noptimizer adamw args foreach=true fused=true\n")
    assert compiled.plan is None
    assert [d.code for d in compiled.diagnostics if d.severity == "error"] == ["SDX0541"]
