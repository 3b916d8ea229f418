"""`sdxlc gen` on the tiny model: LoRAs with weights, embeddings, seeds, samplers, PNG metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from a1111_infotext import parse
from click.testing import CliRunner, Result
from PIL import Image
from safetensors.torch import save_file

from runtime.formats.safetensors_file import addnet_hash
from runtime.gen import generate as gen
from runtime.model.tiny import TE1_HIDDEN, TE2_HIDDEN, build_tiny_pipeline
from runtime.train.run import execute
from sdxlc.cli.gen import SAMPLERS, gen_command, parse_embedding, parse_lora

FAST = ["--model", "tiny", "--steps", "3", "--quiet"]


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(gen_command, [*FAST, *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def meta(path: Path) -> tuple[dict[str, str], dict[str, object]]:
    """The A1111 fields of the `parameters` chunk, and the `sdxlc` chunk's JSON."""
    with Image.open(path) as image:
        text = dict(image.text)
    assert "prompt" not in text  # ComfyUI's chunk name: left to ComfyUI
    return parse(text["parameters"]), json.loads(text["sdxlc"])


def one(folder: Path) -> Path:
    (file,) = sorted(folder.glob("*.png"))
    return file


@pytest.fixture(scope="module")
def lora_file(make_plan, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A LoRA trained on the quickstart images, saved by the runtime in kohya format."""
    out = tmp_path_factory.mktemp("gen-lora")
    plan = make_plan(out, training__total_steps=6, optimizer__lr=2e-2, sample__prompts=[])
    return execute(plan, progress=False).lora_path


def test_lora_weight_zero_is_the_base_model_and_one_is_not(lora_file: Path, tmp_path: Path) -> None:
    prompt = ["--prompt", "a red circle on a blue background", "--seed", "7"]
    invoke(*prompt, "--out", str(tmp_path / "base"))
    invoke(*prompt, "--lora", f"{lora_file}:0", "--out", str(tmp_path / "zero"))
    invoke(*prompt, "--lora", f"{lora_file}:1.0", "--out", str(tmp_path / "full"))
    base, zero, full = (pixels(one(tmp_path / name)) for name in ("base", "zero", "full"))
    np.testing.assert_allclose(zero, base, atol=1e-4)
    assert np.abs(full - base).mean() > 1e-3
    fields, parameters = meta(one(tmp_path / "full"))
    digest = addnet_hash(lora_file)[:12]
    assert parameters["loras"] == [{"file": lora_file.name, "weight": 1.0, "hash": digest}]
    assert fields["Prompt"] == "a red circle on a blue background <lora:tinylora:1>"
    assert fields["Lora hashes"] == f"tinylora: {digest}" and fields["Model"] == "tiny"
    assert parameters["prompt"] == "a red circle on a blue background"


def test_seeds_count_and_metadata(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red circle\n\na blue square\n", encoding="utf-8")
    out = tmp_path / "out"
    result = invoke("--prompts", str(prompts), "--seed", "5", "--count", "2", "--batch", "3", "--negative",
                    "blurry", "--sampler", "euler_a", "--cfg", "4.5", "--width", "64", "--height", "48",
                    "--out", str(out))
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00000-p00-s5.png", "00001-p00-s6.png", "00002-p01-s5.png",
                                       "00003-p01-s6.png"]
    assert result.output.split() == [str(f) for f in files]
    images = [pixels(f) for f in files]
    assert all(image.shape == (48, 64, 3) for image in images)
    assert all(np.abs(a - b).mean() > 1e-3 for i, a in enumerate(images) for b in images[i + 1:])
    expected = [("a red circle", 5), ("a red circle", 6), ("a blue square", 5), ("a blue square", 6)]
    for file, (prompt, seed) in zip(files, expected, strict=True):
        fields, parameters = meta(file)
        assert fields == {"Prompt": prompt, "Negative prompt": "blurry", "Steps": "3", "Sampler": "Euler a",
                          "CFG scale": "4.5", "Seed": str(seed), "Size": "64x48", "Model": "tiny"}
        assert parameters == {"seed": seed, "steps": 3, "cfg": 4.5, "sampler": "euler_a", "width": 64,
                              "height": 48, "model": "tiny", "vae": None, "loras": [], "embeddings": [],
                              "prompt": prompt, "negative": "blurry"}
    # the same seed gives the same image whatever the batch, and a rerun adds files instead of replacing
    invoke("--prompt", "a blue square", "--seed", "6", "--negative", "blurry", "--sampler", "euler_a",
           "--cfg", "4.5", "--width", "64", "--height", "48", "--out", str(out))
    rerun = out / "00004-p00-s6.png"
    assert np.abs(pixels(rerun) - images[3]).max() <= 2 / 255


def test_embedding_token_changes_the_output(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    vectors = {"clip_l": torch.randn(2, TE1_HIDDEN, generator=generator),
               "clip_g": torch.randn(2, TE2_HIDDEN, generator=generator)}
    save_file(vectors, str(tmp_path / "style.safetensors"))
    prompt = ["--prompt", "a photo in <style> style", "--seed", "1"]
    invoke(*prompt, "--out", str(tmp_path / "plain"))
    invoke(*prompt, "--embedding", f"{tmp_path / 'style.safetensors'}:<style>", "--out", str(tmp_path / "ti"))
    plain, styled = pixels(one(tmp_path / "plain")), pixels(one(tmp_path / "ti"))
    assert np.abs(plain - styled).mean() > 1e-3
    _, parameters = meta(one(tmp_path / "ti"))
    assert parameters["embeddings"] == [{"file": "style.safetensors", "token": "<style>"}]  # no local path

    pipe = build_tiny_pipeline(0)
    assert gen.load_embedding(pipe, tmp_path / "style.safetensors", "<style>") == 2
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        ids = tokenizer.convert_tokens_to_ids(["<style>", "<style>_1"])
        torch.testing.assert_close(encoder.get_input_embeddings().weight[ids].detach(), vectors[key])


def test_samplers(tmp_path: Path) -> None:
    assert set(SAMPLERS) == set(gen.SAMPLERS)
    request = gen.GenRequest(model="tiny", prompts=["a cat"], out=tmp_path, steps=3)
    pipe, _ = gen.prepare(request)
    outputs = {}
    for name in SAMPLERS:
        gen.set_sampler(pipe, name)
        assert isinstance(pipe.scheduler, gen.SAMPLERS[name][0])
        (file,) = gen.generate(gen.GenRequest(model="tiny", prompts=["a cat"], out=tmp_path / name, steps=3,
                                              sampler=name), pipe=pipe)
        outputs[name] = pixels(file)
        assert np.isfinite(outputs[name]).all()
    assert np.abs(outputs["euler"] - outputs["euler_a"]).mean() > 1e-4


def test_usage_and_load_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    no_prompt = runner.invoke(gen_command, ["--out", str(tmp_path)])
    assert no_prompt.exit_code == 2 and "no prompt" in no_prompt.output
    odd = runner.invoke(gen_command, ["-p", "x", "--width", "60"])
    assert odd.exit_code == 2 and "multiple of 8" in odd.output
    missing = runner.invoke(gen_command, ["-p", "x", "--lora", str(tmp_path / "none.safetensors:0.5")])
    assert missing.exit_code == 3 and "does not exist" in missing.output
    save_file({"clip_l": torch.zeros(1, 768)}, str(tmp_path / "sd15.safetensors"))
    wrong = runner.invoke(gen_command, [*FAST, "-p", "x", "--embedding", str(tmp_path / "sd15.safetensors")])
    assert wrong.exit_code == 3 and "clip_l and clip_g" in wrong.output


def test_an_empty_or_non_finite_embedding_and_a_non_finite_weight_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    files = {"empty.safetensors": {"clip_l": torch.zeros(0, TE1_HIDDEN),
                                   "clip_g": torch.zeros(0, TE2_HIDDEN)},
             "nan.safetensors": {"clip_l": torch.full((1, TE1_HIDDEN), float("nan")),
                                 "clip_g": torch.zeros(1, TE2_HIDDEN)}}
    for name, tensors in files.items():
        save_file(tensors, str(tmp_path / name))
        refused = runner.invoke(gen_command, [*FAST, "-p", "x", "--embedding", str(tmp_path / name),
                                              "--out", str(tmp_path / "out")])
        assert refused.exit_code == 3 and "embedding" in refused.output, refused.output
    nan = runner.invoke(gen_command, [*FAST, "-p", "x", "--lora", f"{tmp_path / 'a.safetensors'}:nan"])
    assert nan.exit_code == 2 and "not a finite number" in nan.output
    folder = runner.invoke(gen_command, [*FAST, "-p", "x", "--lora", str(tmp_path)])
    assert folder.exit_code == 3 and "is a folder" in folder.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_option_parsing() -> None:
    assert parse_lora("a/b.safetensors:0.8") == (Path("a/b.safetensors"), 0.8)
    assert parse_lora("a/b.safetensors") == (Path("a/b.safetensors"), 1.0)
    assert parse_lora("C:/x.safetensors") == (Path("C:/x.safetensors"), 1.0)
    assert parse_embedding("emb/sks.safetensors:<sks>") == (Path("emb/sks.safetensors"), "<sks>")
    assert parse_embedding("emb/sks.safetensors") == (Path("emb/sks.safetensors"), "sks")
    assert gen.model_spec("tiny")["kind"] == "tiny" and gen.model_spec("org/model")["kind"] == "hub"


def test_importing_the_command_does_not_import_torch() -> None:
    code = "import sys, sdxlc.cli.gen; print('torch' in sys.modules or 'runtime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(("tensors", "hint"), [
    ({"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 48)}, "a textual-inversion embedding: load"),
    ({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, "looks like a LoRA"),
])
def test_a_model_that_is_not_a_checkpoint_is_a_usage_error(tmp_path: Path, tensors: dict, hint: str) -> None:
    from sdxlc.cli.main import main

    save_file(tensors, tmp_path / "x.safetensors")
    result = CliRunner().invoke(main, ["gen", "--model", str(tmp_path / "x.safetensors"), "--prompt", "x",
                                       "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and hint in result.output, result.output


def test_a_folder_saved_in_fp16_generates_in_fp32_on_the_cpu(tmp_path: Path) -> None:
    """A fine-tune's fp16 diffusers folder: transformers keeps the encoders in fp16, diffusers loads the
    UNet in fp32; every component is cast to the run's dtype."""
    from runtime.model.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(0)
    for part in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        part.half()
    pipe.save_pretrained(tmp_path / "fp16")
    invoke("--model", str(tmp_path / "fp16"), "--prompt", "a red circle", "--out", str(tmp_path / "g"))
    assert len(list((tmp_path / "g").glob("*.png"))) == 1
