"""`lora … modules kohya` and the `proj`/`emb` groups: module counts on the tiny and full-size models (kohya's
722 UNet layers), a run of the tiny model saved under kohya's keys and read fully by diffusers, the same
key set at full SDXL size (meta device), `block_lr` blocks, the LoRA tools, the estimate, and continuing
`from` a file of kohya's default coverage."""

from __future__ import annotations

import copy
import logging
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from methods_common import LORA_TE, method_plan
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from runtime.gen.sample import render
from runtime.methods import lora
from runtime.model.tiny import build_tiny_pipeline
from runtime.tools.lora_merge import merge_loras
from runtime.tools.lora_modules import weight_modules
from runtime.tools.lora_resize import resize
from runtime.train.run import run_plan, setup_model
from sdxlc.estimate.analytic import load_model, trainable_param_count
from sdxlc.pipeline import Compiled, compile_recipe
from sdxlc.resolve.lora_groups import expand
from sdxlc.resolve.method import TE_MODULES, UNET_MODULES, read_lora_file

ROOT = Path(__file__).resolve().parents[1]
SDXL_CONFIG = ROOT / "sdxlc" / "data" / "sdxl_config"
KOHYA_UNET = [m for kind in expand(["kohya"]) for m in UNET_MODULES[kind]]
KOHYA_TE = [m for kind in expand(["kohya"]) for m in TE_MODULES[kind]]
KOHYA = {**copy.deepcopy(LORA_TE), "modules": ["kohya"], "unet_modules": KOHYA_UNET, "te_modules": KOHYA_TE}
# group → (full-size UNet, CLIP-L, bigG), (tiny UNet, each tiny encoder)
COUNTS = {
    "attention": ((560, 48, 128), (136, 8)),
    "ff": ((140, 24, 64), (34, 4)),
    "proj": ((22, 0, 0), (22, 0)),
    "conv": ((49, 0, 0), (49, 0)),
    "emb": ((17, 0, 0), (17, 0)),
    "kohya": ((722, 72, 192), (192, 12)),
}


def compile_text(tmp_path: Path, text: str) -> Compiled:
    data = tmp_path / "data"
    if not data.exists():
        data.symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = tmp_path / "r.sdx"
    recipe.write_text('model tiny\ndata "data"\nsteps 4\n' + text, encoding="utf-8")
    return compile_recipe(recipe)


def plan_of(tmp_path: Path, text: str) -> dict[str, Any]:
    compiled = compile_text(tmp_path, text)
    assert compiled.plan is not None, [str(d) for d in compiled.diagnostics]
    return compiled.plan


def _matching(model: torch.nn.Module, names: list[str]) -> list[str]:
    """peft's suffix matching of target_modules over the Linear and Conv2d modules."""
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            and any(n == t or n.endswith("." + t) for t in names)]


def _kohya_rule(model: torch.nn.Module, classes: tuple[str, ...]) -> int:
    """kohya's networks/lora.py: every Linear and Conv2d inside a module of the target classes."""
    return sum(1 for module in model.modules() if type(module).__name__ in classes
               for child in module.modules() if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)))


