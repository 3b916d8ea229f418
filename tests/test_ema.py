"""`ema`: the EMA of the trained weights follows the documented rule, is saved as its own artifact and
in every checkpoint (an exact resume goes on with the same average), and counts in the estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from runtime.train import checkpoint
from runtime.train import ema as emamod
from runtime.train.run import run_plan
from sdxlc.cli.main import main
from sdxlc.pipeline import compile_recipe

ROOT = Path(__file__).resolve().parent.parent
DECAY, EVERY, FROM = 0.7, 2, 1
RECIPE = f"""model tiny
profile cpu
data "data"
resolution 64 buckets 64..128 step 32
lora rank 4 alpha 4 on unet
lr 5e-3 adamw
batch 2
steps {{steps}}
save every 3 steps keep 10 fp32
log every 1 no tensorboard
seed 3
ema {DECAY} every {EVERY} steps from step {FROM}
"""


def _plan(folder: Path, steps: int = 7, extra: str = "") -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if not data.exists():
        data.symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = folder / "r.sdx"
    recipe.write_text(RECIPE.format(steps=steps) + extra, encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [str(d) for d in compiled.errors]
    return compiled.plan


def _replay(trained: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The EMA by the rule in docs/TRAINING.md, from the weights after each step (trained[s - 1])."""
    ema: dict[str, torch.Tensor] = {}
    for step, weights in enumerate(trained, start=1):
        if step <= FROM:
            ema = {name: value.clone() for name, value in weights.items()}
        elif (step - FROM) % EVERY == 0:
            ema = {name: DECAY * ema[name] + (1 - DECAY) * weights[name] for name in weights}
    return ema


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ...]:
    """A whole run, with the trained weights after each step recorded (an observer of the EMA's update
    hook: the average itself is computed by the test)."""
    trained: list[dict[str, torch.Tensor]] = []
    real = emamod.Ema.update

    def record(self: emamod.Ema, step: int) -> None:
        assert step == len(trained) + 1
        trained.append({name: p.detach().float().clone() for name, p in self.named.items()})
        real(self, step)

    plan = _plan(tmp_path_factory.mktemp("whole"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(emamod.Ema, "update", record)
        result, loaded = run_plan(plan, progress=False)
    return plan, result, loaded, trained


def test_the_ema_artifact_is_the_replayed_average(recorded: tuple[Any, ...], tmp_path: Path) -> None:
    plan, result, loaded, trained = recorded
    assert plan["training"]["ema"] == {"decay": DECAY, "every": EVERY, "from_step": FROM}
    out = Path(plan["output"]["dir"])
    assert len(trained) == 7 and result.ema_path == out / "r-ema.safetensors"
    expected = _replay(trained)
    # the checkpoint's EMA state, by parameter name
    saved = checkpoint.load_state(out / "checkpoints" / "step-000007").ema
    assert saved is not None and saved.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(saved[name], value, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value, trained[-1][name])  # the EMA is not the final weights
    # the artifact: the method's own file of the replayed EMA weights, marked as EMA
    from runtime.methods import registry

    method = registry.for_plan(plan)
    named = method.trainable_state(loaded.pipe)
    with torch.no_grad():
        for name, parameter in named.items():
            parameter.copy_(expected[name])
    mine = method.save(tmp_path / "replayed.safetensors", loaded.pipe, 7, 4, 0.0)
    artifact, raw = load_file(str(result.ema_path)), load_file(str(result.lora_path))
    replayed = load_file(str(mine))
    assert artifact.keys() == raw.keys() == replayed.keys()
    for key in artifact:
        torch.testing.assert_close(artifact[key], replayed[key], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(artifact[key], raw[key]) for key in artifact if "lora" in key)
    with safe_open(str(result.ema_path), "pt") as handle:
        meta = handle.metadata()
    with safe_open(str(result.lora_path), "pt") as handle:
        raw_meta = handle.metadata()
    assert meta["sdxlc_ema"] == "true" and meta["sdxlc_ema_decay"] == str(DECAY)
    assert "sdxlc_ema" not in raw_meta and meta["ss_network_dim"] == raw_meta["ss_network_dim"]
    # every intermediate save has its EMA twin, with its checksum
    assert (out / "r-ema-step000003.safetensors").is_file()
    assert (out / "r-ema-step000006.safetensors.sha256").is_file()


def test_resume_with_ema_is_bit_exact(recorded: tuple[Any, ...], tmp_path: Path) -> None:
    from test_resume import _kill_after, _run_cli

    whole = recorded[0]
    source = Path(whole["output"]["dir"]) / "checkpoints" / "step-000003"
    assert (source / checkpoint.EMA_FILE).is_file()
    # kill -9 after the step-3 checkpoint, then `sdxlc run --resume`
    plan = _plan(tmp_path / "killed")
    out = Path(plan["output"]["dir"])
    _kill_after(_run_cli(tmp_path / "killed" / "r.sdx"), out / "checkpoints" / "step-000003")
    # resumed through the CLI in this process (test_resume.py also resumes in a fresh one)
    final = CliRunner().invoke(main, ["run", str(tmp_path / "killed" / "r.sdx"), "--resume"])
    assert final.exit_code == 0 and "resuming from" in final.output, final.output
    _same_files(whole, plan)


def _same_files(whole: dict[str, Any], plan: dict[str, Any]) -> None:
    out = Path(plan["output"]["dir"])
    for name in ("r.safetensors", "r-ema.safetensors"):
        a = load_file(str(Path(whole["output"]["dir"]) / name))
        b = load_file(str(out / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_ema_counts_in_the_estimate(tmp_path: Path) -> None:
    terms = _plan(tmp_path / "a")["estimate"]["vram_breakdown"]
    without = compile_recipe(_write(tmp_path / "b", RECIPE.format(steps=7).replace(
        f"ema {DECAY} every {EVERY} steps from step {FROM}\n", "")))
    assert without.plan is not None and "ema_weights" not in without.plan["estimate"]["vram_breakdown"]
    assert terms["ema_weights"] == terms["trainable_params"]  # an fp32 copy of the fp32 LoRA parameters


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    (folder / "r.sdx").write_text(text, encoding="utf-8")
    return folder / "r.sdx"


@pytest.mark.parametrize(("line", "code"), [
    ("ema 1.0", "SDX0404"), ("ema 0", "SDX0404"), ("ema 0.99 every 50 steps", "SDX0594"),
    ("ema 0.99 from step 7", "SDX0594"),
])
def test_ema_checks(tmp_path: Path, line: str, code: str) -> None:
    text = RECIPE.format(steps=7).replace(f"ema {DECAY} every {EVERY} steps from step {FROM}", line)
    compiled = compile_recipe(_write(tmp_path, text))
    found = [d for d in compiled.diagnostics if d.code == code]
    assert found and found[0].help, [str(d) for d in compiled.diagnostics]


def test_a_full_size_finetune_with_ema_no_longer_fits_a_small_card() -> None:
    """The fp32 EMA of SDXL's 2.6 B UNet weights (9.6 GiB) takes a bf16 Adafactor fine-tune that fits a
    16 GB card over its budget: the fit check (SDX0610) then reports it."""
    from test_estimate import make_plan

    from sdxlc.estimate.analytic import estimate
    from sdxlc.resolve.profiles import load_profile

    plan = make_plan(optimizer="adafactor")
    plan["optimizer"]["args"] = {"relative_step": False, "scale_parameter": False, "warmup_init": False}
    plan["method"] = {"kind": "finetune", "targets": ["unet"], "full_bf16": True, "fused_backward": True,
                      "block_lr": None}
    profile = load_profile("rtx4060ti-16gb")
    before = estimate(plan, profile)
    plan["training"]["ema"] = {"decay": 0.999, "every": 1, "from_step": 0}
    after = estimate(plan, profile)
    assert before["fits"] and not after["fits"]
    assert after["vram_breakdown"]["ema_weights"] == 4 * 2_567_463_684  # the UNet's weights in fp32
    assert after["vram_bytes"] - before["vram_bytes"] >= after["vram_breakdown"]["ema_weights"]


def test_exact_counts_the_ema(tmp_path: Path) -> None:
    from runtime.exact.step import measure

    plan = _plan(tmp_path)
    got = measure(plan)["breakdown"]
    assert got["ema_weights"] == plan["estimate"]["vram_breakdown"]["ema_weights"] > 0


def test_ema_with_fsdp_is_refused(tmp_path: Path) -> None:
    text = RECIPE.format(steps=7).replace("profile cpu", "profile rtx4090-24gb\ngpus 2\nstrategy fsdp")
    compiled = compile_recipe(_write(tmp_path, text))
    found = [d for d in compiled.diagnostics if d.code == "SDX0595"]
    assert found and found[0].help and compiled.plan is None, [str(d) for d in compiled.diagnostics]


def test_a_cadence_below_one_says_why_not_the_upper_bound(tmp_path: Path) -> None:
    text = RECIPE.format(steps=7).replace(f"ema {DECAY} every {EVERY} steps from step {FROM}",
                                          "ema 0.99 every 0 steps")
    found = [d for d in compile_recipe(_write(tmp_path, text)).diagnostics if d.code == "SDX0404"]
    assert found and "from 1" in str(found[0].help) and "years" not in str(found[0].help)


def test_the_run_summary_names_the_ema_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from sdxlc.cli.main import _print_result
    result = SimpleNamespace(lora_path=tmp_path / "r.safetensors", ema_path=tmp_path / "r-ema.safetensors",
                             diffusers_path=None, plan_path=tmp_path / "plan.json", samples=[], grids=[],
                             before_after=None, logs=None)
    _print_result({"method": {"kind": "finetune"}}, result, 1.0)
    assert f"EMA:     {tmp_path / 'r-ema.safetensors'}" in capsys.readouterr().out
