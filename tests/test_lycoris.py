"""LoHa, LoKr and DoRA: the `loha` / `lokr` statements and the `dora` clause, a few real training steps of
each on the tiny model, the LyCORIS/kohya keys and metadata of the saved file, the delta weight a reader
computes from the file (ComfyUI's formulas, re-implemented here) equal to what peft trained, continuing
`from` a saved file, and the checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from check_helpers import diagnose, only
from peft import inject_adapter_in_model
from safetensors import safe_open

from runtime.methods import lora, lycoris
from runtime.train.run import run_plan
from sdxlc.lang.lower import load_recipe
from sdxlc.pipeline import compile_recipe
from sdxlc.resolve.method import read_lora_file

ROOT = Path(__file__).resolve().parent.parent
LINES = {
    "loha": "loha rank 4 alpha 2 on unet+te1 modules attention+conv",
    "lokr": "lokr rank 2 factor 4 on unet",
    "dora": "lora rank 4 on unet dora modules attention+conv",
}


def recipe(folder: Path, line: str, steps: int = 2, lr: str = "1e-2") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if not data.exists():
        data.symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    path = folder / "r.sdx"
    path.write_text(f'sdx 1\nmodel tiny\nprofile cpu\ndata "data" caption .txt\nresolution 64 no buckets\n'
                    f'{line}\nlr {lr}\nsteps {steps}\nseed 3\noutput "out"\n', encoding="utf-8")
    return path


def plan_of(path: Path) -> dict[str, Any]:
    compiled = compile_recipe(path)
    assert compiled.plan is not None, compiled.diagnostics
    return compiled.plan


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


@pytest.fixture(scope="module", params=sorted(LINES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    plan = plan_of(recipe(tmp_path_factory.mktemp(request.param), LINES[request.param]))
    result, models = run_plan(plan, progress=False)
    return request.param, plan, result, models


def test_statements_lower_to_the_lora_section(tmp_path: Path) -> None:
    path = tmp_path / "r.sdx"
    path.write_text("loha rank 8 alpha 4 on unet\n", encoding="utf-8")
    assert load_recipe(path).doc["lora"] == {"adapter": "loha", "rank": 8, "alpha": 4, "targets": ["unet"]}
    path.write_text("lokr rank 8 factor 4 on unet\n", encoding="utf-8")
    assert load_recipe(path).doc["lora"] == {"adapter": "lokr", "rank": 8, "factor": 4, "targets": ["unet"]}
    path.write_text("lora rank 8 on unet dora\n", encoding="utf-8")
    assert load_recipe(path).doc["lora"] == {"rank": 8, "targets": ["unet"], "dora": True}


def test_plan_fields(tmp_path: Path) -> None:
    loha, _ = diagnose(tmp_path, "loha rank 4")
    assert {k: loha["method"][k] for k in ("kind", "adapter", "dora", "factor")} == \
        {"kind": "lora", "adapter": "loha", "dora": False, "factor": None}
    lokr, _ = diagnose(tmp_path, "lokr rank 4")
    assert (lokr["method"]["adapter"], lokr["method"]["factor"]) == ("lokr", -1)  # LyCORIS' default
    dora, _ = diagnose(tmp_path, "lora rank 4 dora")
    assert (dora["method"]["adapter"], dora["method"]["dora"]) == ("lora", True)


def test_trains_and_saves_lycoris_keys(trained: Any) -> None:
    name, plan, result, models = trained
    assert math.isfinite(result.final_loss) and result.steps == 2
    now = lora.kohya_state_dict(models.pipe, torch.float32)
    assert all(torch.isfinite(t).all() for t in now.values())
    tensors, meta = read(result.lora_path)
    assert set(tensors) == set(now)
    prefix = "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_q"  # a tiny-UNet attention layer
    suffixes = {k.removeprefix(prefix + ".") for k in tensors if k.startswith(prefix + ".")}
    expected = {
        "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
        "lokr": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},  # rank 2 < width/2: w2 decomposed
        "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"},
    }[name]
    assert suffixes == expected
    zero_start = {"loha": "hada_w2_b", "lokr": "lokr_w2_b", "dora": "lora_up.weight"}[name]
    assert now[f"{prefix}.{zero_start}"].abs().sum() > 0  # it starts at zero: the adapter trained
    args = {"loha": '{"algo": "loha"}', "lokr": '{"algo": "lokr", "factor": "4"}',
            "dora": '{"algo": "lora", "dora_wd": "True", "wd_on_output": "True"}'}[name]
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["ss_network_args"].endswith(args[1:])  # after conv_dim/conv_alpha
    assert meta["ss_network_dim"] == str(plan["method"]["rank"])
    if name == "loha":
        te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
        assert f"{te1}.hada_w1_a" in tensors
    found = read_lora_file(result.lora_path)  # what `from` this file resolves to (header only)
    assert (found.adapter, found.dora, found.rank, found.alpha) == (
        plan["method"]["adapter"], name == "dora", plan["method"]["rank"], plan["method"]["alpha"])
    assert found.factor == plan["method"]["factor"]
    if name == "dora":  # kohya-style DoRA: one magnitude per output row, (out, 1) or (out, 1, 1, 1)
        assert tensors[f"{prefix}.dora_scale"].shape == (64, 1)
        assert tensors["lora_unet_input_blocks_1_0_in_layers_2.dora_scale"].shape == (16, 1, 1, 1)


# --- the saved tensors give peft's delta weight, by the formulas a reader (ComfyUI) applies -------------


def _loha_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    alpha = t["alpha"] / t["hada_w1_b"].shape[0]
    return ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(shape) * alpha


def _lokr_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    dim = None
    w1 = t.get("lokr_w1")
    if w1 is None:
        dim, w1 = t["lokr_w1_b"].shape[0], t["lokr_w1_a"] @ t["lokr_w1_b"]
    w2 = t.get("lokr_w2")
    if w2 is None:
        dim, w2 = t["lokr_w2_b"].shape[0], t["lokr_w2_a"] @ t["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = t["alpha"] / dim if dim is not None else 1.0
    return torch.kron(w1, w2).reshape(shape) * scale


def _lora_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    return (up.flatten(1) @ down.flatten(1)).reshape(shape) * (t["alpha"] / down.shape[0])


def _file_weight(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The weight a reader applies: W + ΔW, and with `dora_scale` each output row rescaled to it."""
    if "hada_w1_a" in t:
        delta = _loha_delta(t, weight.shape)
    elif "lora_down.weight" in t:
        delta = _lora_delta(t, weight.shape)
    else:
        delta = _lokr_delta(t, weight.shape)
    merged = weight + delta
    if "dora_scale" not in t:
        return merged
    norm = merged.flatten(1).norm(dim=1).reshape(t["dora_scale"].shape)
    return merged * t["dora_scale"] / norm


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(128, 64)
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)


