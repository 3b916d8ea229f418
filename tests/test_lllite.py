"""ControlNet-LLLite on the tiny model: the network (kohya's layout and zero start), a real training run on
generated edge control images, the saved kohya file, generation with `--lllite/--control`, and the checks."""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import QUICKSTART, ROOT
from PIL import Image
from safetensors import safe_open

from runtime.gen.generate import GenRequest, generate
from runtime.methods import lllite_net
from runtime.methods import registry as methods
from runtime.model.load import Models
from runtime.model.tiny import tiny_components
from runtime.train.conditioning import Conditioning
from runtime.train.loss import batch_loss
from runtime.train.run import run_plan, setup_data, setup_model
from sdxlc.cli.gen import gen_command
from sdxlc.pipeline import compile_recipe

sys.path.insert(0, str(ROOT / "recipes" / "data"))
from make_edges import make_edges  # noqa: E402

STEPS = 20
COND, MLP = 16, 32
MODEL = ROOT / "recipes" / "models" / "tiny-shapes"  # a trained tiny base: its images show what changes


def recipe(folder: Path, extra: str = "", control: str = ' control "edges"') -> Path:
    path = folder / "r.sdx"
    path.write_text(f'sdx 1\nmodel "{MODEL}"\nprofile cpu\ndata "images"{control}\nresolution 64 no buckets\n'
                    f"lllite cond_dim {COND} mlp_dim {MLP}\nlr 1e-2\nbatch 4\nsteps {STEPS}\nseed 3\n"
                    f'output "out"\n{extra}', encoding="utf-8")
    return path


def dataset(folder: Path) -> Path:
    """The quickstart shapes and their edge images (recipes/data/make_edges.py) in `folder`."""
    shutil.copytree(QUICKSTART, folder / "images")
    make_edges(folder / "images", folder / "edges")
    return folder


def compiled(path: Path, *sets: str) -> dict[str, Any]:
    result = compile_recipe(path, sets)
    assert result.plan is not None, [d.message for d in result.diagnostics]
    return result.plan


def fixed_loss(plan: dict[str, Any], models: Models) -> float:
    """The mean loss of the first three batches of epoch 0 at four fixed noise seeds each."""
    data = setup_data(plan)
    conditioning = Conditioning(models, data, plan["data"]["cache"])
    method = methods.for_plan(plan)
    unet, total = models.pipe.unet.eval(), 0.0
    with torch.no_grad():
        for index in range(3):
            batch = conditioning.batch(data.epoch(0)[index], random.Random(0))
            assert batch.control is not None and batch.control.shape == (4, 3, 64, 64)
            for seed in range(4):
                torch.manual_seed(seed)
                latents, states, pooled = conditioning.encode(batch)
                method.before_forward(models.pipe, batch)
                total += batch_loss(unet, models, plan["training"], latents, states, pooled,
                                    batch.time_ids).item()
    return total / 12


@dataclass
class Trained:
    folder: Path
    plan: dict[str, Any]
    before: float
    after: float
    file: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    folder = dataset(tmp_path_factory.mktemp("lllite"))
    plan = compiled(recipe(folder))
    before = fixed_loss(plan, setup_model(plan))
    result, models = run_plan(plan, progress=False)
    return Trained(folder, plan, before, fixed_loss(plan, models), result.lora_path)


def test_make_edges_skips_a_bad_image_and_refuses_bad_folders(tmp_path: Path) -> None:
    import subprocess

    shutil.copytree(QUICKSTART, tmp_path / "images")
    (tmp_path / "images" / "zz.png").write_text("not an image", encoding="utf-8")
    written = make_edges(tmp_path / "images", tmp_path / "edges")  # was a traceback at zz.png
    assert len(written) == 12 and not (tmp_path / "edges" / "zz.png").exists()
    script = str(ROOT / "recipes" / "data" / "make_edges.py")
    for args in (["--images", str(tmp_path / "nope")], ["--images", str(tmp_path / "images"), "--out",
                                                       str(tmp_path / "images")]):
        done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr


