"""Caching by default (sdxlc/resolve/cache_defaults.py): text-encoder outputs and latents are cached where the
recipe says nothing and nothing forbids it; the provenance says it was a default and why; `no cache te` and
`no cache latents` turn it off; an explicit word keeps its meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdxlc.cli.report import render_plan
from sdxlc.pipeline import Compiled, compile_recipe
from sdxlc.tools.kohya.convert import import_kohya

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
HEAD = "sdx 1\nmodel tiny\nresolution 64 no buckets\nlr 1e-3 adamw\nbatch 2\nsteps 4\noutput \"out\"\n"


def _compile(tmp_path: Path, body: str, sets: tuple[str, ...] = (), profile: str | None = None) -> Compiled:
    recipe = tmp_path / "r.sdx"
    recipe.write_text(HEAD + body, encoding="utf-8")
    return compile_recipe(recipe, sets, profile)


def _plan(tmp_path: Path, body: str, sets: tuple[str, ...] = (),
          profile: str | None = None) -> dict[str, Any]:
    compiled = _compile(tmp_path, body, sets, profile)
    assert compiled.plan is not None and not compiled.diagnostics, [d.message for d in compiled.diagnostics]
    return compiled.plan


def _cache(plan: dict[str, Any], key: str) -> tuple[bool, dict[str, Any]]:
    return plan["data"]["cache"][key], plan["provenance"][f"data.cache.{key}"]


def test_a_plain_lora_caches_both_by_default_and_says_why(tmp_path: Path) -> None:
    plan = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 on unet\n')
    assert _cache(plan, "text_encoder") == (True, {"source": "default",
                                                   "at": "no text encoder trains, captions fixed"})
    assert _cache(plan, "latents") == (True, {"source": "default", "at": "no per-step pixel change"})
    assert not plan["data"]["cache"]["to_disk"]  # in memory, as the words are without `to disk`
    text = render_plan(plan)
    assert "default no text encoder trains, captions fixed  data.cache: text_encoder true" in text
    assert "default no per-step pixel change" in text and "data.cache: latents true" in text


@pytest.mark.parametrize(("body", "why"), [
    (f'data "{QUICKSTART}"\nlora rank 4 on unet+te1\n', "te1 is trained"),
    (f'data "{QUICKSTART}"\nlora rank 4 on unet+te1+te2\n', "te1+te2 are trained"),
    (f'data "{QUICKSTART}"\nfinetune unet+te2\n', "te2 is trained"),
    (f'data "{QUICKSTART}"\nembedding "<sks>" init "shape"\n',
     "textual inversion trains through the encoders"),
    (f'data "{QUICKSTART}" shuffle\nlora rank 4\n', "captions change per step (shuffle)"),
    (f'data "{QUICKSTART}" dropout 0.1\nlora rank 4\n', "captions change per step (dropout)"),
    (f'data "{QUICKSTART}" tag dropout 0.1\nlora rank 4\n', "captions change per step (tag dropout)"),
    (f'data "{QUICKSTART}"\nlora rank 4\noffload text encoders\nprofile rtx3060-12gb\n',
     "`offload text encoders` asked"),
], ids=["lora_te1", "lora_te1_te2", "finetune_te2", "embedding", "shuffle", "dropout", "tag_dropout",
        "offload_text_encoders"])
def test_text_encoder_outputs_are_not_cached_by_default_where_they_cannot_be(
        tmp_path: Path, body: str, why: str) -> None:
    plan = _plan(tmp_path, body)  # and no error or warning: the default never asks for what is refused
    assert _cache(plan, "text_encoder") == (False, {"source": "default", "at": why})
    assert plan["data"]["cache"]["latents"]


@pytest.mark.parametrize(("body", "why"), [
    (f'data "{QUICKSTART}" random crop\nlora rank 4\n', "pixels change per step (random crop)"),
    (f'data "{QUICKSTART}" color jitter 0.1\nlora rank 4\n', "pixels change per step (color jitter)"),
    (f'data "{QUICKSTART}"\nlora rank 4\noffload vae\nprofile rtx3060-12gb\n', "`offload vae` asked"),
], ids=["random_crop", "color_jitter", "offload_vae"])
def test_latents_are_not_cached_by_default_where_they_cannot_be(tmp_path: Path, body: str, why: str) -> None:
    plan = _plan(tmp_path, body)
    assert _cache(plan, "latents") == (False, {"source": "default", "at": why})
    assert plan["data"]["cache"]["text_encoder"]


def test_a_flipped_dataset_caches_its_latents_both_ways_by_default(tmp_path: Path) -> None:
    plan = _plan(tmp_path, f'data "{QUICKSTART}" flip\nlora rank 4\n')
    assert _cache(plan, "latents") == (True, {"source": "default", "at": "no per-step pixel change"})


def test_the_off_words_and_set_turn_the_defaults_off(tmp_path: Path) -> None:
    plan = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 no cache te no cache latents\n')
    for key in ("text_encoder", "latents"):
        value, origin = _cache(plan, key)
        assert value is False and origin["source"] == "recipe" and str(origin["at"]).endswith(":9:" + (
            "13" if key == "text_encoder" else "25"))
    plan = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4\n', ("cache.latents=false",))
    assert _cache(plan, "latents")[0] is False and _cache(plan, "latents")[1]["source"] == "set"
    assert _cache(plan, "text_encoder")[0] is True


def test_an_off_word_beside_its_on_word_is_a_conflict(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 cache te\nno cache te\n')
    assert compiled.plan is None and compiled.errors


def test_explicit_words_keep_their_meaning(tmp_path: Path) -> None:
    plan = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 cache te cache latents to disk\n')
    assert all(_cache(plan, key)[0] and _cache(plan, key)[1]["source"] == "recipe"
               for key in ("text_encoder", "latents", "to_disk"))
    # an explicit cache beside a trained text encoder is still refused, and nothing else is new
    compiled = _compile(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 on unet+te1 cache te\n')
    assert [d.code for d in compiled.errors] == ["SDX0521"]


def test_the_loader_follows_the_default_cache(tmp_path: Path) -> None:
    cached = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4\nprofile rtx3060-12gb\n')
    assert cached["data"]["loader"]["workers"] == 0  # nothing to decode per step
    cropped = _plan(tmp_path, f'data "{QUICKSTART}" random crop\nlora rank 4\nprofile rtx3060-12gb\n')
    assert cropped["data"]["loader"]["workers"] == 4


KOHYA = """\
[model_arguments]
pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 4
network_train_unet_only = true