@pytest.mark.parametrize("method", [
    {"adapter": "loha", "rank": 3, "alpha": 2.0, "dora": False, "factor": None, "dropout": 0.0},
    {"adapter": "lokr", "rank": 2, "alpha": 3.0, "dora": False, "factor": -1, "dropout": 0.0},  # w2 a·b
    {"adapter": "lokr", "rank": 2, "alpha": 3.0, "dora": False, "factor": 4, "dropout": 0.0},
    {"adapter": "lokr", "rank": 64, "alpha": 3.0, "dora": False, "factor": 8, "dropout": 0.0},  # full
    {"adapter": "lora", "rank": 4, "alpha": 2.0, "dora": True, "factor": None, "dropout": 0.0},
], ids=["loha", "lokr-auto", "lokr-4", "lokr-full", "dora"])
def test_file_delta_equals_peft(method: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = inject_adapter_in_model(lycoris.config(method, ["lin", "conv"]), Small())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "base_layer" not in name:  # trained-looking adapter values, not the no-op start
                parameter.copy_(torch.randn_like(parameter) * 0.3 + (1.0 if "magnitude" in name else 0.0))
    for name, x in (("lin", torch.randn(5, 128)), ("conv", torch.randn(2, 16, 6, 6))):
        layer = getattr(model, name)
        saved = lycoris.layer_state("k", layer, torch.float64)
        t = {key.removeprefix("k."): value for key, value in saved.items()}
        base = layer.get_base_layer()
        weight = _file_weight(t, base.weight.double()).float()
        if method["adapter"] != "lora":
            delta = layer.get_delta_weight("default")
            torch.testing.assert_close(weight - base.weight, delta, rtol=1e-4, atol=1e-5)
        expected = layer(x)
        got = F.linear(x, weight, base.bias) if name == "lin" else F.conv2d(x, weight, base.bias, padding=1)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        fresh = inject_adapter_in_model(lycoris.config(method, [name]), Small())
        lycoris.load_layer(Path("x"), "k", getattr(fresh, name), {k: v.float() for k, v in saved.items()})
        getattr(fresh, name).base_layer.load_state_dict(base.state_dict())
        torch.testing.assert_close(getattr(fresh, name)(x), expected, rtol=1e-4, atol=1e-4)


def test_continue_from_a_saved_file(trained: Any, tmp_path: Path) -> None:
    """`lora from` a LoHa file: adapter and modules come from the file, its weights load, and a step at a
    negligible learning rate saves them back unchanged. (DoRA's `dora_scale` loads by the same code:
    test_file_delta_equals_peft loads it into a fresh layer.)"""
    name, _, result, _ = trained
    if name != "loha":
        pytest.skip("the LoHa file stands for the others: every adapter loads through the same code")
    plan = plan_of(recipe(tmp_path, f'lora from "{result.lora_path}"', steps=1, lr="1e-12"))
    method = plan["method"]
    assert (method["adapter"], method["dora"], method["factor"]) == ("loha", False, None)
    assert method["modules"] == ["attention", "conv"]
    again, _ = run_plan(plan, progress=False)
    assert math.isfinite(again.final_loss)
    saved, continued = read(result.lora_path)[0], read(again.lora_path)[0]
    assert set(saved) == set(continued)
    for key, value in saved.items():
        torch.testing.assert_close(continued[key].float(), value.float(), rtol=2e-3, atol=1e-6)


def test_a_file_of_another_adapter_is_refused(trained: Any, tmp_path: Path) -> None:
    name, _, result, _ = trained
    if name != "loha":
        pytest.skip("the LoHa file stands for the others")
    path = recipe(tmp_path, f'lokr from "{result.lora_path}"')
    compiled = compile_recipe(path)
    assert compiled.plan is None
    assert [d.code for d in compiled.errors] == ["SDX0572"]
    assert "(loha)" in compiled.errors[0].message


def test_checks(tmp_path: Path) -> None:
    _, diags = diagnose(tmp_path, "lokr rank 4 dora")
    assert "DoRA trains on top of a LoRA only" in only(diags, "SDX0585").message
    _, diags = diagnose(tmp_path, "loha rank 4 dropout 0.1")
    assert only(diags, "SDX0586").help
    _, diags = diagnose(tmp_path, "lokr rank 4 factor 0")
    assert only(diags, "SDX0587")
    _, diags = diagnose(tmp_path, "lora rank 4 factor 4")
    assert "only LoKr" in only(diags, "SDX0579").message
    _, diags = diagnose(tmp_path, "lokr rank 4 factor 4")
    assert not [d for d in diags if d.severity == "error"]


@pytest.fixture(scope="module")
def tiny_modules() -> dict[str, torch.nn.Module]:
    from runtime.tools.lora_modules import load_model, weight_modules

    return weight_modules(load_model("tiny"))


def test_merge_into_the_model(trained: Any, tiny_modules: dict[str, torch.nn.Module]) -> None:
    """`sdxlc lora merge --model` of each file gives the weights peft merges itself; resize, extract and
    merging into one LoRA (which read a low-rank product) refuse the file."""
    from runtime.tools.lora_svd import BadRequest, read_lora
    from runtime.tools.lycoris_merge import merge_file

    _, _, result, models = trained
    with pytest.raises(BadRequest, match="merge --model"):
        read_lora(result.lora_path)
    before = {key: module.weight.detach().clone() for key, module in tiny_modules.items()}
    try:
        assert merge_file(result.lora_path, 1.0, tiny_modules) == len(lora.named_layers(models.pipe))
        _same_as_peft(models, tiny_modules)
    finally:
        with torch.no_grad():
            for key, weight in before.items():
                tiny_modules[key].weight.copy_(weight)


def _same_as_peft(models: Any, modules: dict[str, torch.nn.Module]) -> None:
    for key, layer in sorted(lora.named_layers(models.pipe).items())[::4]:  # every 4th: peft merges slowly
        layer.merge(safe_merge=True)
        torch.testing.assert_close(modules[key].weight, layer.get_base_layer().weight, rtol=2e-3, atol=2e-4)
        layer.unmerge()


def test_lokr_factor_read_from_the_shapes(tmp_path: Path) -> None:
    """A LoKr file without `ss_network_args`: its factor comes from w1's shape, as LyCORIS reads it."""
    from safetensors.torch import save_file

    key = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    for w1, factor in (((4, 4), 4), ((8, 8), -1)):  # a 64 × 64 layer: -1 splits it 8 × 8
        tensors = {f"{key}.lokr_w1": torch.zeros(w1), f"{key}.lokr_w2_a": torch.zeros(64 // w1[0], 2),
                   f"{key}.lokr_w2_b": torch.zeros(2, 64 // w1[1]), f"{key}.alpha": torch.tensor(1.0)}
        save_file(tensors, tmp_path / "k.safetensors")
        found = read_lora_file(tmp_path / "k.safetensors")
        assert (found.adapter, found.rank, found.factor, found.modules) == ("lokr", 2, factor, ["attention"])


@pytest.mark.parametrize("line", ["lokr rank 8 factor 4 on unet modules kohya",
                                  "lora rank 8 on unet modules kohya dora",
                                  "loha rank 8 alpha 4 on unet modules kohya"])
def test_kohya_export_and_import_keep_the_adapter(tmp_path: Path, line: str) -> None:
    """`sdxlc export kohya` writes LyCORIS' network (`lycoris.kohya`, `algo=…`); `sdxlc import kohya` reads
    it back to the same method."""
    from sdxlc.tools.kohya.convert import import_kohya
    from sdxlc.tools.kohya.export import export_files

    first = plan_of(recipe(tmp_path, line))
    folder = tmp_path / "kohya"
    folder.mkdir()
    for name, text in export_files(first, folder).items():
        (folder / name).write_text(text, encoding="utf-8")
    assert 'network_module = "lycoris.kohya"' in (folder / "config.toml").read_text(encoding="utf-8")
    imported = import_kohya([folder / "config.toml"], tmp_path)
    line_out = next(x for x in imported.text.splitlines() if x.startswith(("lora", "loha", "lokr")))
    again = plan_of(recipe(tmp_path / "again", line_out))
    assert again["method"] == first["method"]


def test_estimate_counts_the_adapters(tmp_path: Path) -> None:
    """LoHa: twice a LoRA's parameters and each adapted layer's ΔW kept for backward (the tiny UNet's
    attention weights: 474112 values); LoKr: at most a LoRA's; DoRA: a LoRA's and a magnitude per row."""
    def terms(line: str) -> dict[str, int]:
        plan = plan_of(recipe(tmp_path / line.replace(" ", "-"), line))
        return dict(plan["estimate"]["vram_breakdown"])

    lora_, loha, lokr = (terms(f"{word} rank 4 on unet") for word in ("lora", "loha", "lokr"))
    dora = terms("lora rank 4 on unet dora")
    assert loha["trainable_params"] == 2 * lora_["trainable_params"]
    assert loha["activations"] - lora_["activations"] == 474112 * 4
    assert lokr["trainable_params"] == lora_["trainable_params"]  # the upper bound
    assert lora_["trainable_params"] < dora["trainable_params"] < 1.2 * lora_["trainable_params"]
    assert terms("loha rank 4 on unet checkpointing")["activations"] == terms(
        "lora rank 4 on unet checkpointing")["activations"]


def test_gen_adds_the_file_to_the_model(trained: Any, tmp_path: Path) -> None:
    """`sdxlc gen --lora` of a LoHa, LoKr or DoRA file (which diffusers cannot load) gives the model the
    weights peft merges itself; at weight 0 the model is unchanged."""
    from runtime.gen import generate as gen
    from runtime.tools.lora_modules import weight_modules

    _, _, result, models = trained
    plain, _ = gen.prepare(gen.GenRequest(model="tiny", prompts=["a cat"], out=tmp_path))
    zero, _ = gen.prepare(gen.GenRequest(model="tiny", prompts=["a cat"], out=tmp_path,
                                         loras=[(result.lora_path, 0.0)]))
    full, _ = gen.prepare(gen.GenRequest(model="tiny", prompts=["a cat"], out=tmp_path,
                                         loras=[(result.lora_path, 1.0)]))
    base, unchanged, merged = weight_modules(plain), weight_modules(zero), weight_modules(full)
    assert all(torch.equal(base[key].weight, unchanged[key].weight) for key in base)
    assert any(not torch.equal(base[key].weight, merged[key].weight) for key in base)
    _same_as_peft(models, merged)


@pytest.mark.parametrize(("method", "text"), [
    ({"adapter": "loha", "dora": False, "factor": None}, "LoHa rank 8 (unet)"),
    ({"adapter": "lokr", "dora": False, "factor": 4}, "LoKr rank 8 factor 4 (unet)"),
    ({"adapter": "lora", "dora": True, "factor": None}, "DoRA rank 8 (unet)"),
    ({"adapter": "lora", "dora": False, "factor": None}, "LoRA rank 8 (unet)"),
])
def test_the_run_summary_names_the_adapter(method: dict[str, Any], text: str) -> None:
    from sdxlc.cli.main import _method_text
    assert _method_text({"kind": "lora", "targets": ["unet"], "rank": 8, **method}) == text
