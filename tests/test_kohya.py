"""`sdxlc import kohya` and `sdxlc export kohya`: kohya-ss/sd-scripts configs (dataset TOML, training TOML,
kohya_ss GUI JSON, a saved command line) become recipes whose plans carry kohya's settings, and back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from sdxlc.cli.main import main
from sdxlc.lang.fmt import format_recipe
from sdxlc.pipeline import compile_recipe
from sdxlc.tools.kohya.convert import Imported, import_kohya
from sdxlc.tools.kohya.export import export_files
from sdxlc.tools.kohya.read import tomllib

MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
PROFILE = "a100-80gb"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """kohya's DreamBooth layout: `img/10_sks dog/` with captions, `reg/1_dog/` without."""
    for folder, size in (("img/10_sks dog", (96, 64)), ("reg/1_dog", (64, 96))):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", size, (i * 90, 40, 0)).save(tmp_path / folder / f"{i}.png")
            if folder.startswith("img"):
                (tmp_path / folder / f"{i}.txt").write_text(f"sks dog, photo {i}", encoding="utf-8")
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _plan(imported: Imported, folder: Path, name: str = "imported.sdx") -> dict[str, Any]:
    assert imported.text == format_recipe(imported.text, name)  # canonical layout
    recipe = _write(folder / name, imported.text)
    compiled = compile_recipe(recipe, (), PROFILE)
    assert not compiled.errors, [d.message for d in compiled.errors]
    assert compiled.plan is not None
    return compiled.plan


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


DATASET_TOML = """\
[general]
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = [1024, 1024]
batch_size = 2
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 2048
bucket_reso_steps = 64
bucket_no_upscale = true

  [[datasets.subsets]]
  image_dir = "{root}/img/10_sks dog"
  num_repeats = 10
  class_tokens = "sks dog"
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "{root}/reg/1_dog"
  class_tokens = "dog"
  is_reg = true
"""

TRAINING_TOML = """\
[model_arguments]
pretrained_model_name_or_path = "{model}"

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 16
network_alpha = 8.0
network_train_unet_only = true

[optimizer_arguments]
optimizer_type = "AdamW8bit"
learning_rate = 1e-4
optimizer_args = ["weight_decay=0.05", "betas=(0.9,0.99)"]
lr_scheduler = "cosine"
lr_warmup_steps = 20
max_grad_norm = 0.5

[training_arguments]
max_train_steps = 300
seed = 1234
mixed_precision = "bf16"
save_precision = "fp16"
gradient_checkpointing = true
cache_latents = true
cache_text_encoder_outputs = true
noise_offset = 0.0357
min_snr_gamma = 5.0
prior_loss_weight = 0.5
save_every_n_steps = 100
output_dir = "{root}/out"
output_name = "dog"
logging_dir = "{root}/logs"
xformers = true
"""


