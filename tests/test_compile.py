"""`compile`: the plan's `training.compile` (sdxlc/resolve/compile.py) and the runtime's torch.compile of
the UNet (runtime/train/compiling.py): the word, the shape count the plan derives from its buckets, the
recompile limit it sets, a missing C++ compiler, and compiled training that matches eager training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from runtime import RunError
from runtime.train import compiling
from sdxlc.pipeline import compile_recipe
from sdxlc.resolve.compile import batch_shapes

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "data" / "quickstart"


def plan_of(tmp_path: Path, text: str) -> dict[str, Any]:
    recipe = tmp_path / "r.sdx"
    head = f'sdx 1\nmodel tiny\nprofile cpu\ndata "{QUICKSTART}" repeat 3\nlora rank 4\nsteps 4\n'
    recipe.write_text(head + text, encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    plan: dict[str, Any] = compiled.plan
    return plan


def test_compile_is_off_unless_the_recipe_says_it(tmp_path: Path) -> None:
    assert plan_of(tmp_path, "")["training"]["compile"] is None


def test_the_word_compiles_every_batch_shape_of_the_buckets(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "resolution 96 buckets 64..160 step 32\nbatch 2 compile\n")
    spec = plan["training"]["compile"]
    assert spec["backend"] == "inductor" and spec["mode"] == "default"
    table = plan["data"]["buckets"]["table"]
    assert len(table) > 1  # the quickstart's images fall in several buckets
    assert spec["shapes"] >= len(table)
    assert plan["provenance"]["training.compile"]["source"] == "recipe"


def test_one_square_bucket_with_even_batches_is_one_shape(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "resolution 64 no buckets\nbatch 2 compile\n")
    samples = plan["data"]["samples_per_epoch"]
    assert plan["training"]["compile"]["shapes"] == (1 if samples % 2 == 0 else 2)


@pytest.mark.parametrize(("sizes", "batch", "shapes"), [
    ([4], 2, 1), ([5], 2, 2), ([1], 4, 1), ([5, 4, 1], 2, 4), ([0, 3], 4, 1), ([], 2, 1),
])
def test_batch_shapes_counts_full_and_last_batches(sizes: list[int], batch: int, shapes: int) -> None:
    assert batch_shapes(sizes, batch) == shapes


def test_no_compile_leaves_the_model_as_it_is() -> None:
    model = torch.nn.Linear(2, 2)
    assert compiling.compiled(model, None) is model


def test_a_cpu_without_a_cpp_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    spec = {"backend": "inductor", "mode": "default", "shapes": 1}
    with pytest.raises(RunError, match="C\\+\\+ compiler"):
        compiling.check_compiler(spec, "cpu")
    compiling.check_compiler(spec, "cuda")  # CUDA kernels are Triton's
    compiling.check_compiler(None, "cpu")


def test_every_planned_shape_compiles_without_falling_back() -> None:
    """More shapes than dynamo's limit: each gets its own graph, none runs eager. Dynamo's recompile limit
    is what is tested (lowered to 2 here, 8 by default), so the graphs go to the `eager` backend."""
    import torch._dynamo
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    saved = dynamo_config.recompile_limit
    dynamo_config.recompile_limit = 2  # the third shape would run eager
    try:
        torch._dynamo.reset()
        counters.clear()
        model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.GELU(), torch.nn.Linear(5, 1))
        step = compiling.compiled(model, {"backend": "eager", "mode": "default", "shapes": 4})
        for rows in range(1, 5):
            step(torch.randn(rows, 3)).sum()
        assert counters["stats"]["unique_graphs"] == 4
    finally:
        dynamo_config.recompile_limit = saved
        torch._dynamo.reset()


def test_inductor_trains_a_module_as_eager_does() -> None:
    """The real backend on the CPU: generated C++ kernels, forward and backward, the same gradients."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)

    def net() -> torch.nn.Module:
        conv = torch.nn.Conv2d
        return torch.nn.Sequential(conv(4, 8, 3, padding=1), torch.nn.SiLU(), conv(8, 4, 1))

    eager, twin = net(), net()
    twin.load_state_dict(eager.state_dict())
    step = compiling.compiled(twin, {"backend": "inductor", "mode": "default", "shapes": 1})
    x = torch.randn(2, 4, 8, 8)
    eager(x).square().mean().backward()
    step(x).square().mean().backward()
    for a, b in zip(eager.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


class _Recorder:
    """Stands in for torch.compile: records its arguments and counts the calls of what it wraps."""

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}
        self.calls = 0

    def __call__(self, model: torch.nn.Module, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        recorder = self

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, *args: Any, **kw: Any) -> Any:
                recorder.calls += 1
                return self.inner(*args, **kw)

        return Wrapped()


