"""Lowering: statements and clauses to the recipe document, layers, provenance and diagnostics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sdxlc.lang import vocabulary as vocab
from sdxlc.lang.diagnostics import Diagnostic
from sdxlc.lang.lower import Lowered, load_recipe

MUST_PARSE = "lora rank 8 on unet bf16 cache te; lr 1e-4 lion; block_lr 0, 1e-4 x9, 5e-5 x3, 1e-4 x9, 1e-4"

FULL_EXAMPLE = """\
# recipes/style_lora.sdx — a style LoRA on SDXL base for a 12 GB card
sdx 1                                    # language version; migrations upgrade older files
use "base/sdxl.sdx"                      # inherit: this file may override what it sets
model "stabilityai/stable-diffusion-xl-base-1.0"   # hub id, diffusers folder, or single .safetensors file
vae "madebyollin/sdxl-vae-fp16-fix"
profile rtx3060-12gb                     # hardware profile (schema/profiles); `auto` probes the local GPU
data "data/style" repeat 10 caption .txt shuffle keep 1 flip
data "data/reg" as regularization
resolution 1024 buckets 512..2048 step 64
lora rank 16 alpha 8 on unet bf16 cache te cache latents to disk
lr 1e-4 lion; schedule cosine warmup 5%
batch 4 accumulate 2
epochs 10                                # or: steps 2000
checkpointing                            # gradient checkpointing
noise offset 0.0357; snr gamma 5; timesteps 0..1000
save every 500 steps keep 3 fp16
sample every 250 steps "a lighthouse at dusk, sks style" size 1024 steps 25 cfg 7 seed 1
seed 42
output "out/style_lora"
log tensorboard
"""

BASE = 'model tiny\nlr 2e-4 adamw\nmax_grad_norm 0.5\nfp16\ndata "base/imgs"\n'


def lower(tmp_path: Path, text: str, sets: tuple[str, ...] = (), name: str = "r.sdx") -> Lowered:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load_recipe(path, sets)


def codes(lowered: Lowered) -> list[str]:
    return [d.code for d in lowered.diagnostics]


def where(diag: Diagnostic) -> tuple[int, int]:
    assert diag.span is not None
    return diag.span.line, diag.span.column


def dig(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_must_parse_line(tmp_path: Path) -> None:
    low = lower(tmp_path, MUST_PARSE)
    assert low.diagnostics == []
    assert low.doc == {
        "lora": {"rank": 8, "targets": ["unet"]},
        "precision": {"mixed": "bf16"},
        "cache": {"text_encoder": True},
        "optimizer": {"lr": 1e-4, "name": "lion"},
        "block_lr": [0.0] + [1e-4] * 9 + [5e-5] * 3 + [1e-4] * 9 + [1e-4],
    }
    assert all(isinstance(v, float) for v in low.doc["block_lr"]) and len(low.doc["block_lr"]) == 23
    assert low.provenance["optimizer.name"].at() == f"{tmp_path / 'r.sdx'}:1:44"


def test_full_example_with_its_base(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "sdxl.sdx").write_text(BASE, encoding="utf-8")
    low = lower(tmp_path, FULL_EXAMPLE)
    assert codes(low) == []
    assert low.doc["log"] == {"tensorboard": True}
    doc = low.doc
    assert doc["sdx"] == 1
    assert doc["model"] == {
        "source": "stabilityai/stable-diffusion-xl-base-1.0",
        "vae": "madebyollin/sdxl-vae-fp16-fix",
    }
    assert doc["profile"] == "rtx3060-12gb"
    assert doc["data"] == [
        {
            "path": "data/style",
            "repeat": 10,
            "caption_ext": ".txt",
            "shuffle": True,
            "keep_tokens": 1,
            "flip": True,
        },
        {"path": "data/reg", "regularization": True},
    ]
    assert doc["resolution"] == {"size": 1024, "buckets": True, "min": 512, "max": 2048, "step": 64}
    assert doc["lora"] == {"rank": 16, "alpha": 8.0, "targets": ["unet"]}
    assert doc["precision"] == {"mixed": "bf16"}
    assert doc["cache"] == {"text_encoder": True, "latents": True, "to_disk": True}
    assert doc["optimizer"] == {"lr": 1e-4, "name": "lion", "max_grad_norm": 0.5}
    assert doc["schedule"] == {"name": "cosine", "warmup_percent": 5.0}
    assert doc["training"] == {
        "batch_size": 4,
        "accumulate": 2,
        "epochs": 10,
        "gradient_checkpointing": True,
        "seed": 42,
    }
    assert doc["noise"] == {"offset": 0.0357, "snr_gamma": 5.0, "timestep_min": 0, "timestep_max": 1000}
    assert doc["save"] == {"every": 500, "unit": "steps", "keep": 3, "dtype": "fp16"}
    assert doc["sample"] == {
        "every": 250,
        "unit": "steps",
        "prompts": ["a lighthouse at dusk, sks style"],
        "size": 1024,
        "steps": 25,
        "cfg": 7.0,
        "seed": 1,
    }
    assert doc["output"] == {"dir": "out/style_lora"}
    base = str(tmp_path / "base" / "sdxl.sdx")
    assert low.provenance["optimizer.max_grad_norm"].source == "use"
    assert low.provenance["optimizer.max_grad_norm"].at() == f"{base}:3:1"
    assert low.provenance["optimizer.lr"].source == "recipe"
    assert low.provenance["data.0.path"].span is not None
    assert low.provenance["data.0.path"].span.file == str(tmp_path / "r.sdx")
    assert set(low.sources) == {str(tmp_path / "r.sdx"), base}


# (recipe text, path, value): one row per vocabulary entry that sets a path
CLAUSES: list[tuple[str, str, Any]] = [
    ("sdx 1", "sdx", 1),
    ("model tiny", "model.source", "tiny"),
    ('model "some/hub-id"', "model.source", "some/hub-id"),
    ('vae "madebyollin/sdxl-vae-fp16-fix"', "model.vae", "madebyollin/sdxl-vae-fp16-fix"),
    ("profile rtx4090-24gb", "profile", "rtx4090-24gb"),
    ('data "imgs"', "data.0.path", "imgs"),
    ("resolution 768", "resolution.size", 768),
    ("lora", "lora", {}),
    ("lr 3e-4", "optimizer.lr", 3e-4),
    ("optimizer adamw8bit", "optimizer.name", "adamw8bit"),
    ("max_grad_norm 2", "optimizer.max_grad_norm", 2.0),
    ("clip 0", "optimizer.max_grad_norm", 0.0),
    ("schedule linear", "schedule.name", "linear"),
    ("block_lr 1e-4 x23", "block_lr", [1e-4] * 23),
    ("batch 2", "training.batch_size", 2),
    ("steps 2000", "training.steps", 2000),
    ("epochs 3", "training.epochs", 3),
    ("seed 5", "training.seed", 5),
    ("noise", "noise", {}),
    ("snr gamma 5", "noise.snr_gamma", 5.0),
    ("timesteps 100..900", "noise.timestep_max", 900),
    ("save", "save", {}),
    ("sample", "sample", {}),
    ('output "out/x"', "output.dir", "out/x"),
    ("name my_lora", "output.name", "my_lora"),
    ("log", "log", {}),
    ("fit auto", "fit", "auto"),
    ("gpus 4", "launch.processes", 4),
    ("processes 2", "launch.processes", 2),
    ("machines 2", "launch.machines", 2),
    ("strategy deepspeed-zero2", "launch.strategy", "deepspeed-zero2"),
    ("bf16", "precision.mixed", "bf16"),
    ("seed 1 fp16", "precision.mixed", "fp16"),
    ("fp32", "precision.mixed", "fp32"),
    ("vae fp32", "precision.vae_fp32", True),
    ("vae sliced", "precision.vae_slicing", True),
    ("base fp8", "precision.base_fp8", True),
    ("offload text encoders", "precision.offload_text_encoders", True),
    ("offload vae", "precision.offload_vae", True),
    ('vae "x/y" vae_fp32', "precision.vae_fp32", True),
    ("cache te", "cache.text_encoder", True),
    ("cache latents", "cache.latents", True),
    ("cache latents to disk", "cache.to_disk", True),
    ("no cache te", "cache.text_encoder", False),
    ("no cache latents", "cache.latents", False),
    ("checkpointing", "training.gradient_checkpointing", True),
    ("compile", "training.compile", True),
    ("channels last", "training.channels_last", True),
    ("model tiny v_prediction", "model.prediction", "v_prediction"),
    ("vpred", "model.prediction", "v_prediction"),
    ("epsilon", "model.prediction", "epsilon"),
    ("no buckets", "resolution.buckets", False),
    ("model tiny seed 3", "model.tiny_seed", 3),
    ('model "m.safetensors" config "cfg"', "model.config", "cfg"),
    ('model "m.ckpt" allow pickle', "model.allow_pickle", True),
    ("model tiny init normal 0.02", "model.init_std", 0.02),
    ('data "d" repeat 4', "data.0.repeat", 4),
    ('data "d" caption .caption', "data.0.caption_ext", ".caption"),
    ('data "d" shuffle', "data.0.shuffle", True),
    ('data "d" keep 2', "data.0.keep_tokens", 2),
    ('data "d" dropout 0.1', "data.0.caption_dropout", 0.1),
    ('data "d" flip', "data.0.flip", True),
    ('data "d" as regularization', "data.0.regularization", True),
    ('data "d" separator ";"', "data.0.separator", ";"),
    ('data "d" tag dropout 0.1', "data.0.tag_dropout", 0.1),
    ('data "d" as regularization loss weight 0.5', "data.0.loss_weight", 0.5),
    ('data "d" random crop', "data.0.random_crop", True),
    ('data "d" color jitter 0.1', "data.0.color_jitter", 0.1),
    ('data "d" prefix "a photo of"', "data.0.prefix", "a photo of"),
    ('data "d" suffix "hd"', "data.0.suffix", "hd"),
    ('data "d" default caption "sks"', "data.0.default_caption", "sks"),
    ('data "d" on bad image fail', "data.0.bad_image", "fail"),
    ('data "d" mask "m"', "data.0.mask", "m"),
    ('data "d" mask alpha', "data.0.mask", "alpha"),
    ('data "d" control "c"', "data.0.control", "c"),
    ("resolution 1024 buckets", "resolution.buckets", True),
    ("resolution 1024 256..1536", "resolution.min", 256),
    ("resolution 1024 step 32", "resolution.step", 32),
    ("resolution 1024 no upscale", "resolution.no_upscale", True),
    ("lora rank 32", "lora.rank", 32),
    ("lora alpha 16", "lora.alpha", 16.0),
    ("lora on unet+te1+te2", "lora.targets", ["unet", "te1", "te2"]),
    ("lora dropout 0.05", "lora.dropout", 0.05),
    ("lora modules attention+ff+conv", "lora.modules", ["attention", "ff", "conv"]),
    ("lora on unet+te1 te1 lr 5e-5", "lora.lr_te1", 5e-5),
    ("lora on unet+te2 te2 lr 4e-5", "lora.lr_te2", 4e-5),
    ('lora from "old.safetensors"', "lora.from", "old.safetensors"),
    ("loha rank 8 alpha 4 on unet", "lora.adapter", "loha"),
    ("lokr rank 8 factor 4 on unet", "lora.factor", 4),
    ("lokr rank 8", "lora.adapter", "lokr"),
    ("lora rank 8 on unet dora", "lora.dora", True),
    ("lllite", "lllite", {}),
    ("lllite cond_dim 32", "lllite.cond_dim", 32),
    ("lllite mlp_dim 64", "lllite.mlp_dim", 64),
    ("lllite dropout 0.1", "lllite.dropout", 0.1),
    ("finetune", "finetune", {}),
    ("finetune unet+te1+te2", "finetune.targets", ["unet", "te1", "te2"]),
    ("finetune unet+te1 te1 lr 1e-6", "finetune.lr_te1", 1e-6),
    ("finetune unet+te2 te2 lr 2e-6", "finetune.lr_te2", 2e-6),
    ("finetune unet full bf16", "finetune.full_bf16", True),
    ("finetune unet fused backward", "finetune.fused_backward", True),
    ('embedding "<sks>"', "embedding.token", "<sks>"),
    ('embedding "<sks>" init "dog"', "embedding.init", "dog"),
    ('embedding "<sks>" vectors 4', "embedding.vectors", 4),
    ('embedding "<sks>" template style', "embedding.template", "style"),
    ("save every 100 steps diffusers", "save.diffusers", True),
    ("save private", "save.private", True),
    ("lr 1e-4 adamw", "optimizer.name", "adamw"),
    ("optimizer lion lr 3e-5", "optimizer.lr", 3e-5),
    (
        "optimizer adamw args weight_decay=0.01 betas=0.9,0.99",
        "optimizer.args",
        {"weight_decay": 0.01, "betas": [0.9, 0.99]},
    ),
    ("schedule cosine warmup 100", "schedule.warmup_steps", 100),
    ("batch 4 accumulate 8", "training.accumulate", 8),
    ("noise offset 0.05", "noise.offset", 0.05),
    ("noise snr gamma 1", "noise.snr_gamma", 1.0),
    ("noise timesteps 0..500", "noise.timestep_min", 0),
    ("noise multires 6", "noise.multires_iterations", 6),
    ("noise multires 6 discount 0.3", "noise.multires_discount", 0.3),
    ("noise perturbation 0.1", "noise.perturbation", 0.1),
    ("debiased", "noise.debiased", True),
    ("model tiny vpred zero_terminal_snr", "noise.zero_terminal_snr", True),
    ("loss huber", "loss.type", "huber"),
    ("loss huber c 0.2", "loss.huber_c", 0.2),
    ("optimizer adafactor args relative_step=false", "optimizer.args", {"relative_step": False}),
    ("save every 2 epochs", "save.unit", "epochs"),
    ("save keep 5", "save.keep", 5),
    ("save fp16", "save.dtype", "fp16"),
    ("save bf16", "save.dtype", "bf16"),
    ("save fp32", "save.dtype", "fp32"),
    ('sample "a cat" "a dog"', "sample.prompts", ["a cat", "a dog"]),
    ("sample every 100", "sample.every", 100),
    ("sample size 512", "sample.size", 512),
    ("sample steps 30", "sample.steps", 30),
    ("sample cfg 4.5", "sample.cfg", 4.5),
    ('sample "a cat" control "c.png"', "sample.controls", ["c.png"]),
    ("sample seed 9", "sample.seed", 9),
    ('sample "a cat" before', "sample.before", True),
    ("ema 0.999", "ema.decay", 0.999),
    ("ema 0.99 every 2 steps", "ema.every", 2),
    ("ema 0.99 from step 100", "ema.from_step", 100),
    ("validate", "validate", {}),
    ('validate "val"', "validate.folder", "val"),
    ("validate every 50 steps", "validate.every", 50),
    ("validate split 10%", "validate.split_percent", 10.0),
    ("validate split 4", "validate.split_images", 4),
    ("validate seed 3", "validate.seed", 3),
    ("log every 5", "log.every", 5),
    ("log tensorboard", "log.tensorboard", True),
    ("log no tensorboard every 5", "log.tensorboard", False),
    ('log wandb "proj"', "log.wandb", "proj"),
    ('log mlflow "proj"', "log.mlflow", "proj"),
    ('log comet_ml "proj"', "log.comet_ml", "proj"),
    ('log aim "proj"', "log.aim", "proj"),
    ('log clearml "proj"', "log.clearml", "proj"),
    ('log dvclive "proj"', "log.dvclive", "proj"),
    ('log swanlab "proj"', "log.swanlab", "proj"),
    ('log trackio "proj"', "log.trackio", "proj"),
    ("loader workers 3", "loader.workers", 3),
    ("loader prefetch 4", "loader.prefetch", 4),
    ("loader pin memory", "loader.pin_memory", True),
    ("loader no pin memory", "loader.pin_memory", False),
    ("workers 2", "loader.workers", 2),
    ("loader", "loader", {}),
    ("set optimizer.args.weight_decay 0.01", "optimizer.args.weight_decay", 0.01),
]


@pytest.mark.parametrize(("text", "path", "value"), CLAUSES)
def test_every_clause(tmp_path: Path, text: str, path: str, value: Any) -> None:
    low = lower(tmp_path, text)
    assert low.diagnostics == []
    assert dig(low.doc, path) == value


def test_every_vocabulary_entry_has_a_clause_test() -> None:
    tested = " \n".join(text for text, _, _ in CLAUSES) + " "
    tested_paths = {path for _, path, _ in CLAUSES}
    for entry in vocab.VOCABULARY:
        if entry.arg in ("unsupported", "file"):
            continue
        if entry.words:
            assert re.search(rf"(^|\s){re.escape(entry.words)}\s", tested), entry
        assert any(path.replace("*", "0") in tested_paths for path in entry.paths) or entry.arg == "setting"


def test_clause_words_used_as_statements_point_to_their_statement(tmp_path: Path) -> None:
    low = lower(tmp_path, "rank 8\nrnak 8\n")
    assert codes(low) == ["SDX0201", "SDX0201"]
    assert [d.help for d in low.diagnostics] == ["did you mean `lora rank …`?"] * 2


def test_sample_and_save_steps_are_clauses_not_statements(tmp_path: Path) -> None:
    low = lower(tmp_path, 'sample every 250 steps "p" steps 25\nsave every 500 steps keep 3 fp16\nbf16')
    assert low.diagnostics == []
    assert low.doc["sample"] == {"every": 250, "unit": "steps", "prompts": ["p"], "steps": 25}
    assert "training" not in low.doc
    assert low.doc["save"]["dtype"] == "fp16" and low.doc["precision"] == {"mixed": "bf16"}


def test_duplicate_with_both_spans(tmp_path: Path) -> None:
    low = lower(tmp_path, "lora rank 8\nlr 1e-4\nlora rank 16\n")
    assert codes(low) == ["SDX0301"]
    diag = low.diagnostics[0]
    assert where(diag) == (3, 6)
    assert [(span.line, span.column, label) for span, label in diag.related] == [(1, 6, "first set here")]
    assert low.doc["lora"]["rank"] == 8


def test_same_value_twice_is_a_warning(tmp_path: Path) -> None:
    low = lower(tmp_path, "bf16\nlora rank 8 bf16\n")
    assert [(d.code, d.severity) for d in low.diagnostics] == [("SDX0302", "warning")]
    assert where(low.diagnostics[0]) == (2, 13)


def test_to_disk_said_for_each_cache_is_no_repetition(tmp_path: Path) -> None:
    low = lower(tmp_path, "cache latents to disk\ncache te to disk\n")
    assert codes(low) == []
    assert low.doc["cache"]["to_disk"] is True


def test_use_inherits_and_is_overridden(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "base.sdx").write_text('use "deeper.sdx"\nlr 2e-4 adamw\nseed 1\n', encoding="utf-8")
    (tmp_path / "lib" / "deeper.sdx").write_text("seed 9\nepochs 4\n", encoding="utf-8")
    low = lower(tmp_path, 'use "lib/base.sdx"\nlr 1e-4\n')
    assert low.diagnostics == []
    assert low.doc["optimizer"] == {"lr": 1e-4, "name": "adamw"}
    assert low.doc["training"] == {"seed": 1, "epochs": 4}
    assert low.provenance["optimizer.lr"].source == "recipe"
    assert low.provenance["training.epochs"].source == "use"
    epochs_span = low.provenance["training.epochs"].span
    assert epochs_span is not None and epochs_span.file == str(tmp_path / "lib" / "deeper.sdx")


def test_data_of_the_recipe_replaces_inherited_data(tmp_path: Path) -> None:
    (tmp_path / "base.sdx").write_text('data "a" repeat 3\ndata "b"\n', encoding="utf-8")
    assert lower(tmp_path, 'use "base.sdx"\ndata "c"\n').doc["data"] == [{"path": "c"}]
    assert lower(tmp_path, 'use "base.sdx"\nlr 1e-4\n').doc["data"] == [
        {"path": "a", "repeat": 3},
        {"path": "b"},
    ]


def test_use_cycle(tmp_path: Path) -> None:
    (tmp_path / "b.sdx").write_text('use "r.sdx"\nseed 2\n', encoding="utf-8")
    low = lower(tmp_path, 'use "b.sdx"\nseed 1\n')
    assert codes(low) == ["SDX0303"]
    assert low.diagnostics[0].span is not None and low.diagnostics[0].span.file == str(tmp_path / "b.sdx")
    assert "r.sdx" in low.diagnostics[0].message and "b.sdx" in low.diagnostics[0].message
    assert low.doc["training"]["seed"] == 1


def test_use_must_come_first_and_must_exist(tmp_path: Path) -> None:
    low = lower(tmp_path, 'sdx 1\nseed 1\nuse "late.sdx"\n')
    assert codes(low) == ["SDX0304"] and where(low.diagnostics[0]) == (3, 1)
    low = lower(tmp_path, 'use "missing.sdx"\n')
    assert codes(low) == ["SDX0305"] and where(low.diagnostics[0]) == (1, 1)


def test_missing_recipe_file(tmp_path: Path) -> None:
    low = load_recipe(tmp_path / "nope.sdx")
    assert codes(low) == ["SDX0305"] and low.doc == {}


def test_command_line_sets(tmp_path: Path) -> None:
    low = lower(
        tmp_path,
        "lr 1e-4 lion\n",
        sets=(
            "optimizer.lr=3e-4",
            "lora.targets=unet+te1",
            "data.0.path=imgs",
            "sample.prompts=a cat, at dusk",
        ),
    )
    assert low.diagnostics == []
    assert low.doc["optimizer"] == {"lr": 3e-4, "name": "lion"}
    assert low.doc["lora"] == {"targets": ["unet", "te1"]}
    assert low.doc["data"] == [{"path": "imgs"}]
    assert low.doc["sample"] == {"prompts": ["a cat, at dusk"]}
    assert low.provenance["optimizer.lr"].source == "set"
    assert low.provenance["optimizer.lr"].at() == "--set:1:1"


def test_bad_command_line_sets(tmp_path: Path) -> None:
    low = lower(
        tmp_path,
        "seed 1\n",
        sets=("optimizer.lrr=1", "noequals", "optimizer.name=loin", "lora.rank=0", "training.seed=x y"),
    )
    assert codes(low) == ["SDX0402", "SDX0306", "SDX0403", "SDX0404", "SDX0306"]
    assert low.diagnostics[0].help == "did you mean `optimizer.lr`?"
    assert low.diagnostics[2].help == "did you mean `lion`?"


def test_set_statement(tmp_path: Path) -> None:
    low = lower(tmp_path, "set training.seed 3\nset lora 3\nset optimizer.lrr 1\nset model.tiny_seed\n")
    assert codes(low) == ["SDX0406", "SDX0402", "SDX0204"]
    assert low.doc == {"training": {"seed": 3}}
    assert where(low.diagnostics[1]) == (3, 5)


def test_enum_did_you_mean_points_at_the_word(tmp_path: Path) -> None:
    low = lower(tmp_path, "lr 1e-4 loin\n")
    assert codes(low) == ["SDX0403"]
    diag = low.diagnostics[0]
    assert diag.span is not None and (diag.span.line, diag.span.column, diag.span.end_column) == (1, 9, 13)
    assert diag.help == "did you mean `lion`?"


def test_unknown_words_suggest_the_vocabulary(tmp_path: Path) -> None:
    low = lower(tmp_path, "lora rnak 8\nshedule cosine\nlora on unet+te3\n")
    assert codes(low) == ["SDX0201", "SDX0201", "SDX0403"]
    assert low.diagnostics[0].help == "did you mean `rank`?"
    assert low.diagnostics[1].help == "did you mean `schedule`?"
    assert where(low.diagnostics[2]) == (3, 9)


def test_block_lr_wrong_count(tmp_path: Path) -> None:
    low = lower(tmp_path, "block_lr 0, 1e-4 x9, 5e-5 x3\n")
    assert codes(low) == ["SDX0207"] and where(low.diagnostics[0]) == (1, 10)
    assert "13-21 output blocks" in (low.diagnostics[0].help or "")


@pytest.mark.parametrize(
    ("text", "code", "column"),
    [
        ("lora rank 8x", "SDX0202", 11),
        ("lr 1e-", "SDX0202", 4),
        ('lora rank "eight"', "SDX0203", 11),
        ("lora rank 8.5", "SDX0203", 11),
        ("lr", "SDX0204", 1),
        ("lora rank", "SDX0204", 6),
        ("lora rank 0", "SDX0404", 11),
        ('data "d" caption txt', "SDX0405", 18),
        ("lora rank 8 lr 1e-4", "SDX0205", 13),
        ("lr=1e-4", "SDX0206", 1),
        ("8 lora", "SDX0206", 1),
        ("lora 8", "SDX0203", 6),
        ("resolution 1024 buckets 512", "SDX0203", 25),
        ("schedule cosine warmup fast", "SDX0203", 24),
        ("sdx 2", "SDX0403", 5),
    ],
)
def test_bad_values(tmp_path: Path, text: str, code: str, column: int) -> None:
    low = lower(tmp_path, text + "\n")
    assert codes(low) == [code]
    assert where(low.diagnostics[0]) == (1, column)


def test_all_errors_of_a_file_in_one_run(tmp_path: Path) -> None:
    text = 'lora rank 8x on unet\nlr 1e-4 loin\nmodel "abc\nrnak 3\nseed 7\nblock_lr 1, 2\n'
    low = lower(tmp_path, text)
    assert [(d.code, where(d)[0]) for d in low.diagnostics] == [
        ("SDX0102", 3),
        ("SDX0202", 1),
        ("SDX0403", 2),
        ("SDX0201", 4),
        ("SDX0207", 6),
    ]
    assert low.doc["lora"] == {"targets": ["unet"]}
    assert low.doc["optimizer"] == {"lr": 1e-4}
    assert low.doc["training"] == {"seed": 7}


def test_method_words_once_unsupported_now_lower(tmp_path: Path) -> None:
    low = lower(tmp_path, 'log every 5\nfinetune unet\nlora from "old.safetensors" rank 4\n')
    assert low.diagnostics == []
    assert low.doc["finetune"] == {"targets": ["unet"]}
    assert low.doc["lora"] == {"from": "old.safetensors", "rank": 4}


def test_never_raises_on_garbage(tmp_path: Path) -> None:
    path = tmp_path / "g.sdx"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert codes(load_recipe(path)) == ["SDX0305"]
    low = lower(tmp_path, '"\n,\n=\n;;x=\n@@ 1,\n' + "lr 1e-4 x9\n")
    assert low.diagnostics and all(d.code.startswith("SDX0") for d in low.diagnostics)


def test_compiler_front_end_imports_no_ml_stack() -> None:
    root = Path(__file__).resolve().parent.parent / "sdxlc" / "lang"
    for name in ("ast", "parser", "lower", "vocabulary", "diagnostics"):
        source = (root / f"{name}.py").read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(torch|diffusers|transformers)\b", source, re.M), name