@pytest.fixture(scope="module")
def full() -> Any:
    """Full-size SDXL UNet and text encoders on the meta device (no weights)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(SDXL_CONFIG / "unet")))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SDXL_CONFIG / "text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(SDXL_CONFIG / "text_encoder_2")))
    return types.SimpleNamespace(unet=unet, text_encoder=te1, text_encoder_2=te2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any, Any]:
    out = tmp_path_factory.mktemp("kohya-lora")
    plan = method_plan(out, KOHYA, optimizer__lr=2e-2, training__total_steps=2)
    result, models = run_plan(plan, progress=False)
    return plan, result, models


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def modules_of(tensors: dict[str, torch.Tensor], prefix: str) -> set[str]:
    return {k.removesuffix(".lora_down.weight") for k in tensors
            if k.startswith(prefix) and k.endswith(".lora_down.weight")}


def test_group_counts_tiny_and_full_size(full: Any) -> None:
    tiny = build_tiny_pipeline(0)
    for group, ((unet, te1, te2), (tiny_unet, tiny_te)) in COUNTS.items():
        names = [m for kind in expand([group]) for m in UNET_MODULES[kind]]
        te = [m for kind in expand([group]) for m in TE_MODULES[kind]]
        assert len(_matching(full.unet, names)) == unet, group
        assert (len(_matching(full.text_encoder, te)), len(_matching(full.text_encoder_2, te))) == (te1, te2)
        assert len(_matching(tiny.unet, names)) == tiny_unet, group
        assert len(_matching(tiny.text_encoder, te)) == len(_matching(tiny.text_encoder_2, te)) == tiny_te
    # `kohya` is kohya's own rule: Transformer2DModel for the UNet, CLIPAttention and CLIPMLP for the encoders
    assert _kohya_rule(full.unet, ("Transformer2DModel",)) == 722
    assert _kohya_rule(tiny.unet, ("Transformer2DModel",)) == 192
    clip = ("CLIPAttention", "CLIPMLP")
    assert (_kohya_rule(full.text_encoder, clip), _kohya_rule(full.text_encoder_2, clip)) == (72, 192)


def test_full_size_kohya_keys_are_what_diffusers_reads(full: Any) -> None:
    """The kohya key set of full SDXL (with emb) goes through diffusers' converter onto exactly the layers."""
    unet_targets, te_targets = [*KOHYA_UNET, *UNET_MODULES["emb"]], KOHYA_TE
    keys = set(weight_modules(full, unet_targets, te_targets))
    assert len(keys) == 722 + 17 + 72 + 192
    for key in ("lora_unet_input_blocks_4_1_proj_in", "lora_unet_output_blocks_5_1_proj_out",
                "lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_2",
                "lora_unet_middle_block_1_proj_out",
                "lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_out_0",
                "lora_unet_input_blocks_1_0_emb_layers_1", "lora_unet_middle_block_2_emb_layers_1",
                "lora_unet_output_blocks_8_0_emb_layers_1", "lora_te1_text_model_encoder_layers_11_mlp_fc1",
                "lora_te2_text_model_encoder_layers_31_mlp_fc2"):
        assert key in keys, key
    zero = torch.zeros(1, 1)
    state = {f"{k}.{part}": zero for k in keys for part in ("lora_down.weight", "lora_up.weight")}
    state.update({f"{k}.alpha": torch.tensor(1.0) for k in keys})
    converted, alphas = StableDiffusionXLPipeline.lora_state_dict(state, unet_config=full.unet.config)
    assert len(alphas) == len(keys)

    def layers(prefix: str, convert: Any) -> set[str]:
        part = convert({k.removeprefix(prefix): v for k, v in converted.items() if k.startswith(prefix)})
        return {k.removesuffix(".lora_A.weight").removeprefix("text_model.") for k in part if ".lora_A." in k}

    assert layers("unet.", convert_unet_state_dict_to_peft) == set(_matching(full.unet, unet_targets))

    def text(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # as diffusers loads an encoder
        diffusers_part = convert_state_dict_to_diffusers(part)
        return convert_state_dict_to_peft(diffusers_part)  # type: ignore[no-any-return]

    for prefix, model in (("text_encoder.", full.text_encoder), ("text_encoder_2.", full.text_encoder_2)):
        assert layers(prefix, text) == {n.removeprefix("text_model.") for n in _matching(model, te_targets)}


def test_a_kohya_run_saves_kohyas_keys_and_diffusers_reads_all(trained, caplog) -> None:  # type: ignore[no-untyped-def]
    plan, result, models = trained
    tensors, _ = read(result.lora_path)
    unet = modules_of(tensors, "lora_unet_")
    te1, te2 = modules_of(tensors, "lora_te1_"), modules_of(tensors, "lora_te2_")
    assert (len(unet), len(te1), len(te2)) == (192, 12, 12)
    assert {"lora_unet_input_blocks_4_1_proj_in", "lora_unet_middle_block_1_proj_out",
            "lora_unet_output_blocks_3_1_proj_in",
            "lora_unet_output_blocks_0_1_transformer_blocks_1_ff_net_0_proj"} <= unet
    assert tensors["lora_unet_input_blocks_4_1_proj_in.lora_up.weight"].abs().sum() > 0  # it trained
    assert tensors["lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_up.weight"].abs().sum() > 0
    settings, prompt = {**plan["sample"], "steps": 3}, plan["sample"]["prompts"][0]
    pipe = build_tiny_pipeline(plan["model"]["tiny_seed"])
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe, settings, prompt, output_type="np")
    with caplog.at_level(logging.WARNING):
        logging.getLogger("diffusers").addHandler(caplog.handler)
        try:
            pipe.load_lora_weights(str(result.lora_path))
        finally:
            logging.getLogger("diffusers").removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "keys" in r.getMessage()], caplog.text  # no unexpected/missing
    for part, prefix in ((pipe.unet, "lora_unet_"), (pipe.text_encoder, "lora_te1_"),
                         (pipe.text_encoder_2, "lora_te2_")):
        assert sum(isinstance(m, LoraLayer) for m in part.modules()) == len(modules_of(tensors, prefix))
    loaded = render(pipe, settings, prompt, output_type="np")
    models.pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(loaded, render(models.pipe, settings, prompt, output_type="np"), atol=1e-4)
    assert np.abs(loaded - base).mean() > 1e-4
    trainable = sum(p.numel() for p in models.pipe.unet.parameters() if p.requires_grad) + sum(
        p.numel() for te in (models.pipe.text_encoder, models.pipe.text_encoder_2)
        for p in te.parameters() if p.requires_grad)
    assert trainable_param_count(plan, load_model("tiny")) == trainable  # the estimate counts proj and fc


