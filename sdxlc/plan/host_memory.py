"""What a CPU run's resident memory (RSS) holds besides its live tensors, and which mapped weights it never
reads: the estimate (sdxlc/estimate/analytic.py) and `sdxlc plan --exact` (runtime/exact/step.py) apply
the same rules on the cpu profile, so both compare with the peak RSS of a real run (bench/memory_vs_rss.py,
docs/ESTIMATE.md "Checked against real memory"). Pure standard library: the runtime imports it.

- `runtime_state`: the process's own memory beyond the imported packages — code pages of the kernels the
  run calls for the first time, the Python objects of the modules (and of peft's layers), the tokenizers,
  oneDNN's kernel caches. The cpu profile holds the measured bytes per model family (`runtime_state`);
  the compiler writes them into the plan's `vram_breakdown`, where `--exact` reads them.
- Weights mapped but never read: diffusers memory-maps safetensors whose dtype is the run's, and a page
  becomes resident only when it is read. A training step reads a few hundred of the 49,408 token-embedding
  rows of each frozen text encoder, and never runs the VAE's decoder (sampling does).
"""

from __future__ import annotations

from typing import Any

RUNTIME_STATE = "runtime_state"  # the vram_breakdown term
MAPPED_KINDS = ("diffusers_folder", "hub")  # loaded from safetensors by diffusers' from_pretrained
FP32_BYTES = 4


def family(plan: dict[str, Any]) -> str:
    """The model family whose runtime state the profile measured: the built-in tiny model (its byte-level
    tokenizers, a few hundred modules) or the SDXL topology with CLIP's tokenizers."""
    model = plan["model"]
    return "tiny" if model["kind"] == "tiny" or model.get("architecture") == "tiny" else "sdxl"


def unread_mapped(
    plan: dict[str, Any], device: str, token_embedding: dict[str, int], vae_decoder: int
) -> dict[str, int]:
    """Bytes of each frozen component (`te1`, `te2`, `vae`) that a run on `device` maps but never reads
    (on the CPU only: a GPU run copies its weights to the device): the
    token-embedding table (`token_embedding`: its parameters per encoder) and the VAE decoder
    (`vae_decoder` parameters). Only fp32 runs of a diffusers folder or hub model: another dtype or a
    single file is converted on load, a copy that is resident whole. Assumes the files hold fp32 weights,
    as the diffusers folders of SDXL do (an fp16-only folder is converted, and resident whole)."""
    if device != "cpu" or plan["model"]["kind"] not in MAPPED_KINDS:
        return {}
    if plan["precision"]["mixed"] != "fp32":
        return {}
    method, cache = plan["method"], plan["data"]["cache"]
    out: dict[str, int] = {}
    if method["kind"] != "embedding" and not cache["text_encoder"]:  # new rows: the table is copied
        for part in ("te1", "te2"):
            if part not in method["targets"]:
                out[part] = int(token_embedding[part]) * FP32_BYTES
    if not cache["latents"]:
        out["vae"] = int(vae_decoder) * FP32_BYTES
    return out
