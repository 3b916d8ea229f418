"""Textual inversion: only the new rows train, the file is kohya's/diffusers' {"clip_l", "clip_g"}, it
loads with `load_textual_inversion` and the token changes the image; captions from templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from methods_common import EMBEDDING, method_plan
from safetensors import safe_open

from runtime.gen.sample import render
from runtime.methods import embedding
from runtime.model.tiny import TE1_HIDDEN, TE2_HIDDEN, build_tiny_pipeline
from runtime.train.run import run_plan


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any, Any]:
    out = tmp_path_factory.mktemp("embedding")
    plan = method_plan(out, EMBEDDING, optimizer__lr=0.3, training__total_steps=3,
                       sample={"prompts": ["a photo of <tok>"], "steps": 3})
    result, models = run_plan(plan, progress=False)
    return plan, result, models


def test_file_holds_the_rows_of_both_encoders(trained) -> None:  # type: ignore[no-untyped-def]
    plan, result, models = trained
    with safe_open(str(result.lora_path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert shapes == {"clip_l": (2, TE1_HIDDEN), "clip_g": (2, TE2_HIDDEN)}
    assert meta["ss_token_string"] == "<tok>" and meta["modelspec.architecture"].endswith("textual-inversion")
    pipe = models.pipe
    ids = pipe.tokenizer.convert_tokens_to_ids(["<tok>", "<tok>_1"])
    assert pipe.text_encoder(torch.tensor([ids])).last_hidden_state.shape[1] == 2
    init = pipe.tokenizer.encode("cat", add_special_tokens=False)
    base = build_tiny_pipeline(0).text_encoder.get_input_embeddings().weight
    assert not torch.allclose(tensors["clip_l"][0], base[init[0]])  # moved away from the init word


def test_every_other_row_is_unchanged(trained) -> None:  # type: ignore[no-untyped-def]
    _, _, models = trained
    for name in ("text_encoder", "text_encoder_2"):
        base = getattr(build_tiny_pipeline(0), name).get_input_embeddings().weight
        module = getattr(models.pipe, name).get_input_embeddings()
        assert isinstance(module, embedding.TrainedRows) and module.first == base.shape[0]
        assert torch.equal(module.weight[: base.shape[0]], base)
        assert not any(p.requires_grad for n, p in getattr(models.pipe, name).named_parameters()
                       if not n.endswith(".rows"))


def test_loads_with_diffusers_and_the_token_changes_the_image(trained) -> None:  # type: ignore[no-untyped-def]
    plan, result, models = trained
    settings, prompt = plan["sample"], plan["sample"]["prompts"][0]
    pipe = build_tiny_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    plain = render(pipe, settings, "a photo of", output_type="np")
    with safe_open(str(result.lora_path), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    pipe.load_textual_inversion(state["clip_l"], token="<tok>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="<tok>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    loaded = render(pipe, settings, prompt, output_type="np")
    assert np.abs(loaded - plain).mean() > 1e-4
    models.pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(loaded, render(models.pipe, settings, prompt, output_type="np"), atol=1e-4)


def test_captions_expand_the_token_and_come_from_templates() -> None:
    mapping = embedding.caption_map({**EMBEDDING, "captions": "file"})
    torch.manual_seed(0)
    assert mapping(["<tok> on a table", "a cat"]) == ["<tok> <tok>_1 on a table", "<tok> <tok>_1, a cat"]
    empty = mapping([""])[0]
    assert "<tok> <tok>_1" in empty and empty.replace("<tok> <tok>_1", "{}") in embedding.OBJECT_TEMPLATES
    styled = embedding.caption_map({**EMBEDDING, "template": "style"})(["ignored caption"])[0]
    assert styled.replace("<tok> <tok>_1", "{}") in embedding.STYLE_TEMPLATES


def test_a_token_the_tokenizer_has_is_an_error(tmp_path: Path) -> None:
    from runtime import RunError
    from runtime.train.run import setup_model

    plan = method_plan(tmp_path, {**EMBEDDING, "token": "a", "tokens": ["a", "a_1"]})
    with pytest.raises(RunError, match="already a token"):
        setup_model(plan)