def test_continue_from_a_kohya_file(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, result, _ = trained
    tensors, _ = read(result.lora_path)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old))
    found = read_lora_file(old)
    assert (found.modules, found.targets, found.unknown) == (["kohya"], ["unet", "te1", "te2"], [])
    method = plan_of(tmp_path, 'lora from "old.safetensors"\n')["method"]
    assert method["modules"] == ["kohya"] and method["unet_modules"] == KOHYA_UNET
    assert method["te_modules"] == KOHYA_TE and method["rank"] == 4
    assert plan_of(tmp_path, 'lora from "old.safetensors" modules attention+ff+proj\n')["method"]["init_from"]
    plan = method_plan(tmp_path, {**KOHYA, "init_from": str(old)})
    started = lora.kohya_state_dict(setup_model(plan).pipe, torch.float32)
    assert started.keys() == tensors.keys()
    assert all(torch.equal(started[k], tensors[k].float()) for k in tensors)
    for rank in (2, 8):  # a rank other than the file's names the resize tool
        compiled = compile_text(tmp_path, f'lora from "old.safetensors" rank {rank}\n')
        (diag,) = [d for d in compiled.diagnostics if d.code == "SDX0572"]
        assert "sdxlc lora resize" in (diag.help or ""), diag.help
    locon = dict(tensors)
    emb = "lora_unet_input_blocks_1_0_emb_layers_1"
    locon.update({f"{emb}.lora_down.weight": torch.zeros(4, 8), f"{emb}.lora_up.weight": torch.zeros(16, 4),
                  f"{emb}.alpha": torch.tensor(4.0)})
    save_file(locon, str(tmp_path / "locon.safetensors"))
    assert read_lora_file(tmp_path / "locon.safetensors").modules == ["kohya", "emb"]
    locon["lora_unet_time_embed_0.lora_down.weight"] = torch.zeros(4, 8)
    locon["lora_unet_time_embed_0.lora_up.weight"] = torch.zeros(8, 4)
    save_file(locon, str(tmp_path / "other.safetensors"))
    compiled = compile_text(tmp_path, 'lora from "other.safetensors"\n')
    unknown = [d for d in compiled.diagnostics if d.code == "SDX0572"]
    assert len(unknown) == 1 and "time_embed_0" in unknown[0].message  # no group holds it


def test_block_lr_puts_proj_and_emb_in_their_block() -> None:
    unet = build_tiny_pipeline(0).unet
    method = {**KOHYA, "unet_modules": [*KOHYA_UNET, "time_emb_proj"],
              "block_lr": [1e-4 * (b + 1) for b in range(23)]}
    lora.add_lora(unet, method)
    groups = lora.param_groups(unet, method, 1e-4)
    layers = lora.lora_layers(unet)
    block_of = {id(p): g["block"] for g in groups for p in g["params"]}
    for name, block in (("down_blocks.1.attentions.0.proj_in", 5), ("mid_block.attentions.0.proj_out", 11),
                        ("up_blocks.1.attentions.2.proj_in", 18),
                        ("down_blocks.0.resnets.0.time_emb_proj", 2),
                        ("mid_block.resnets.1.time_emb_proj", 12),
                        ("up_blocks.2.resnets.2.time_emb_proj", 21)):
        assert {block_of[id(p)] for p in lora.lora_parameters(layers[name])} == {block}, name
    assert lora.key_block("lora_unet_output_blocks_5_1_proj_in") == 18