def test_an_untrained_network_leaves_the_unet_unchanged() -> None:
    unet = tiny_components()["unet"].eval()
    torch.manual_seed(0)
    args = (torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 77, 80))
    extra = {"text_embeds": torch.randn(2, 48), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        plain = unet(*args, added_cond_kwargs=extra).sample
        net = lllite_net.attach(unet, COND, MLP)
        net.control(torch.rand(2, 3, 64, 64) * 2 - 1)
        assert torch.equal(unet(*args, added_cond_kwargs=extra).sample, plain)  # `up` starts at zero
        for module in net.blocks.values():
            torch.nn.init.normal_(module.up[0].weight, std=0.1)
        assert not torch.equal(unet(*args, added_cond_kwargs=extra).sample, plain)
        net.control(None)  # no control image: the hooks do nothing
        assert torch.equal(unet(*args, added_cond_kwargs=extra).sample, plain)


def kohya_layout(cond: int, mlp: int, unet: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """kohya's keys and shapes for a tiny-topology UNet config (control_net_lllite.py: Transformer2DModel
    children of input_blocks and middle_block, attn1 to_q/k/v and attn2 to_q; depth 1 for input blocks
    0-2, 2 for 3-5, 3 above and for the middle block). Here: input blocks 4, 5 (level 1), 7, 8 (level 2)
    and the middle block (level 2's width and transformer depth)."""
    widths, layers = unet["block_out_channels"], unet["transformer_layers_per_block"]
    modules = [(f"input_blocks_{i}_1_transformer_blocks_{t}", widths[1], 2)
               for i in (4, 5) for t in range(layers[1])]
    modules += [(f"input_blocks_{i}_1_transformer_blocks_{t}", widths[2], 3)
                for i in (7, 8) for t in range(layers[2])]
    modules += [(f"middle_block_1_transformer_blocks_{t}", widths[2], 3) for t in range(layers[2])]
    half, out = cond // 2, {}
    for block, width, depth in modules:
        for layer in ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn2_to_q"):
            key = f"lllite_unet_{block}_{layer}"
            stem = {"0": (half, 3, 4, 4)}
            stem.update({"2": (cond, half, 4, 4)} if depth == 2
                        else {"2": (half, half, 4, 4), "4": (cond, half, 2, 2)})
            for index, shape in stem.items():
                out[f"{key}.conditioning1.{index}.weight"] = shape
                out[f"{key}.conditioning1.{index}.bias"] = shape[:1]
            for part, shape in (("down", (mlp, width)), ("mid", (mlp, mlp + cond)), ("up", (width, mlp))):
                out[f"{key}.{part}.0.weight"], out[f"{key}.{part}.0.bias"] = shape, shape[:1]
    return out


def test_training_lowers_the_loss_on_a_fixed_batch(trained: Trained) -> None:
    assert trained.after < 0.995 * trained.before, (trained.before, trained.after)


def test_the_file_has_kohyas_keys_shapes_and_metadata(trained: Trained) -> None:
    with safe_open(str(trained.file), "pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        meta = handle.metadata()
    config = json.loads((MODEL / "unet" / "config.json").read_text(encoding="utf-8"))
    assert shapes == kohya_layout(COND, MLP, config)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/control-net-lllite"
    assert meta["ss_cond_emb_dim"] == str(COND) and meta["ss_network_dim"] == str(MLP)
    # how sdxl_gen_img.py reads the dims back, and the ComfyUI node's depth detection
    state = {key: torch.zeros(shape) for key, shape in shapes.items()}
    assert lllite_net.dims_of(state) == (COND, MLP)
    assert all(("conditioning1.4.weight" in "".join(k for k in shapes if k.startswith(m)))
               == ("input_blocks_4" not in m and "input_blocks_5" not in m)
               for m in {key.split(".")[0] for key in shapes})


def _gen(trained: Trained, out: Path, control: str | None) -> np.ndarray:
    request = GenRequest(model=str(MODEL), prompts=["a red circle on a blue background"], out=out, width=64,
                         height=64, steps=4, cfg=5.0, seed=1,
                         lllite=(trained.file, 1.0) if control else None,
                         control=trained.folder / "edges" / control if control else None)
    [path] = generate(request)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_gen_follows_the_control_image_and_is_plain_without_lllite(trained: Trained, tmp_path: Path) -> None:
    first, second = _gen(trained, tmp_path / "a", "00.png"), _gen(trained, tmp_path / "b", "03.png")
    assert np.abs(first - second).max() > 2  # 20 steps teach the network a little about its control
    plain, again = _gen(trained, tmp_path / "c", None), _gen(trained, tmp_path / "d", None)
    assert np.array_equal(plain, again) and not np.array_equal(plain, first)


def test_gen_cli_needs_lllite_and_control_together(trained: Trained) -> None:
    runner = CliRunner()
    alone = runner.invoke(gen_command, ["-p", "x", "--lllite", str(trained.file)])
    assert alone.exit_code == 2 and "--control" in alone.output
    control = runner.invoke(gen_command, ["-p", "x", "--control", str(trained.folder / "edges" / "00.png")])
    assert control.exit_code == 2 and "--lllite" in control.output


def test_gen_cli_rejects_bad_lllite_weights_control_images_and_files(trained: Trained,
                                                                     tmp_path: Path) -> None:
    runner = CliRunner()
    edge = str(trained.folder / "edges" / "00.png")
    for weight, said in (("abc", "is not a number"), ("nan", "is not a finite number")):
        given = f"{trained.file}:{weight}"
        bad = runner.invoke(gen_command, ["-p", "x", "--lllite", given, "--control", edge])
        assert bad.exit_code == 2 and f"--lllite {given}: the weight {weight} {said}" in bad.output
    (tmp_path / "cut.png").write_bytes((trained.folder / "edges" / "00.png").read_bytes()[:80])
    (tmp_path / "text.png").write_text("not an image", encoding="utf-8")
    for name in ("cut.png", "text.png"):  # refused before the model loads
        bad = runner.invoke(gen_command, ["-p", "x", "--lllite", str(trained.file), "--control",
                                          str(tmp_path / name)])
        assert bad.exit_code == 2 and f"--control {tmp_path / name}:" in bad.output
    for size in ("16", "80"):  # a multiple of 8, not of 32: the deepest stem would not line up (was exit 70)
        bad = runner.invoke(gen_command, ["-p", "x", "--lllite", str(trained.file), "--control", edge,
                                          "--width", size])
        assert bad.exit_code == 2 and f"--width {size}: with --lllite" in bad.output
    from safetensors.torch import save_file

    embedding = tmp_path / "emb.safetensors"  # another kind of file: named in the error, exit 3
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, str(embedding))
    wrong = runner.invoke(gen_command, ["-p", "x", "--steps", "1", "-o", str(tmp_path / "out"), "-q",
                                        "--lllite", str(embedding), "--control", edge])
    assert wrong.exit_code == 3 and f"{embedding}: not a ControlNet-LLLite file" in wrong.output


def test_a_missing_control_image_is_reported_and_the_pairs_train(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    (folder / "edges" / "05.png").unlink()
    result = compile_recipe(recipe(folder), ("training.steps=2",))
    assert result.plan is not None, [d.message for d in result.diagnostics]
    shown = " ".join([*(d.message for d in result.diagnostics), *result.plan.get("warnings", [])])
    assert "05.png" in shown
    entry = result.plan["data"]["datasets"][0]
    assert (entry["control_pairs"], entry["control_missing"]) == (11, 1)
    done, _ = run_plan(result.plan, progress=False)
    assert done.lora_path.is_file()


def test_samples_use_their_control_images(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    plan = compiled(recipe(folder, 'sample "a circle" "a circle" control "edges/00.png" "edges/03.png" '
                                   "size 64 steps 2\n"), "training.steps=1")
    controls = plan["sample"]["controls"]
    assert [Path(c["path"]).name for c in controls] == ["00.png", "03.png"]
    assert all(len(c["sha256"]) == 64 for c in controls)
    done, _ = run_plan(plan, progress=False)
    first, second = (np.asarray(Image.open(path).convert("RGB")) for path in done.samples)
    assert not np.array_equal(first, second)  # one prompt, one seed: only the control images differ


def _codes(path: Path, *sets: str) -> list[str]:
    return [d.code for d in compile_recipe(path, sets).diagnostics]


def test_checks_need_control_and_matching_sample_controls(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    assert "SDX0580" in _codes(recipe(folder, control=""))
    assert "SDX0582" in _codes(recipe(folder, 'sample "a" "b" "c" control "edges/00.png" "edges/01.png"\n'))
    assert "SDX0582" in _codes(recipe(folder, 'sample control "edges/00.png" size 64\n'))  # no prompt
    assert "SDX0583" in _codes(recipe(folder, 'sample "a" control "edges/nope.png"\n'))
    assert "SDX0584" in _codes(recipe(folder, "block_lr 0, 1e-4 x21, 0\n"))
    crop = recipe(folder, "cache latents\n", control=' control "edges" random crop')
    assert "SDX0525" in _codes(crop)  # cached latents never see a new crop (its control image neither)
    flipped = recipe(folder, "cache latents\n", ' control "edges" flip')  # the pair flips together
    assert not {"SDX0525", "SDX0580"} & set(_codes(flipped))
    plan = compiled(recipe(folder))
    assert plan["method"] == {"kind": "lllite", "targets": ["unet"], "block_lr": None, "lr_te1": None,
                              "lr_te2": None, "cond_dim": COND, "mlp_dim": MLP, "dropout": 0.0}
    lora = folder / "lora.sdx"
    text = recipe(folder).read_text(encoding="utf-8")
    lora.write_text(text.replace(f"lllite cond_dim {COND} mlp_dim {MLP}", "lora rank 4"), encoding="utf-8")
    assert "SDX0581" in _codes(lora)


def test_a_missing_dataset_folder_is_not_also_a_missing_control(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    shutil.rmtree(folder / "images")
    codes = _codes(recipe(folder))
    assert "SDX0502" in codes and "SDX0580" not in codes  # the line has `control`; its folder is missing


def test_a_sample_control_image_that_does_not_decode_is_a_recipe_error(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    (folder / "cut.png").write_bytes((folder / "edges" / "00.png").read_bytes()[:80])  # header only
    (folder / "text.png").write_text("not an image", encoding="utf-8")
    for name in ("cut.png", "text.png", "edges"):  # else the run fails only at its first sample
        result = compile_recipe(recipe(folder, f'sample "a" control "{name}" size 64 steps 2\n'), ())
        assert [d.code for d in result.diagnostics if d.severity == "error"] == ["SDX0583"], name
    odd = recipe(folder, 'sample "a" control "edges/00.png" size 80 steps 2\n')  # failed after training
    assert "SDX0589" in _codes(odd)
    assert "SDX0589" not in _codes(recipe(folder, 'sample "a" control "edges/00.png" size 96 steps 2\n'))


def test_validation_keeps_the_control_images_of_held_out_pairs(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    shutil.copytree(folder / "images", folder / "val")
    assert "SDX0580" in _codes(recipe(folder, 'validate "val" every 1 steps\n'))  # a folder has no controls
    plan = compiled(recipe(folder, "validate every 1 steps split 2\n"), "training.steps=2")
    held = plan["validate"]["images"]
    assert len(held) == 2 and all(Path(image["control"]).parent == folder / "edges" for image in held)
    done, _ = run_plan(plan, progress=False)
    assert done.lora_path.is_file()


def test_adafactor_and_an_oversized_run_are_estimated_not_internal_errors(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    text = recipe(folder).read_text(encoding="utf-8").replace("lr 1e-2\n", "lr 1e-2 adafactor\n")
    (folder / "ada.sdx").write_text(text, encoding="utf-8")
    plan = compiled(folder / "ada.sdx")  # the factored state of an LLLite network: mlp_dim is its short side
    assert plan["estimate"]["vram_breakdown"]["optimizer_state"] > 0
    big = folder / "big.sdx"  # full-size SDXL on 8 GB: the "what would fit" levers are estimated too
    big.write_text('sdx 1\nmodel "org/some-sdxl"\nprofile rtx3070-8gb\ndata "images" control "edges"\n'
                   "resolution 1024\nlllite\n", encoding="utf-8")
    assert "SDX0610" in _codes(big)
    big.write_text(big.read_text(encoding="utf-8") + "fit auto\n", encoding="utf-8")
    assert compiled(big)["estimate"]["fits"]


def test_the_estimate_counts_the_network_as_exact_measures_it(tmp_path: Path) -> None:
    from runtime.exact.step import measure

    folder = dataset(tmp_path)
    small = compiled(recipe(folder))
    large = compiled(recipe(folder), "lllite.cond_dim=32", "lllite.mlp_dim=64")
    measured = [measure(plan)["breakdown"] for plan in (small, large)]
    for plan, seen in zip((small, large), measured, strict=True):
        estimate = plan["estimate"]["vram_breakdown"]
        assert estimate["trainable_params"] == seen["trainable_params"]  # the network's size, exactly
        assert estimate["optimizer_state"] == pytest.approx(seen["optimizer_state"], rel=0.01)  # + `step`s
    # what a wider network keeps for the backward pass: the activations the estimate adds for it
    added = measured[1]["activations"] - measured[0]["activations"]
    estimated = (large["estimate"]["vram_breakdown"]["activations"]
                 - small["estimate"]["vram_breakdown"]["activations"])
    assert added > 0 and estimated == pytest.approx(added, rel=0.15), (added, estimated)


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from runtime.train import checkpoint
    from runtime.train.run import execute

    folder = dataset(tmp_path)
    sets = ("training.steps=4", "save.every=2", "save.unit=steps", "save.keep=3", "data.0.flip=true")
    whole = compiled(recipe(folder), *sets)
    execute(whole, progress=False)
    saved = checkpoint.load_state(folder / "out" / "checkpoints" / "step-000002")
    assert saved.trainable and all(".lllite." in f".{key}" for key in saved.trainable)
    shutil.move(folder / "out", folder / "whole")
    resumed = compiled(recipe(folder), *sets)
    shutil.copytree(folder / "whole" / "checkpoints" / "step-000002",
                    folder / "out" / "checkpoints" / "step-000002")
    execute(resumed, progress=False, resume=checkpoint.find(folder / "out", "latest"))
    a = load_file(str(folder / "whole" / "r.safetensors"))
    b = load_file(str(folder / "out" / "r.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_kohya_export_names_the_lllite_script_and_the_control_folder(tmp_path: Path) -> None:
    from sdxlc.tools.kohya.export import export_files, script_for

    folder = dataset(tmp_path)
    plan = compiled(recipe(folder))
    files = export_files(plan, tmp_path / "kohya")
    assert script_for(plan) == "sdxl_train_control_net_lllite.py"
    assert f"cond_emb_dim = {COND}" in files["config.toml"] and f"network_dim = {MLP}" in files["config.toml"]
    assert f'conditioning_data_dir = "{folder / "edges"}"' in files["dataset.toml"]


def test_kohya_export_and_import_carry_the_sample_control_images(tmp_path: Path) -> None:
    from sdxlc.tools.kohya.convert import import_kohya
    from sdxlc.tools.kohya.export import export_files

    folder = dataset(tmp_path)
    plan = compiled(recipe(folder, 'sample "a" "b" control "edges/00.png" "edges/03.png" size 64 steps 2\n'))
    out = tmp_path / "kohya"
    out.mkdir()
    for name, text in export_files(plan, out).items():  # kohya's `--cn IMAGE` prompt option (was dropped)
        (out / name).write_text(text, encoding="utf-8")
    lines = (out / "prompts.txt").read_text(encoding="utf-8").splitlines()
    assert [line.rsplit(" --cn ", 1)[1] for line in lines] == [str(folder / "edges" / n) for n in ("00.png",
                                                                                                  "03.png")]
    text = import_kohya([out / "config.toml"], tmp_path).text
    assert f'control "{folder / "edges" / "00.png"}" "{folder / "edges" / "03.png"}"' in text
