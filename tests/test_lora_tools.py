"""`sdxlc lora resize|merge|extract` on a LoRA trained on the tiny model (UNet attention, ff and conv
layers, both text encoders): kept norm, loading in diffusers, images against `sdxlc gen`, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from methods_common import LORA_TE, method_plan
from peft.tuners.lora import LoraLayer
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from runtime.formats.single_file import write_config
from runtime.gen import generate as gen
from runtime.model.tiny import build_tiny_pipeline
from runtime.tools.lora_modules import load_model
from runtime.tools.lora_resize import resize
from runtime.tools.lora_svd import read_lora
from runtime.train.run import execute
from sdxlc.cli.lora import lora_group
from sdxlc.plan.schemas import load_schema

RANK = 8
PROMPT = "a red circle on a blue background"


def invoke(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(lora_group, list(args))
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata() or {})


def deltas(path: Path) -> dict[str, torch.Tensor]:
    return {key: module.delta() for key, module in read_lora(path).modules.items()}


def image(tmp: Path, loras: list[tuple[Path, float]], pipe: object = None) -> np.ndarray:
    """The gen implementation's image (3 steps, seed 7) from the tiny model with these LoRAs."""
    request = gen.GenRequest(model="tiny", prompts=[PROMPT], out=tmp, steps=3, seed=7, loras=loras)
    (file,) = gen.generate(request, pipe=pipe)
    with Image.open(file) as png:
        return np.asarray(png.convert("RGB"), dtype=np.float32) / 255


def no_samples() -> dict[str, Any]:
    """The plan's `sample` section without prompts (and without the step-0 grid where plans have one)."""
    fields = load_schema("plan")["properties"]["sample"]["properties"]
    return {"prompts": [], **({"before": False} if "before" in fields else {})}


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA trained a few steps at a high learning rate."""
    out = tmp_path_factory.mktemp("lora-tools")
    plan = method_plan(out, {**LORA_TE, "rank": RANK, "alpha": RANK}, training__total_steps=6,
                       optimizer__lr=2e-2, sample=no_samples())
    return execute(plan, progress=False).lora_path


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's diffusers configs, for its single files."""
    return write_config(build_tiny_pipeline(0), tmp_path_factory.mktemp("tiny-config"))