def test_resize_and_merge_keep_proj_and_fc(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, result, _ = trained
    done = resize(result.lora_path, tmp_path / "small.safetensors", 2)
    small, _ = read(done.path)
    assert small.keys() == read(result.lora_path)[0].keys()
    for key in ("lora_unet_input_blocks_4_1_proj_in", "lora_te1_text_model_encoder_layers_0_mlp_fc2"):
        assert small[f"{key}.lora_down.weight"].shape[0] <= 2
    merged = merge_loras([(result.lora_path, 0.5), (done.path, 0.5)], tmp_path / "both.safetensors", None,
                         None)
    both, _ = read(merged.path)
    assert modules_of(both, "lora_unet_") == modules_of(small, "lora_unet_")


@pytest.mark.parametrize("text", ["lora rank 4 on te1 modules proj",
                                  "lora rank 4 on unet+te2 modules conv+emb"])
def test_a_text_encoder_with_only_unet_groups_is_an_error(tmp_path: Path, text: str) -> None:
    from check_helpers import diagnose, only
    _, diags = diagnose(tmp_path, text)
    found = only(diags, "SDX0588")
    assert found.help and "`on unet`" in found.help and found.span is not None


def test_unet_only_groups_with_kohya_on_the_text_encoders_are_fine(tmp_path: Path) -> None:
    from check_helpers import diagnose
    _, diags = diagnose(tmp_path, "lora rank 4 on unet+te1 modules kohya+conv+emb")
    assert not [d for d in diags if d.code == "SDX0588"]


def _header_file(path: Path, header: Any, data: bytes = b"\0" * 64) -> Path:
    import json
    import struct
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


_DOWN = "lora_unet_a_to_q.lora_down.weight"


@pytest.mark.parametrize(("header", "data", "says"), [
    ({_DOWN: {"dtype": "F32", "shape": [4, 4]}}, b"", "malformed"),
    ({_DOWN: {"dtype": "F32", "shape": "x", "data_offsets": [0, 64]}}, b"\0" * 64, "malformed"),
    ({_DOWN: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
      "lora_unet_a_to_q.alpha": {"dtype": "F32", "shape": [], "data_offsets": ["a", None]}},
     b"\0" * 64, "malformed"),
    ({"__metadata__": 5, _DOWN: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 64,
     "__metadata__"),
    ({_DOWN: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 10, "truncated"),
    ({_DOWN: {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}}, b"", "rank of 0"),
    ({"__metadata__": {"ss_network_dim": "-3"}, "lora_unet_a_to_q.lokr_w1": {
        "dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}, "lora_unet_a_to_q.lokr_w2": {
        "dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 64, "rank of -3"),
    ({"__metadata__": {"ss_network_alpha": "abc"},
      _DOWN: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 64, "not a number"),
    ({_DOWN: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
      "lora_unet_a_to_q.alpha": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}},
     b"\0" * 64, "alpha 0"),
])
def test_a_broken_or_hostile_file_to_continue_from_is_a_recipe_error(tmp_path: Path, header: Any, data: bytes,
                                                                   says: str) -> None:
    from sdxlc.pipeline import compile_recipe
    _header_file(tmp_path / "old.safetensors", header, data)
    recipe = tmp_path / "r.sdx"
    data = ROOT / "recipes" / "data" / "quickstart"
    recipe.write_text(f'model tiny\ndata "{data}"\nlora on unet from "old.safetensors"\n', encoding="utf-8")
    found = [d for d in compile_recipe(recipe).diagnostics if d.code == "SDX0571"]
    assert found and says in found[0].message, found


def test_overwrite_never_moves_aside_the_file_a_run_continues_from(tmp_path: Path) -> None:
    from sdxlc.plan import layout
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.safetensors").write_bytes(b"earlier")
    with pytest.raises(layout.OutputInUse, match="copy it out of the output folder"):
        layout.claim(out, "a" * 64, True, (out / "r.safetensors",))
    assert (out / "r.safetensors").exists() and not (out / "previous").exists()
    aside = layout.claim(out, "a" * 64, True, (tmp_path / "elsewhere.safetensors",))
    assert aside is not None and (aside / "r.safetensors").exists()