[training_arguments]
train_data_dir = "{root}/img"
max_train_steps = 10
{extra}"""


@pytest.mark.parametrize(("extra", "words"), [
    ("", ("no cache latents", "no cache te")),
    ("cache_latents = true\ncache_text_encoder_outputs = true\n", ("cache latents", "cache te")),
])
def test_kohya_import_keeps_kohyas_caching(tmp_path: Path, extra: str, words: tuple[str, ...]) -> None:
    (tmp_path / "img" / "10_sks dog").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (i * 90, 40, 0)).save(tmp_path / "img" / "10_sks dog" / f"{i}.png")
    config = tmp_path / "config.toml"
    config.write_text(KOHYA.format(root=tmp_path, extra=extra), encoding="utf-8")
    text = import_kohya([config], tmp_path).text
    line = next(line for line in text.splitlines() if "cache" in line)
    assert all(word in line.split("  ")[0] for word in words), line
    if not extra:
        assert " cache te" not in line.replace("no cache te", "")
    recipe = tmp_path / "imported.sdx"
    recipe.write_text(text, encoding="utf-8")
    compiled = compile_recipe(recipe, (), "a100-80gb")
    assert compiled.plan is not None, [d.message for d in compiled.errors]
    cache = compiled.plan["data"]["cache"]
    assert (cache["latents"], cache["text_encoder"]) == ((True, True) if extra else (False, False))
    assert compiled.plan["provenance"]["data.cache.latents"]["source"] == "recipe"


def test_a_default_cache_that_would_not_fit_in_memory_is_not_taken(tmp_path: Path) -> None:
    from sdxlc.resolve import cache_defaults

    plan = {"data": {"datasets": [{"flip": True}], "resolution": 1024, "images": 40_000,
                     "buckets": {"table": [{"width": 1024, "height": 1024, "images": 40_000}]}}}
    sizes = cache_defaults.default_cache_bytes(plan)
    assert sizes["latents"] == 40_000 * 1024 * 1024 * 8 * 4 // 64 * 2  # both flips, fp32 mean+logvar
    assert sizes["latents"] > cache_defaults.DEFAULT_BUDGET_BYTES
    assert sizes["text_encoder"] > cache_defaults.DEFAULT_BUDGET_BYTES

    small = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 on unet\n')
    assert small["data"]["cache"] == {**small["data"]["cache"], "text_encoder": True, "latents": True}


def test_over_the_budget_the_plan_says_why_and_an_explicit_word_still_caches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdxlc.resolve import cache_defaults

    monkeypatch.setattr(cache_defaults, "DEFAULT_BUDGET_BYTES", 1024)
    plan = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 on unet\n')
    for key in ("text_encoder", "latents"):
        value, origin = _cache(plan, key)
        assert value is False and origin["source"] == "default" and "GiB" in origin["at"], origin
    explicit = _plan(tmp_path, f'data "{QUICKSTART}"\nlora rank 4 on unet\ncache latents\n')
    assert _cache(explicit, "latents")[0] is True
