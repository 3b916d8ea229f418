"""Training methods in the compiler: the plan's `method` per kind, the LoRA file header read, the
method checks and the estimator's method terms."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from sdxlc.estimate.analytic import estimate, load_model, trainable_param_count
from sdxlc.pipeline import Compiled, compile_recipe
from sdxlc.resolve.method import LoraFileError, read_lora_file
from sdxlc.resolve.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent
HEAD = 'model tiny\ndata "data"\nsteps 4\n'


def compile_text(tmp_path: Path, text: str, head: str = HEAD) -> Compiled:
    data = tmp_path / "data"
    if not data.exists():
        data.symlink_to(ROOT / "recipes" / "data" / "quickstart", target_is_directory=True)
    recipe = tmp_path / "r.sdx"
    recipe.write_text(head + text, encoding="utf-8")
    return compile_recipe(recipe)


def plan_of(tmp_path: Path, text: str) -> dict[str, Any]:
    compiled = compile_text(tmp_path, text)
    assert compiled.plan is not None, [d.message for d in compiled.diagnostics]
    assert not [d for d in compiled.diagnostics if d.severity == "error"]
    return compiled.plan


def codes(compiled: Compiled) -> list[str]:
    return [d.code for d in compiled.diagnostics if d.code.startswith("SDX05")]


def write_safetensors(
    path: Path, tensors: dict[str, tuple[str, list[int], bytes]], meta: dict[str, str]
) -> None:
    """A safetensors file written by hand (no torch): name → (dtype, shape, raw bytes)."""
    header: dict[str, Any] = {"__metadata__": meta}
    offset, blobs = 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def kohya_file(path: Path, modules: list[str], rank: int = 6, alpha: float = 3.0, dtype: str = "F32") -> Path:
    tensors = {}
    for module in modules:
        tensors[f"{module}.lora_down.weight"] = ("F32", [rank, 8], b"\0" * (4 * rank * 8))
        tensors[f"{module}.lora_up.weight"] = ("F32", [8, rank], b"\0" * (4 * rank * 8))
        raw = struct.pack("<f", alpha) if dtype == "F32" else struct.pack("<f", alpha)[2:]
        tensors[f"{module}.alpha"] = (dtype, [], raw)
    write_safetensors(path, tensors, {"ss_network_dim": str(rank)})
    return path


# --- the plan's method ---------------------------------------------------------------------------


def test_lora_on_the_text_encoders_with_own_rates_and_layer_kinds(tmp_path: Path) -> None:
    text = "lr 1e-4\nlora rank 4 on unet+te1+te2 modules attention+ff+conv te2 lr 2e-5\n"
    method = plan_of(tmp_path, text)["method"]
    assert method["kind"] == "lora" and method["targets"] == ["unet", "te1", "te2"]
    assert (method["lr_te1"], method["lr_te2"]) == (1e-4, 2e-5)  # te1 takes the optimizer's rate
    assert method["unet_modules"][:6] == ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    assert "conv1" in method["unet_modules"] and "downsamplers.0.conv" in method["unet_modules"]
    assert method["te_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert method["init_from"] is None


def test_the_default_method_is_a_unet_lora(tmp_path: Path) -> None:
    method = plan_of(tmp_path, "")["method"]
    assert method["kind"] == "lora" and method["targets"] == ["unet"] and method["modules"] == ["attention"]
    assert method["lr_te1"] is None and method["te_modules"] == []


def test_finetune_and_embedding_plans(tmp_path: Path) -> None:
    fine = plan_of(tmp_path, "lr 1e-5\nfinetune unet+te1 te1 lr 1e-6 full bf16\nbf16\nprofile rtx4090-24gb\n"
                             "save diffusers\n")["method"]
    assert fine == {"kind": "finetune", "targets": ["unet", "te1"], "block_lr": None, "lr_te1": 1e-6,
                    "lr_te2": None, "full_bf16": True, "fused_backward": False, "save_diffusers": True}
    emb = plan_of(tmp_path, 'embedding "<sks>" init "dog" vectors 3\n')
    assert emb["method"]["tokens"] == ["<sks>", "<sks>_1", "<sks>_2"]
    assert emb["method"]["captions"] == "file" and emb["method"]["template"] == "object"
    assert emb["method"]["targets"] == ["te1", "te2"]
    assert emb["provenance"]["method.token"]["source"] == "recipe"
    styled = plan_of(tmp_path, 'embedding "<sks>" template style\n')["method"]
    assert styled["captions"] == "template" and styled["init"] == "*"


# --- continuing from a LoRA file -----------------------------------------------------------------


def test_lora_file_header_gives_rank_alpha_models_and_layers(tmp_path: Path) -> None:
    path = kohya_file(tmp_path / "old.safetensors", [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_1_0_in_layers_2",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1",
    ], rank=6, alpha=3.0, dtype="BF16")
    found = read_lora_file(path)
    assert (found.rank, found.alpha) == (6, 3.0)
    assert found.targets == ["unet", "te2"] and found.modules == ["attention", "ff", "conv"]
    assert found.unknown == []
    method = plan_of(tmp_path, 'lora from "old.safetensors"\n')["method"]
    assert (method["rank"], method["alpha"], method["targets"]) == (6, 3.0, ["unet", "te2"])
    assert method["init_from"] == str(path.resolve())


def test_lora_file_problems(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"12")
    with pytest.raises(LoraFileError):
        read_lora_file(tmp_path / "junk.safetensors")
    assert codes(compile_text(tmp_path, 'lora from "missing.safetensors"\n')) == ["SDX0571"]
    kohya_file(tmp_path / "old.safetensors", ["lora_unet_time_embed_0",
                                              "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_k"])
    compiled = compile_text(tmp_path, 'lora from "old.safetensors" rank 8\n')
    assert codes(compiled) == ["SDX0572", "SDX0572"]  # time_embed is no layer kind sdxlc trains; rank differs
    assert "rank" in compiled.diagnostics[-1].message


# --- checks ------------------------------------------------------------------------------------------


def test_two_methods_show_both_lines(tmp_path: Path) -> None:
    compiled = compile_text(tmp_path, "lora rank 4\nfinetune unet\n")
    (diag,) = [d for d in compiled.diagnostics if d.code == "SDX0570"]
    assert diag.span is not None and diag.span.line == 5
    assert [span.line for span, _ in diag.related] == [4]


@pytest.mark.parametrize(("text", "code"), [
    ('embedding "<t>"\ncache te\n', "SDX0573"),
    ("finetune unet+te2\ncache te\n", "SDX0521"),
    ("lora on unet+te1\ncache te\n", "SDX0521"),
    ("finetune unet fused backward\n", "SDX0574"),
    ("finetune unet fused backward\noptimizer adafactor\nbatch 1 accumulate 2\n", "SDX0575"),
    ("finetune unet fused backward\noptimizer adafactor\ngpus 2\n", "SDX0576"),
    ("finetune unet full bf16\n", "SDX0577"),
    ("lora rank 4\nsave diffusers\n", "SDX0578"),
    ('embedding "<t>"\nblock_lr 1e-4 x23\n', "SDX0579"),
    ("finetune unet te1 lr 1e-5\n", "SDX0579"),
])
def test_method_checks(tmp_path: Path, text: str, code: str) -> None:
    assert code in codes(compile_text(tmp_path, text))


def test_fused_backward_with_adafactor_compiles(tmp_path: Path) -> None:
    method = plan_of(tmp_path, "finetune unet fused backward\noptimizer adafactor\n")["method"]
    assert method["fused_backward"] is True


# --- the estimate -----------------------------------------------------------------------------------


def test_estimate_terms_per_method(tmp_path: Path) -> None:
    profile = load_profile("h200-141gb")
    head = ('model "stabilityai/stable-diffusion-xl-base-1.0"\ndata "data"\nsteps 4\n'
            "profile h200-141gb\nbf16\n")

    def terms(text: str) -> dict[str, int]:
        compiled = compile_text(tmp_path, text, head)
        assert compiled.plan is not None
        return dict(estimate(compiled.plan, profile)["vram_breakdown"])

    lora, fine = terms("lora rank 8\n"), terms("finetune unet\noptimizer adafactor\n")
    assert fine["unet_weights"] == 2_567_463_684 * 4 and "trainable_params" not in fine  # fp32 master weights
    # without checkpointing the end of the forward pass is the peak (`--exact`: 21.70 GiB, estimate 21.78):
    # activations and autocast's bf16 weight copies, before any gradient exists
    assert "gradients" not in fine and fine["autocast_weight_copies"] == 2_567_463_684 * 2
    checkpointed = terms("finetune unet\noptimizer adafactor\ncheckpointing\n")
    assert checkpointed["gradients"] == 2_567_463_684 * 4 > 100 * lora["gradients"]
    fused = terms("finetune unet fused backward full bf16\noptimizer adafactor\n")
    assert fused["gradients"] == 29_491_200 * 2  # the largest tensor's gradient, not the model's
    half = terms("finetune unet full bf16\noptimizer adafactor\n")
    assert half["unet_weights"] == 2_567_463_684 * 2
    emb = compile_text(tmp_path, 'embedding "<t>" vectors 4\n', head).plan
    assert emb is not None
    assert trainable_param_count(emb, load_model("sdxl")) == 4 * (768 + 1280)