def test_the_run_steps_through_the_compiled_unet(make_plan: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring: with `training.compile`, every training step calls what torch.compile returned, with the
    plan's backend and mode and static shapes; sampling calls the UNet itself."""
    from runtime.train.run import execute

    recorder = _Recorder()
    monkeypatch.setattr(torch, "compile", recorder)
    spec = {"backend": "inductor", "mode": "default", "shapes": 3}
    plan = make_plan(tmp_path, training__total_steps=3, training__compile=spec, sample__prompts=["a circle"])
    result = execute(plan, progress=False)
    assert result.steps == 3
    assert recorder.calls == 3
    assert recorder.kwargs == {"backend": "inductor", "mode": "default", "dynamic": False}
    import torch._dynamo.config as dynamo_config

    assert dynamo_config.recompile_limit >= 3


@pytest.mark.parametrize(("backend", "word"), [("inductor", True), (None, True), ("aot_eager", False)])
def test_kohyas_torch_compile_imports_as_the_word(tmp_path: Path, backend: str | None, word: bool) -> None:
    from sdxlc.tools.kohya.convert import import_kohya

    config = tmp_path / "train.toml"
    lines = ['pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"',
             f'train_data_dir = "{QUICKSTART}"', "network_dim = 8", "torch_compile = true"]
    lines += [f'dynamo_backend = "{backend}"'] if backend else []
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    imported = import_kohya([config], tmp_path)
    statements = [line.split() for line in imported.text.splitlines() if not line.startswith("#")]
    assert any("compile" in words for words in statements) is word
    if not word:
        assert [n.key for n in imported.changes_training if n.key == "dynamo_backend"] == ["dynamo_backend"]


def test_the_cpu_estimate_counts_the_compile_and_its_memory(tmp_path: Path) -> None:
    from sdxlc.plan.host_memory import COMPILE_STATE, RUNTIME_STATE

    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    eager = plan_of(tmp_path / "eager", "batch 2\n")
    compiled = plan_of(tmp_path / "compiled", "batch 2 compile\n")
    state = {name: p["estimate"]["vram_breakdown"][RUNTIME_STATE] for name, p in
             (("eager", eager), ("compiled", compiled))}
    assert state["compiled"] - state["eager"] == COMPILE_STATE
    times = {name: p["estimate"]["time_breakdown"] for name, p in (("eager", eager), ("compiled", compiled))}
    assert "compile" not in times["eager"] and times["compiled"]["compile"] > 0
    assert compiled["estimate"]["seconds_per_step"] < eager["estimate"]["seconds_per_step"]
    assert compiled["estimate"]["total_seconds"] > times["compiled"]["compile"]


@pytest.mark.parametrize(("method", "warned", "gains"), [
    ("lora rank 4 on unet", False, True), ("loha rank 4 on unet", True, False),
    ("lokr rank 4 on unet", True, False), ("lora rank 4 on unet dora", True, False),
    ("lora rank 4 on unet modules attention+conv", False, True),
    ("finetune unet", False, False),  # not measured: no gain promised
])
def test_adapters_that_break_the_graph_are_warned_and_gain_nothing(tmp_path: Path, method: str,
                                                                    warned: bool, gains: bool) -> None:
    recipe = tmp_path / "r.sdx"
    head = f'sdx 1\nmodel tiny\nprofile cpu\ndata "{QUICKSTART}"\n'
    recipe.write_text(f"{head}{method}\nsteps 4\nbatch 2 compile\n", encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None
    found = [d for d in compiled.diagnostics if d.code == "SDX0618"]
    assert bool(found) is warned
    if warned:
        assert found[0].span is not None and (found[0].span.line, found[0].span.column) == (7, 9)
    plain = compile_recipe(recipe, ("training.compile=false",))
    assert plain.plan is not None
    ratio = compiled.plan["estimate"]["seconds_per_step"] / plain.plan["estimate"]["seconds_per_step"]
    assert (ratio < 0.99) is gains


def test_the_estimates_constants_hold_the_recorded_measurements() -> None:
    """sdxlc/estimate/compiletime.py's step factors are the recorded bench's (bench/compile_speed.py)."""
    import json

    from sdxlc.estimate.compiletime import STEP_FACTOR

    recorded = json.loads((QUICKSTART.parents[2] / "bench" / "results" / "compile_speed.json").read_text())
    runs = {r["kind"]: r for r in recorded["rows"] if r["config"].startswith("attention+ff+conv r16,")}
    wider = runs["eager"]["sps"] / runs["warm"]["sps"]
    assert STEP_FACTOR[("tiny", "cpu", "wider lora")] == pytest.approx(wider, rel=0.05)
    interleaved = recorded["interleaved"]  # the attention LoRA, eager and compiled runs in turn
    assert interleaved["config"].startswith("attention r8,") and len(interleaved["pairs"]) >= 3
    assert STEP_FACTOR[("tiny", "cpu", "attention lora")] == pytest.approx(interleaved["factor_median"],
                                                                            rel=0.05)


def test_the_cached_compile_term_holds_the_recorded_warm_runs(tmp_path: Path) -> None:
    """A run on a filled compile cache costs CACHED_SECONDS_PER_LAYER per graph layer per shape (tracing,
    loading the code): both configurations of bench/results/compile_cached.json within 25%, with the
    layer counts the estimate computes for their plans."""
    import json

    from sdxlc.estimate.compiletime import CACHED_SECONDS_PER_LAYER

    root = QUICKSTART.parents[2]
    recorded = json.loads((root / "bench" / "results" / "compile_cached.json").read_text())
    assert len(recorded["rows"]) == 2
    for row in recorded["rows"]:
        assert len(row["pairs"]) >= 2
        implied = row["cached_compile_s"] / (row["layers"] * row["shapes"])
        assert CACHED_SECONDS_PER_LAYER == pytest.approx(implied, rel=0.25), row["config"]
    compiled = plan_of(tmp_path, "batch 2 compile\n")
    breakdown = compiled["estimate"]["time_breakdown"]
    assert 0 < breakdown["compile_cached"] < breakdown["compile"]
    assert compiled["estimate"]["total_seconds"] > breakdown["compile"]  # counts a first run
