"""What a CPU run's resident memory (RSS) holds besides its live tensors, and which mapped weights it never
reads: the estimate (sdxlc/estimate/analytic.py) and `sdxlc plan --exact` (runtime/exact/step.py) apply
the same rules on the cpu profile, so both compare with the peak RSS of a real run (bench/memory_vs_rss.py,
docs/ESTIMATE.md "Checked against real memory"). Pure standard library: the runtime imports it.

- `runtime_state`: the process's own memory beyond the imported packages — code pages of the kernels the
  run calls for the first time, the Python objects of the modules (and of peft's layers), the tokenizers,
  oneDNN's kernel caches. The cpu profile holds the measured bytes per model family (`runtime_state`);
  the compiler writes them into the plan's `vram_breakdown`, where `--exact` reads them.
- `cache_entries`: the cached latents and text-encoder outputs the run keeps in memory
  (sdxlc/plan/cache_memory.py): every entry without `to disk`, one batch's with it.
- Weights mapped but never read: diffusers memory-maps safetensors whose dtype is the run's, and a page
  becomes resident only when it is read. A training step reads a few hundred of the 49,408 token-embedding
  rows of each frozen text encoder, and never runs the VAE's decoder (sampling does).
"""

from __future__ import annotations

from typing import Any

RUNTIME_STATE = "runtime_state"  # the vram_breakdown term
CACHE_ENTRIES = "cache_entries"  # the vram_breakdown term of the in-memory caches (cache_memory.py)
MAPPED_KINDS = ("diffusers_folder", "hub")  # loaded from safetensors by diffusers' from_pretrained
FP32_BYTES = 4


def family(plan: dict[str, Any]) -> str:
    """The model family whose runtime state the profile measured: the built-in tiny model (its byte-level
    tokenizers, a few hundred modules) or the SDXL topology with CLIP's tokenizers."""
    model = plan["model"]
    return "tiny" if model["kind"] == "tiny" or model.get("architecture") == "tiny" else "sdxl"


# What the runtime state gains with the step's shape and method, over the family's measured bytes (the cpu
# profile's `runtime_state`: batch 1 without checkpointing; for the tiny model a fine-tune's). Measured on
# the tiny model (fp32, 64 px) in bench/memory_vs_rss.py's fresh worker process with /proc/self/smaps and
# glibc's mallinfo2 read at every seam (load, encode, forward, backward, optimizer step); state = steady
# peak RSS - `--exact`'s tensors, over LoRA and fine-tune, batch 1/2/4, checkpointing on/off (10 recipes,
# 42-59 MiB; docs/ESTIMATE.md "Checked against real memory"). None grows with the batch: 2 and 4 hold the
# same.
# - Checkpointing: torch.utils.checkpoint's recompute inside the backward pass runs code a plain backward
#   does not: +3.3-3.4 MiB of libtorch_cpu code pages and +0.7 MiB of libtorch_python, at any batch.
CHECKPOINTING_STATE = 4 << 20
# - oneDNN convolutions: ATen sends an fp32 CPU convolution to oneDNN when its batch is over 1 or its input
#   holds over 20,480 elements (`use_mkldnn` in aten/src/ATen/native/Convolution.cpp), to its own
#   `slow_conv2d` otherwise. The tiny UNet's convolutions at 64 px batch 1 (at most 48 channels x 64 latent
#   pixels) run on ATen's kernels, at batch 2 and 4 on oneDNN (torch.profiler: `mkldnn_convolution`): +2.6 MiB
#   of libtorch_cpu code pages (oneDNN's forward and backward convolution drivers), +1.0-1.6 MiB of oneDNN's
#   JIT-generated kernels (anonymous executable pages) and +4-6 MiB of glibc heap (primitive descriptors
#   and scratch kept by oneDNN's primitive cache, and free chunks left by the small tensors it works on;
#   ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 takes 3.4 MiB off at batch 4 and nothing at batch 1).
ONEDNN_CONV_STATE = 10 << 20
ONEDNN_MIN_ELEMENTS = 20480  # ATen's threshold for a batch-1 convolution input
# The most channels a UNet convolution takes in at the full latent resolution (the tiny model's last up
# block: 32 upsampled + 16 skipped), so the most elements per sample of any of its convolutions, for the
# families whose measured recipe ran the UNet's convolutions on ATen's kernels. The SDXL topology's (96-320
# channels at the top level, rows at 128 px and more) always run on oneDNN: the share is in its measured
# bytes.
UNET_CONV_CHANNELS = {"tiny": 48}
# - peft's adapter layers (a `lora`-kind method): the wrapping modules, their ModuleDicts and dropout
#   objects. On the tiny model (136 attention layers) RSS after the load and attach is 5.3-5.6 MiB above a
#   fine-tune's (0.5 MiB of it LoRA tensors), and the steady state 1.6-4.6 MiB above (mean 3.5 MiB over
#   the recipe pairs above). The SDXL topology's measured bytes come from LoRA rows: they hold its layers.
ADAPTER_STATE = {"tiny": 3670016}  # 3.5 MiB
# - `compile` (torch.compile of the UNet's step): TorchInductor's modules, the traced graphs, the generated
#   kernels' libraries and, in a first run, the compile itself (its worker processes are not in the peak).
#   On the tiny-shapes model (96 px, batch 2, LoRA on attention), a first run's peak RSS is 310 MiB above
#   the eager run's, a run on a filled inductor cache 122 MiB above (bench/results/compile_speed.md). The
#   estimate counts a first run. Measured on the tiny topology only: the SDXL topology's graphs are larger.
COMPILE_STATE = 310 << 20


def unet_convs_on_onednn(plan: dict[str, Any], latent_px: int) -> bool:
    """Whether a training step's UNet convolutions run on oneDNN (ATen's rule, above): at a batch over 1,
    or where the widest input at the full latent resolution (`UNET_CONV_CHANNELS` x `latent_px`, the largest
    bucket's latent pixels) holds over 20,480 elements. Families without listed channels run on oneDNN at
    every size that trains."""
    channels = UNET_CONV_CHANNELS.get(family(plan))
    return (int(plan["training"]["batch_size"]) > 1 or channels is None
            or channels * latent_px > ONEDNN_MIN_ELEMENTS)


def runtime_state(plan: dict[str, Any], measured: int, latent_px: int) -> int:
    """The process's own resident memory of this plan's run: the family's `measured` bytes (the cpu
    profile's; 0 where it measured none, as on GPU profiles, gives 0) plus checkpointing's share, plus
    oneDNN's where this plan's UNet convolutions run on oneDNN and the family's measured recipe's did not,
    plus peft's adapter layers where the family's measured bytes do not hold them, plus torch.compile's
    state where the plan compiles."""
    if not measured:
        return 0
    state = measured + (CHECKPOINTING_STATE if plan["training"]["gradient_checkpointing"] else 0)
    if family(plan) in UNET_CONV_CHANNELS and unet_convs_on_onednn(plan, latent_px):
        state += ONEDNN_CONV_STATE
    if plan["method"]["kind"] == "lora":
        state += ADAPTER_STATE.get(family(plan), 0)
    if plan["training"].get("compile"):
        state += COMPILE_STATE
    return state


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