@pytest.fixture(scope="module")
def merged(lora_file: Path, config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "merged.safetensors"
    result = invoke("merge", "--model", "tiny", "--lora", f"{lora_file}:1.0", "-o", str(out),
                    "--dtype", "fp32")
    assert "into tiny" in result.output
    return out


def test_resize_keeps_most_of_the_norm_and_loads_in_diffusers(lora_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "half.safetensors"
    done = resize(lora_file, out, RANK // 2)
    assert done.mean_kept >= 0.9 and done.overall_kept >= 0.9, (done.min_kept, done.mean_kept)
    before, after = deltas(lora_file), deltas(out)
    assert before.keys() == after.keys() and len(after) > 100
    for row in done.rows:  # the kept fraction is what the file holds: the top of the change
        assert row.new_rank == RANK // 2
        if row.norm == 0:  # a layer the few steps left untouched
            continue
        assert after[row.key].norm() / before[row.key].norm() == pytest.approx(row.kept_fro, rel=1e-3)
    info = meta(out)
    assert (info["ss_network_dim"], info["ss_network_alpha"]) == ("4", "4")  # alpha/rank kept (kohya)
    assert json.loads(info["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4"}
    note = json.loads(info["sdxlc_resize"])
    assert (note["from_rank"], note["to_rank"]) == ("8", "4")
    assert note["kept_fro_min"] == round(done.min_kept, 6)
    assert info["ss_training_comment"].startswith("dimension is resized from 8 to 4")
    assert info["ss_unet_lr"] == meta(lora_file)["ss_unet_lr"]  # the rest of the metadata is kept
    pipe = build_tiny_pipeline(0)
    pipe.load_lora_weights(str(out))
    layers = sum(isinstance(m, LoraLayer) for part in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
                 for m in part.modules())
    assert layers == len(after)  # every module of the file found its layer
    full = resize(lora_file, tmp_path / "full.safetensors", RANK, alpha=1.0)  # all singular values kept
    assert full.min_kept == pytest.approx(1.0) and meta(full.path)["ss_network_alpha"] == "1"
    for key, value in deltas(full.path).items():
        torch.testing.assert_close(value, before[key], atol=1e-5, rtol=1e-4)


def test_dynamic_resize_and_the_printed_table(lora_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "dyn.safetensors"
    result = invoke("resize", str(lora_file), "-o", str(out), "--dynamic", "fro", "0.9")
    rows = [line.split() for line in result.output.splitlines() if line.startswith("lora_")]
    assert len(rows) == len(read_lora(lora_file).modules)
    assert all(float(row[-1]) >= 0.9 for row in rows)
    ranks = {module.rank for module in read_lora(out).modules.values()}
    assert max(ranks) <= RANK and min(ranks) < RANK and meta(out)["ss_network_dim"] == "Dynamic"
    assert "kept Frobenius norm over" in result.output and f"wrote {out}" in result.output
    capped = resize(lora_file, tmp_path / "cap.safetensors", 2, dynamic=("sv_ratio", 1000.0))
    assert {row.new_rank for row in capped.rows if row.norm > 0} == {2}  # empty modules: rank 1 (kohya)


def test_merge_into_the_model_gives_the_image_of_gen_with_the_lora(
    lora_file: Path, merged: Path, config_dir: Path, tmp_path: Path
) -> None:
    with_lora = image(tmp_path / "gen", [(lora_file, 1.0)])
    pipe = load_model(str(merged), config_dir)
    gen.set_sampler(pipe, "euler")
    baked = image(tmp_path / "merged", [], pipe)
    base = image(tmp_path / "base", [])
    assert np.abs(with_lora - base).mean() > 1e-3  # the LoRA changes the image
    assert np.abs(baked - with_lora).max() <= 2 / 255, np.abs(baked - with_lora).max()
    info = meta(merged)
    assert json.loads(info["sdxlc_merged_loras"])[0]["file"] == lora_file.name
    assert info["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_extract_from_the_merged_model_recovers_the_lora(
    lora_file: Path, merged: Path, config_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "extracted.safetensors"
    result = invoke("extract", "--base", "tiny", "--tuned", str(merged), "--config", str(config_dir),
                    "--rank", str(RANK), "--te", "-o", str(out))
    assert f"wrote {out}" in result.output
    original, found = deltas(lora_file), deltas(out)
    changed = {key for key, value in original.items() if value.norm() > 0}  # te1's last layer: untouched
    assert found.keys() == changed and len(changed) > 100  # the same modules, under the writer's keys
    for key, value in found.items():
        torch.testing.assert_close(value, original[key], atol=2e-5, rtol=1e-3)
    info = meta(out)
    assert (info["ss_network_dim"], info["ss_network_alpha"]) == ("8", "8")
    assert info["ss_network_train_unet_only"] == "False"
    assert json.loads(info["sdxlc_extract"]) == {"base": "tiny", "tuned": "merged.safetensors", "rank": 8}
    recovered = image(tmp_path / "extracted", [(out, 1.0)])
    assert np.abs(recovered - image(tmp_path / "original", [(lora_file, 1.0)])).max() <= 2 / 255


def test_merge_loras_into_one(lora_file: Path, tmp_path: Path) -> None:
    half = resize(lora_file, tmp_path / "half.safetensors", RANK // 2).path
    first, second = deltas(lora_file), deltas(half)
    joined = tmp_path / "joined.safetensors"
    invoke("merge", "--lora", f"{lora_file}:0.8", "--lora", f"{half}:-0.5", "-o", str(joined))
    assert {m.rank for m in read_lora(joined).modules.values()} == {RANK + RANK // 2}
    for key, value in deltas(joined).items():
        torch.testing.assert_close(value, 0.8 * first[key] - 0.5 * second[key], atol=1e-5, rtol=1e-4)
    svd = tmp_path / "svd.safetensors"
    result = invoke("merge", "--lora", f"{lora_file}:0.5", "--lora", f"{lora_file}:0.5", "--rank", str(RANK),
                    "-o", str(svd))
    assert "min 1.0000" in result.output  # the sum has the rank of one file: nothing is lost
    for key, value in deltas(svd).items():
        torch.testing.assert_close(value, first[key], atol=1e-5, rtol=1e-4)
    assert meta(svd)["ss_network_dim"] == str(RANK)


def test_bad_input_is_a_clear_usage_error(lora_file: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o.safetensors")
    missing = invoke("resize", str(tmp_path / "none.safetensors"), "-o", out, "--rank", "2", code=2)
    assert "no such LoRA file" in missing.output
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 48)}, tmp_path / "emb.safetensors")
    not_lora = invoke("resize", str(tmp_path / "emb.safetensors"), "-o", out, "--rank", "2", code=2)
    assert "is not a LoRA" in not_lora.output
    assert "above the rank" in invoke("resize", str(lora_file), "-o", out, "--rank", "64", code=2).output
    assert "--rank N" in invoke("resize", str(lora_file), "-o", out, code=2).output
    invoke("resize", str(lora_file), "-o", out, "--rank", "0", code=2)
    assert "fraction" in invoke("resize", str(lora_file), "-o", out, "--dynamic", "fro", "1.5", code=2).output
    assert "is an input" in invoke("resize", str(lora_file), "-o", str(lora_file), "--rank", "2",
                                   code=2).output
    tensors = read_lora_tensors(lora_file)
    save_file({**tensors, "lora_unet_x.dora_scale": torch.ones(1)}, tmp_path / "dora.safetensors")
    dora = invoke("resize", str(tmp_path / "dora.safetensors"), "-o", out, "--rank", "2", code=2)
    assert "not plain LoRA weights (lora_unet_x.dora_scale)" in dora.output
    key = next(k for k in tensors if k.endswith("attn1_to_q.lora_down.weight"))
    tensors[key] = torch.zeros(RANK, 7)  # a LoRA of a model of another width
    save_file(tensors, tmp_path / "wide.safetensors")
    wrong = invoke("merge", "--model", "tiny", "--lora", str(tmp_path / "wide.safetensors"), "-o", out,
                   code=2)
    assert "a LoRA of another model" in wrong.output
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(64, 4)},
              tmp_path / "sd15.safetensors")
    other = invoke("merge", "--model", "tiny", "--lora", str(tmp_path / "sd15.safetensors"), "-o", out,
                   code=2)
    assert "no layer in the model" in other.output
    assert "--rank sets" in invoke("merge", "--model", "tiny", "--lora", str(lora_file), "--rank", "2", "-o",
                                   out, code=2).output
    same = invoke("extract", "--base", "tiny", "--tuned", "tiny", "--rank", "4", "-o", out, code=2)
    assert "nothing to extract" in same.output
    assert not Path(out).exists()  # nothing was written by a refusal


def read_lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def test_a_refused_rank_change_names_the_resize_command() -> None:
    from test_resume_policy import _plan

    from sdxlc.tools.resume import judge

    artifact = Path("out/q.safetensors")
    text = judge(_plan("lora.rank=8"), _plan("lora.rank=2")).explain(artifact)
    assert 'sdxlc lora resize "out/q.safetensors" -o "out/q-rank2.safetensors" --rank 2' in text
    assert "resize" not in judge(_plan("lora.rank=2"), _plan("lora.rank=8")).explain(artifact)


def test_a_lower_rank_than_the_lora_file_names_the_resize_command(tmp_path: Path) -> None:
    from test_methods_compile import codes, compile_text, kohya_file

    kohya_file(tmp_path / "old.safetensors", ["lora_unet_middle_block_1_transformer_blocks_0_attn1_to_k"])
    compiled = compile_text(tmp_path, 'lora from "old.safetensors" rank 2\n')
    assert codes(compiled) == ["SDX0572"]
    assert "sdxlc lora resize FILE -o SMALLER.safetensors --rank 2" in (compiled.diagnostics[-1].help or "")


def test_non_finite_or_misshapen_files_and_values_are_usage_errors(tmp_path: Path) -> None:
    key = "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_k"
    good = {f"{key}.lora_down.weight": torch.ones(2, 8), f"{key}.lora_up.weight": torch.ones(8, 2),
            f"{key}.alpha": torch.tensor(2.0)}
    lora, out = tmp_path / "good.safetensors", str(tmp_path / "o.safetensors")
    save_file(good, lora)
    bad = {"nan.safetensors": {**good, f"{key}.alpha": torch.tensor(float("nan"))},
           "inf.safetensors": {**good, f"{key}.lora_down.weight": torch.full((2, 8), float("inf"))},
           "flat.safetensors": {**good, f"{key}.lora_down.weight": torch.ones(16),
                                f"{key}.lora_up.weight": torch.ones(16)},
           "alphas.safetensors": {**good, f"{key}.alpha": torch.ones(3)}}
    for name, tensors in bad.items():
        save_file(tensors, tmp_path / name)
        invoke("resize", str(tmp_path / name), "-o", out, "--rank", "1", code=2)
    assert "finite" in invoke("resize", str(lora), "-o", out, "--alpha", "nan", "--rank", "1", code=2).output
    assert "finite" in invoke("resize", str(lora), "-o", out, "--dynamic", "fro", "nan", code=2).output
    assert "finite" in invoke("merge", "--lora", f"{lora}:nan", "-o", out, code=2).output
    assert "finite" in invoke("merge", "--lora", f"{lora}:inf", "-o", out, code=2).output
    assert not Path(out).exists()
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}", encoding="utf-8")
    index = model / "model_index.json"
    inside = invoke("merge", "--model", str(model), "--lora", str(lora), "-o", str(index), code=2)
    assert "inside it" in inside.output and index.read_text(encoding="utf-8") == "{}"
    into = str(model / "x.safetensors")
    invoke("extract", "--base", str(model), "--tuned", "tiny", "--rank", "1", "-o", into, code=2)