def test_dataset_and_training_toml_give_kohyas_settings(images: Path) -> None:
    dataset = _write(images / "dataset.toml", DATASET_TOML.format(root=images))
    training = _write(images / "train.toml", TRAINING_TOML.format(root=images, model=MODEL))
    imported = import_kohya([dataset, training], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    plan = _plan(imported, images)
    method, optimizer, training_ = plan["method"], plan["optimizer"], plan["training"]
    assert (method["kind"], method["rank"], method["alpha"], method["targets"]) == ("lora", 16, 8.0, ["unet"])
    assert method["modules"] == ["kohya"]  # kohya's default network: attention, ff, proj_in/proj_out
    assert (optimizer["name"], optimizer["lr"], optimizer["max_grad_norm"]) == ("adamw8bit", 1e-4, 0.5)
    assert optimizer["args"] == {"weight_decay": 0.05, "betas": [0.9, 0.99]}
    assert plan["schedule"] == {"name": "cosine", "warmup_steps": 20}
    assert (training_["total_steps"], training_["batch_size"], training_["seed"]) == (300, 2, 1234)
    assert (training_["noise_offset"], training_["snr_gamma"], training_["gradient_checkpointing"]) == (
        0.0357, 5.0, True)
    assert plan["precision"]["mixed"] == "bf16" and plan["save"]["dtype"] == "fp16"
    assert plan["data"]["cache"]["latents"] and plan["data"]["cache"]["text_encoder"]
    train, reg = plan["data"]["datasets"]
    assert (train["repeat"], train["samples"], train["caption_ext"]) == (10, 20, ".txt")
    assert train["keep_tokens"] == 1
    assert (train["flip"], train["default_caption"]) == (True, "sks dog")
    assert (reg["regularization"], reg["loss_weight"], reg["default_caption"]) == (True, 0.5, "dog")
    assert plan["data"]["resolution"] == 1024
    buckets = plan["data"]["buckets"]
    assert (buckets["enabled"], buckets["min"], buckets["max"], buckets["step"], buckets["no_upscale"]) == (
        True, 256, 2048, 64, True)
    assert plan["save"]["every_steps"] == 100
    assert plan["output"] == {"dir": str(images / "out"), "name": "dog"}
    assert "# not mapped: --xformers=true" in imported.text  # speed only: a comment, not an error
    assert 'data "img/10_sks dog"' in imported.text  # paths relative to the recipe


GUI = {
    "LoRA_type": "Kohya LoCon", "adaptive_noise_scale": 0, "bucket_no_upscale": False,
    "bucket_reso_steps": 64,
    "cache_latents": True, "cache_latents_to_disk": False, "caption_dropout_rate": 0.1,
    "caption_extension": ".txt", "clip_skip": "1", "color_aug": False, "conv_alpha": 16, "conv_dim": 32,
    "enable_bucket": True, "epoch": 3, "flip_aug": False, "full_fp16": False,
    "gradient_accumulation_steps": 2,
    "gradient_checkpointing": True, "keep_tokens": "0", "learning_rate": "0.0002", "lr_scheduler": "linear",
    "lr_scheduler_num_cycles": "", "lr_warmup": 10, "max_bucket_reso": 2048, "max_resolution": "1024,1024",
    "max_timestep": 900, "max_token_length": "75", "max_train_epochs": "", "max_train_steps": "",
    "min_bucket_reso": 256, "min_snr_gamma": 0, "min_timestep": 100, "mixed_precision": "fp16",
    "multires_noise_discount": 0.2, "multires_noise_iterations": 6, "network_alpha": 16, "network_dim": 32,
    "noise_offset": 0.05, "noise_offset_type": "Multires", "num_cpu_threads_per_process": 2,
    "optimizer": "Lion", "optimizer_args": "weight_decay=0.1", "output_dir": "out", "output_name": "gui_lora",
    "pretrained_model_name_or_path": MODEL, "reg_data_dir": "", "save_every_n_epochs": 1,
    "save_every_n_steps": 0, "save_precision": "bf16", "sdxl": True, "sdxl_no_half_vae": True,
    "seed": "0", "shuffle_caption": False, "text_encoder_lr": 0, "train_batch_size": 1,
    "train_data_dir": "img", "unet_lr": 0.0001, "v2": False, "v_parameterization": False, "xformers": "sdpa",
    "wandb_api_key": "secret-key-123", "use_wandb": True,
}


def test_gui_json_reads_like_the_gui_builds_its_command(images: Path) -> None:
    gui = _write(images / "gui.json", json.dumps(GUI, indent=2))
    imported = import_kohya([gui], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    assert "secret-key-123" not in imported.text
    plan = _plan(imported, images)
    method = plan["method"]
    assert (method["rank"], method["alpha"], method["targets"]) == (32, 16.0, ["unet"])  # text_encoder_lr 0
    assert method["modules"] == ["kohya", "conv", "emb"]  # Kohya LoCon, conv_dim/alpha as the LoRA's
    assert (plan["optimizer"]["name"], plan["optimizer"]["lr"]) == ("lion", 1e-4)  # unet_lr wins
    assert plan["optimizer"]["args"]["weight_decay"] == 0.1
    training = plan["training"]
    assert (training["batch_size"], training["accumulate"], training["epochs"]) == (1, 2, 3)
    assert plan["schedule"]["name"] == "linear"
    assert plan["schedule"]["warmup_steps"] == round(training["total_steps"] * 0.1)  # lr_warmup is a %
    assert (training["multires_iterations"], training["multires_discount"]) == (6, 0.2)
    assert training["noise_offset"] == 0.0  # the Multires noise type drops the offset, as the GUI does
    assert (training["timestep_min"], training["timestep_max"]) == (100, 900)
    assert training["seed"] == 42  # seed 0 is kohya's "random"; sdxlc's own seed, with a remark
    assert "random seed" in imported.text
    assert plan["precision"] == {"mixed": "fp16", "vae_fp32": True, "vae_slicing": False, "base_fp8": False,
                                 "offload_text_encoders": False, "offload_vae": False}
    assert plan["save"] == {**plan["save"], "dtype": "bf16"}
    assert plan["data"]["datasets"][0]["samples"] == 20  # repeats from the `10_sks dog` folder
    assert plan["data"]["datasets"][0]["caption_dropout"] == 0.1
    assert plan["output"]["name"] == "gui_lora"


COMMAND = """\
#!/bin/sh
accelerate launch --num_cpu_threads_per_process 1 --mixed_precision bf16 sdxl_train_network.py \\
  --pretrained_model_name_or_path="{model}" \\
  --train_data_dir="{root}/img" --reg_data_dir "{root}/reg" --prior_loss_weight=0.25 \\
  --caption_extension .txt --resolution 1024 --enable_bucket --bucket_reso_steps=64 \\
  --network_module networks.lora --network_dim 8 --network_alpha 8 \\
  --network_args "conv_dim=8" "conv_alpha=8" \\
  --learning_rate 1e-4 --text_encoder_lr 5e-5 2e-5 \\
  --optimizer_type Prodigy --optimizer_args "d_coef=0.5" "use_bias_correction=True" \\
  --lr_scheduler cosine_with_restarts --lr_warmup_steps 0.1 \\
  --max_train_epochs 2 --train_batch_size 2 --seed 7 --save_precision float \\
  --min_snr_gamma 5 --ip_noise_gamma 0.1 --loss_type huber --huber_schedule constant --huber_c 0.2 \\
  --debiased_estimation_loss --v_parameterization --zero_terminal_snr \\
  --sample_prompts "{root}/prompts.txt" --sample_every_n_steps 5 \\
  --output_dir "{root}/out" --output_name cmd --sdpa
"""


def test_a_saved_command_line_with_continuations(images: Path) -> None:
    prompts = "a photo of sks dog --w 1024 --h 1024 --s 20\n# a note\nsks dog at the beach\n"
    _write(images / "prompts.txt", prompts)
    command = _write(images / "train.sh", COMMAND.format(root=images, model=MODEL))
    imported = import_kohya([command], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    plan = _plan(imported, images)
    method = plan["method"]
    assert (method["rank"], method["targets"], method["modules"]) == (8, ["unet", "te1", "te2"],
                                                                     ["kohya", "conv", "emb"])
    assert (method["lr_te1"], method["lr_te2"]) == (5e-5, 2e-5)
    assert plan["optimizer"]["name"] == "prodigy" and plan["optimizer"]["lr"] == 1e-4
    assert plan["optimizer"]["args"]["d_coef"] == 0.5 and plan["optimizer"]["args"]["use_bias_correction"]
    assert plan["schedule"]["name"] == "cosine_with_restarts"
    assert plan["precision"]["mixed"] == "bf16"  # accelerate's --mixed_precision
    training = plan["training"]
    assert (training["epochs"], training["batch_size"], training["seed"]) == (2, 2, 7)
    assert plan["schedule"]["warmup_steps"] == round(training["total_steps"] * 0.1)
    assert (training["loss"], training["huber_c"], training["debiased"]) == ("huber", 0.2, True)
    assert (training["input_perturbation"], training["zero_terminal_snr"]) == (0.1, True)
    assert plan["model"]["prediction"] == "v_prediction"
    assert plan["save"]["dtype"] == "fp32"
    assert plan["sample"]["prompts"] == ["a photo of sks dog", "sks dog at the beach"]
    assert plan["sample"]["every_steps"] == 5
    reg = plan["data"]["datasets"][1]
    assert (reg["regularization"], reg["loss_weight"]) == (True, 0.25)
    assert plan["data"]["buckets"]["enabled"] and plan["data"]["buckets"]["max"] == 1024  # kohya's default


def test_kohya_defaults_are_written_out(images: Path) -> None:
    """What sd-scripts does when a setting is absent: no buckets, alpha 1, rank 4, lr 2e-6, fp32, both
    text encoders, `.caption` files, 1600 steps."""
    command = _write(images / "cmd.txt", f"python sdxl_train_network.py --pretrained_model_name_or_path "
                     f"{MODEL} --train_data_dir {images}/img --resolution 1024 --output_dir {images}/out")
    plan = _plan(import_kohya([command], images), images)
    assert plan["data"]["buckets"]["enabled"] is False
    assert (plan["method"]["rank"], plan["method"]["alpha"]) == (4, 1.0)
    assert plan["method"]["targets"] == ["unet", "te1", "te2"]
    assert (plan["optimizer"]["name"], plan["optimizer"]["lr"]) == ("adamw", 2e-6)
    assert plan["precision"]["mixed"] == "fp32" and plan["save"]["dtype"] == "fp32"
    assert plan["data"]["datasets"][0]["caption_ext"] == ".caption"
    assert plan["training"]["total_steps"] == 1600


def test_settings_that_change_training_are_commented_and_exit_1(images: Path) -> None:
    gui = dict(GUI, optimizer="DAdaptAdam", max_token_length=225, conv_dim=8,
               train_data_dir=str(images / "img"))
    path = _write(images / "gui.json", json.dumps(gui))
    code, out, err = _cli("import", "kohya", str(path))
    assert code == 1
    assert "# not mapped: --optimizer_type=DAdaptAdam" in out
    assert "# not mapped: --network_args=conv_dim=8 conv_alpha=16" in out
    assert "# not mapped: --max_token_length=225" in out
    assert "warning: not mapped: --optimizer_type=DAdaptAdam" in err
    lycoris = _write(images / "loha.json", json.dumps(dict(GUI, LoRA_type="LyCORIS/LoHa")))
    code, out, _ = _cli("import", "kohya", str(lycoris))
    assert code == 1 and "# not mapped: --network_module=lycoris.kohya (LyCORIS/LoHa)" in out


def test_output_file_is_written_once_unless_forced(images: Path) -> None:
    dataset = _write(images / "dataset.toml", DATASET_TOML.format(root=images))
    training = _write(images / "train.toml", TRAINING_TOML.format(root=images, model=MODEL))
    out = images / "recipe.sdx"
    assert _cli("import", "kohya", str(dataset), str(training), "-o", str(out))[0] == 0
    first = out.read_text(encoding="utf-8")
    code, _, err = _cli("import", "kohya", str(training), "-o", str(out))
    assert code == 2 and "--force" in err and out.read_text(encoding="utf-8") == first
    assert _cli("import", "kohya", str(dataset), str(training), "-o", str(out), "--force")[0] == 0


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.toml", "[general]\nshuffle_caption = \n", "bad.toml: not valid TOML: Invalid value (at line 2"),
    ("bad.json", '{"network_dim": 16,\n "seed": 1,,\n}', "bad.json:2:12: not valid JSON"),
    ("list.json", "[1, 2]", "a kohya config is a JSON object"),
    ("empty.sh", "# nothing here\n", "no kohya command found"),
    ("dim.toml", 'network_dim = "sixteen"\n', "network_dim = 'sixteen' must be a number"),
    ("repeats.toml", '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\nnum_repeats = 1.5\n',
     "num_repeats = 1.5 must be a whole number"),
])
def test_malformed_files_are_usage_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    code, _, err = _cli("import", "kohya", str(_write(tmp_path / name, text)))
    assert code == 2 and message in err, err


def test_the_output_never_replaces_an_input_or_a_special_file(tmp_path: Path) -> None:
    training = _write(tmp_path / "train.toml", "network_dim = 16\n")
    code, _, err = _cli("import", "kohya", str(training), "-o", str(training), "--force")
    assert code == 2 and "is an input" in err and training.read_text(encoding="utf-8") == "network_dim = 16\n"
    code, _, err = _cli("import", "kohya", str(training), "-o", "/dev/null", "--force")
    assert code == 2 and "not a regular file" in err
    recipe = _write(tmp_path / "prompts.txt", "sdx 1\nmodel tiny\n")
    code, _, err = _cli("export", "kohya", str(recipe), "-o", str(tmp_path), "--force")
    assert code == 2 and "would replace the recipe" in err
    assert recipe.read_text(encoding="utf-8") == "sdx 1\nmodel tiny\n"


def test_deeply_nested_or_very_long_files_are_handled(tmp_path: Path) -> None:
    import time

    deep = _write(tmp_path / "deep.json", '{"a":' * 100_000 + "1" + "}" * 100_000)
    code, _, err = _cli("import", "kohya", str(deep))
    assert code == 2 and "nested too deeply" in err, err
    deep_toml = _write(tmp_path / "deep.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert _cli("import", "kohya", str(deep_toml))[0] == 2
    flags = " ".join(f"--unknown_{i}={i}" for i in range(30_000))  # one note each: linear, not quadratic
    command = _write(tmp_path / "train.sh", f"python sdxl_train_network.py {flags}\n")
    start = time.perf_counter()
    code, out, _ = _cli("import", "kohya", str(command))
    assert code == 1 and "--unknown_29999=29999" in out and time.perf_counter() - start < 30


def test_a_dataset_config_that_is_not_a_dataset_toml_is_a_usage_error(tmp_path: Path) -> None:
    training = _write(tmp_path / "train.toml", 'dataset_config = "train.toml"\n')
    code, _, err = _cli("import", "kohya", str(training))
    assert code == 2 and "which has no [[datasets]]" in err, err


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = _cli("import", "kohya", str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml: no such file" in err


ROUND_TRIP = """\
sdx 1
model "{model}"
data "img" caption .txt shuffle keep 1 flip
data "reg" as regularization loss weight 0.5
resolution 1024 buckets 256..2048 step 64 no upscale
lora rank 16 alpha 8 on unet modules kohya+conv+emb
optimizer adamw8bit lr 2e-4 args weight_decay=0.02 betas=0.9,0.99
schedule cosine warmup 10
batch 2 accumulate 2
steps 120
seed 3
bf16 checkpointing cache latents
noise offset 0.05 snr gamma 5 multires 4 discount 0.25 timesteps 50..950
loss huber c 0.3
save every 40 steps keep 2 bf16
output "out"
name "trip"
"""
MAPPED = ("method", "optimizer", "schedule", "precision")
MAPPED_TRAINING = ("batch_size", "accumulate", "total_steps", "seed", "gradient_checkpointing",
                   "noise_offset", "snr_gamma", "multires_iterations", "multires_discount", "timestep_min",
                   "timestep_max", "loss", "huber_c", "effective_batch", "epochs")


def test_export_then_import_gives_the_same_plan(images: Path) -> None:
    recipe = _write(images / "trip.sdx", ROUND_TRIP.format(model=MODEL))
    compiled = compile_recipe(recipe, (), PROFILE)
    assert compiled.plan is not None, [d.message for d in compiled.errors]
    first = compiled.plan
    folder = images / "kohya"
    code, _, err = _cli("export", "kohya", str(recipe), "-o", str(folder), "--profile", PROFILE)
    assert code == 0, err
    assert "sdxl_train_network.py --config_file" in err
    assert export_files(first, folder)["config.toml"] == (folder / "config.toml").read_text(encoding="utf-8")
    again = _plan(import_kohya([folder / "config.toml"], images), images, "again.sdx")  # finds dataset.toml
    for section in MAPPED:
        assert again[section] == first[section], section
    for key in MAPPED_TRAINING:
        assert again["training"][key] == first["training"][key], key
    for key in ("resolution", "buckets", "cache", "images", "samples_per_epoch"):
        assert again["data"][key] == first["data"][key], key
    for new, old in zip(again["data"]["datasets"], first["data"]["datasets"], strict=True):
        for key in ("samples", "caption_ext", "shuffle", "keep_tokens", "flip", "regularization",
                    "loss_weight"):
            assert new[key] == old[key], key
    assert (again["save"]["every_steps"], again["save"]["keep"], again["save"]["dtype"]) == (40, 2, "bf16")
    assert again["output"] == first["output"]
    code, _, err = _cli("export", "kohya", str(recipe), "-o", str(folder), "--profile", PROFILE)
    assert code == 2 and "--force" in err


def test_export_names_what_kohya_lacks(images: Path) -> None:
    text = ROUND_TRIP.format(model=MODEL).replace(" modules kohya+conv+emb", "")
    recipe = _write(images / "att.sdx", text)
    compiled = compile_recipe(recipe, (), PROFILE)
    assert compiled.plan is not None
    config = export_files(compiled.plan, images / "k")["config.toml"]
    assert "# kohya has no LoRA on attention layers alone" in config


def test_fine_tune_and_textual_inversion_scripts(images: Path) -> None:
    blocks = ",".join(["0"] + ["1e-05"] * 22)
    common = f"--pretrained_model_name_or_path {MODEL} --train_data_dir {images}/img --resolution 1024"
    finetune = _write(images / "ft.sh", " ".join([
        "accelerate launch sdxl_train.py", common, "--caption_extension .txt --train_text_encoder",
        "--learning_rate 1e-5 --learning_rate_te1 5e-6 --learning_rate_te2 2e-6 --optimizer_type AdaFactor",
        '--optimizer_args "relative_step=False" "scale_parameter=False" "warmup_init=False"',
        f"--max_grad_norm 0 --full_bf16 --mixed_precision bf16 --block_lr {blocks}"]))
    imported = import_kohya([finetune], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    method = _plan(imported, images, "ft.sdx")["method"]
    assert (method["kind"], method["targets"], method["lr_te1"], method["lr_te2"], method["full_bf16"]) == (
        "finetune", ["unet", "te1", "te2"], 5e-6, 2e-6, True)
    assert method["block_lr"] == [0.0] + [1e-5] * 22
    embedding = _write(images / "ti.sh", " ".join([
        "accelerate launch sdxl_train_textual_inversion.py", common, "--token_string sksdog --init_word dog",
        "--num_vectors_per_token 4 --use_object_template --learning_rate 5e-3"]))
    plan = _plan(import_kohya([embedding], images), images, "ti.sdx")
    method = plan["method"]
    assert (method["kind"], method["token"], method["init"], method["vectors"], method["template"]) == (
        "embedding", "sksdog", "dog", 4, "object")
    assert plan["optimizer"]["lr"] == 5e-3


def test_explain_names_the_recipe_word_of_a_kohya_setting() -> None:
    from sdxlc.tools.explain import explain, topics
    from sdxlc.tools.kohya.table import WORDS

    assert "`lora rank N`" in (explain("kohya:network_dim") or "")
    assert "`lora rank N`" in (explain("kohya:--network-dim") or "")
    assert "no recipe word" in (explain("kohya:full_fp16") or "")
    assert "--network_alpha" in (explain("kohya") or "")
    assert "kohya:network_dim" in topics()
    assert explain("network_dim") is None  # recipe topics stay free of kohya names
    docs = (Path(__file__).resolve().parents[1] / "docs" / "KOHYA.md").read_text(encoding="utf-8")
    assert [key for key in WORDS if f"`{key}`" not in docs] == []  # the docs' table names every setting


def test_a_command_lines_config_file_is_read_under_its_flags(images: Path) -> None:
    dataset = _write(images / "dataset.toml", DATASET_TOML.format(root=images))
    _write(images / "train.toml", TRAINING_TOML.format(root=images, model=MODEL).replace(
        "cache_text_encoder_outputs = true\n", "") + f'dataset_config = "{dataset}"\n')
    command = _write(images / "run.sh", "accelerate launch sdxl_train_network.py --config_file train "
                     "--network_dim 32 --learning_rate=3e-4 --unet_lr 3e-4\n")
    plan = _plan(import_kohya([command], images), images)
    assert (plan["method"]["rank"], plan["method"]["alpha"], plan["optimizer"]["lr"]) == (32, 8.0, 3e-4)
    assert plan["training"]["total_steps"] == 300 and plan["data"]["datasets"][0]["repeat"] == 10
    missing = _write(images / "bad.sh", "python sdxl_train_network.py --config_file nowhere.toml\n")
    code, _, err = _cli("import", "kohya", str(missing))
    assert code == 2 and "--config_file nowhere.toml does not exist" in err


def _companions(root: Path, folder: str) -> Path:
    """Same-stem images (masks or control images) for `img/10_sks dog`."""
    (root / folder).mkdir()
    for i in range(2):
        Image.new("L", (96, 64), 255).save(root / folder / f"{i}.png")
    return root / folder


MASK_DATASET = """\
[general]
caption_extension = ".txt"
resolution = 1024

[[datasets]]
  [[datasets.subsets]]
  image_dir = "{root}/img/10_sks dog"
  num_repeats = 10
  conditioning_data_dir = "{root}/masks"

[[datasets]]
  [[datasets.subsets]]
  image_dir = "{root}/img/10_sks dog"
  alpha_mask = true
"""


def test_masked_loss_and_alpha_mask_become_mask_clauses(images: Path) -> None:
    """kohya's `masked_loss` reads a subset's `conditioning_data_dir` as its mask folder; `alpha_mask`
    masks with the alpha channel: `mask "…"` and `mask alpha`."""
    _companions(images, "masks")
    dataset = _write(images / "dataset.toml", MASK_DATASET.format(root=images))
    text = TRAINING_TOML.format(root=images, model=MODEL)
    training = _write(images / "train.toml", text + "masked_loss = true\n")
    imported = import_kohya([dataset, training], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    assert 'mask "masks"' in imported.text and "mask alpha" in imported.text
    masked, alpha = _plan(imported, images)["data"]["datasets"]
    assert (masked["mask"], masked["masks_missing"], alpha["mask"]) == (str(images / "masks"), 0, "alpha")
    # a ControlNet dataset without masked_loss: kohya's network training refuses it
    no_flag = import_kohya([dataset, _write(images / "plain.toml", text)], images)
    assert [n.key for n in no_flag.changes_training] == ["conditioning_data_dir"]
    command = _write(images / "alpha.sh", "python sdxl_train_network.py --pretrained_model_name_or_path "
                     f"{MODEL} --train_data_dir {images}/img --resolution 1024 --alpha_mask --masked_loss")
    imported = import_kohya([command], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    assert "# not mapped: --masked_loss=true (no subset has a conditioning_data_dir" in imported.text
    assert _plan(imported, images, "alpha.sdx")["data"]["datasets"][0]["mask"] == "alpha"


def test_validation_split_and_cadence_become_validate(images: Path) -> None:
    base = f"python sdxl_train_network.py --pretrained_model_name_or_path {MODEL} --train_data_dir " \
           f"{images}/img --reg_data_dir {images}/reg --resolution 1024 --max_train_steps 20 " \
           "--validation_split 0.5"
    extra = " --validate_every_n_steps 5 --validation_seed 3 --max_validation_steps 2"
    imported = import_kohya([_write(images / "val.sh", base + extra)], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    assert "validate every 5 steps split 50% seed 3" in imported.text
    plan = _plan(imported, images)
    validate = plan["validate"]
    assert (validate["every_steps"], validate["fraction"], validate["seed"]) == (5, 0.5, 3)
    assert validate["held_out"] == 1  # of the two training images; regularization images are never held out
    trained = {str(p) for p in (images / "img").rglob("*.png")}
    assert {image["path"] for image in validate["images"]} <= trained
    epochs = _plan(import_kohya([_write(images / "ep.sh", base)], images), images, "ep.sdx")
    assert epochs["validate"]["every_steps"] == epochs["training"]["steps_per_epoch"]  # kohya: every epoch
    no_split = base.replace("0.5", "0") + " --validate_every_n_steps 5"
    none = import_kohya([_write(images / "none.sh", no_split)], images)
    assert "\nvalidate" not in none.text and none.changes_training == []


def test_lllite_script_becomes_the_lllite_statement(images: Path) -> None:
    """sdxl_train_control_net_lllite.py: `cond_emb_dim`, `network_dim` (mlp), `network_dropout`, and the
    subset's `conditioning_data_dir` (with `train_data_dir`: the flag) as `control "…"`."""
    _companions(images, "edges")
    command = _write(images / "lllite.sh", "accelerate launch sdxl_train_control_net_lllite.py "
                     f"--pretrained_model_name_or_path {MODEL} --train_data_dir '{images}/img/10_sks dog' "
                     f"--conditioning_data_dir {images}/edges --caption_extension .txt --resolution 1024 "
                     "--cond_emb_dim 16 --network_dim 32 --network_dropout 0.1 --learning_rate 2e-4")
    imported = import_kohya([command], images)
    assert imported.changes_training == [], [n.text() for n in imported.notes]
    plan = _plan(imported, images)
    method = plan["method"]
    assert (method["kind"], method["cond_dim"], method["mlp_dim"]) == ("lllite", 16, 32)
    assert method["dropout"] == 0.1
    dataset = plan["data"]["datasets"][0]
    assert (dataset["control"], dataset["control_pairs"]) == (str(images / "edges"), 2)
    assert plan["optimizer"]["lr"] == 2e-4
    subsets = f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{images}/img/10_sks dog"\n' \
              f'conditioning_data_dir = "{images}/edges"\ncaption_extension = ".txt"\n'
    config = _write(images / "l.toml", f'pretrained_model_name_or_path = "{MODEL}"\n'
                    'network_module = "networks.control_net_lllite"\ncond_emb_dim = 8\nnetwork_dim = 16\n')
    plan = _plan(import_kohya([_write(images / "lds.toml", subsets), config], images), images, "l.sdx")
    assert (plan["method"]["cond_dim"], plan["method"]["mlp_dim"]) == (8, 16)
    assert plan["data"]["datasets"][0]["control"] == str(images / "edges")


def test_dora_wd_on_kohyas_own_lora_is_noted_not_mapped(images: Path) -> None:
    """kohya's networks.lora ignores `dora_wd` (DoRA is LyCORIS'): the recipe keeps a plain LoRA."""
    command = _write(images / "dora.sh", "python sdxl_train_network.py --pretrained_model_name_or_path "
                     f"{MODEL} --train_data_dir {images}/img --resolution 1024 "
                     '--network_module networks.lora --network_args "dora_wd=True"')
    imported = import_kohya([command], images)
    assert imported.changes_training == [] and "# not mapped: --network_args=dora_wd=True" in imported.text
    assert _plan(imported, images)["method"]["dora"] is False


MASKED_RECIPE = """\
sdx 1
model "{model}"
data "img" caption .txt mask "masks"
data "img" caption .txt mask alpha
resolution 1024
lora rank 8 on unet modules kohya
steps 40
validate every 10 steps split 50% seed 5
"""


def test_export_writes_masks_and_validation_and_reads_them_back(images: Path) -> None:
    masks = _companions(images, "masks")
    (masks / "10_sks dog").mkdir()
    for i in range(2):
        Image.new("L", (96, 64), 128).save(masks / "10_sks dog" / f"{i}.png")
    recipe = _write(images / "masked.sdx", MASKED_RECIPE.format(model=MODEL))
    compiled = compile_recipe(recipe, (), PROFILE)
    assert compiled.plan is not None, [d.message for d in compiled.errors]
    first = compiled.plan
    folder = images / "kohya"
    files = export_files(first, folder)
    folder.mkdir()
    for name, text in files.items():
        _write(folder / name, text)
    dataset = tomllib.loads(files["dataset.toml"])
    assert (dataset["general"]["validation_split"], dataset["general"]["validation_seed"]) == (0.5, 5)
    plain, control = dataset["datasets"]  # a ControlNet dataset: every subset has conditioning_data_dir
    assert all(s.get("alpha_mask") for s in plain["subsets"])
    assert [s["conditioning_data_dir"] for s in control["subsets"]] == [str(masks / "10_sks dog")]
    assert not any("is_reg" in s or "class_tokens" in s for s in control["subsets"])
    assert "# kohya has no class tokens in a subset with conditioning_data_dir" in files["dataset.toml"]
    config = tomllib.loads(files["config.toml"])
    assert config["masked_loss"] and config["validate_every_n_steps"] == 10
    assert config["validate_every_n_epochs"] == first["training"]["epochs"]
    again = _plan(import_kohya([folder / "config.toml"], images), images, "again.sdx")
    assert {str(d["mask"]) for d in again["data"]["datasets"]} == {"alpha", str(masks / "10_sks dog")}
    for key in ("every_steps", "fraction", "seed"):
        assert again["validate"][key] == first["validate"][key], key


def test_export_of_validation_kohya_cannot_run(images: Path) -> None:
    _companions(images, "edges")
    recipe = _write(images / "l.sdx", f'sdx 1\nmodel "{MODEL}"\ndata "img" caption .txt control "edges"\n'
                    "resolution 1024\nlllite cond_dim 16 mlp_dim 32\nsteps 10\nvalidate split 1\n")
    compiled = compile_recipe(recipe, (), PROFILE)
    assert compiled.plan is not None, [d.message for d in compiled.errors]
    files = export_files(compiled.plan, images / "k")
    assert "# kohya has no validation loss (`validate`) for this method" in files["config.toml"]
    assert "validation_split" not in files["dataset.toml"] and "is_reg" not in files["dataset.toml"]
    assert "# kohya has no class tokens in a subset with conditioning_data_dir" in files["dataset.toml"]
    again = import_kohya([_write(images / "d.toml", files["dataset.toml"]),
                          _write(images / "c.toml", files["config.toml"])], images)
    assert 'data "img/10_sks dog" repeat 10 caption .txt control "edges"' in again.text
    assert "lllite cond_dim 16 mlp_dim 32" in again.text
