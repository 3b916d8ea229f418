"""The estimate's terms for the low-VRAM levers: `base fp8` and the offload words (docs/ESTIMATE.md
"Low-VRAM levers").

`base fp8` stores the frozen linear and convolution weights of the UNet and the text encoders in float8
(1 byte); norms, embeddings and biases stay in the compute dtype. Each layer upcasts its weight for its
own computation and keeps only the float8 weight for the backward pass (runtime/model/fp8.py): one
layer's upcast copy is live at a time, and at the end of the forward pass (the peak) that is the last
layer's, which `--exact` does not tell apart from the activations; it is not a term of its own.

An offloaded component is on the GPU only while it encodes a batch, when the UNet's activations do not
exist yet: its weights leave the training peak and come back in an encode phase, which is the peak only
when it is larger than the activations.
"""

from __future__ import annotations

from typing import Any

# Parameters in the linear and convolution weights (what float8 stores), counted on the models built
# from their configs: SDXL UNet 99.9%, CLIP-L 69% (its token embedding is 38 M), bigG 91%.
FP8_PARAMS: dict[str, dict[str, int]] = {
    "sdxl": {"unet": 2_565_880_320, "te1": 84_934_656, "te2": 630_784_000},
    "tiny": {"unet": 2_078_336, "te1": 16_384, "te2": 39_168},
}
FP8_BYTES = 1
# Offload levers with nothing left to do once the cache lever that frees the same component is chosen.
MOOT = {"offload_text_encoders": "cache_text_encoder", "offload_vae": "cache_latents"}
RELOAD_KEY = "offload_reload_extra"


SDXL_PARAMS = {"unet": 2_567_463_684, "te1": 123_060_480, "te2": 694_659_840}  # schema/models/sdxl.json


def fp8_params(plan: dict[str, Any], model: dict[str, Any], part: str) -> int:
    """Parameters of a part that `base fp8` stores in float8; another architecture's in SDXL's proportion."""
    name = str(plan.get("model", {}).get("architecture") or "sdxl")
    if name in FP8_PARAMS:
        return FP8_PARAMS[name][part]
    return int(int(model["params"][part]) * FP8_PARAMS["sdxl"][part] / SDXL_PARAMS[part])


def frozen_bytes(plan: dict[str, Any], model: dict[str, Any], part: str, wbytes: int) -> int:
    """Bytes of a frozen part's weights (`unet`, `te1`, `te2`): in the compute dtype, or with `base fp8`
    its linear and convolution weights in float8 and the rest in the compute dtype."""
    total = int(model["params"][part])
    if not plan["precision"].get("base_fp8"):
        return total * wbytes
    stored = fp8_params(plan, model, part)
    return stored * FP8_BYTES + (total - stored) * wbytes


def offloaded(plan: dict[str, Any]) -> set[str]:
    """The components the plan keeps on the CPU between encodes (trained encoders never are)."""
    precision, targets = plan["precision"], set(plan["method"]["targets"])
    out = set()
    if precision.get("offload_text_encoders"):
        out |= {"te1", "te2"} - targets
    if precision.get("offload_vae"):
        out.add("vae")
    return out


def apply(plan: dict[str, Any], terms: dict[str, int], encode: int) -> None:
    """Move offloaded weights out of the training terms into the encode phase. `encode` is the VAE's
    encode transient (0 when the latents are cached)."""
    away = {part: terms.pop(f"{part}_weights")
            for part in sorted(offloaded(plan)) if f"{part}_weights" in terms}
    if not away:
        return
    text = away.get("te1", 0) + away.get("te2", 0)
    vae = away["vae"] + encode if "vae" in away else 0
    covered = terms.get("activations", 0) + terms.get("vae_encode_extra", 0)
    extra = max(text, vae) - covered
    if extra > 0:
        terms[RELOAD_KEY] = extra


def offload_levers(plan: dict[str, Any], device: str) -> list[tuple[str, dict[str, Any], str]]:
    """The offload levers a CUDA plan has not used: encoders that are on the device and not trained."""
    if device != "cuda":
        return []
    precision, method = plan["precision"], plan["method"]
    cache, targets = plan["data"]["cache"], set(method["targets"])
    out: list[tuple[str, dict[str, Any], str]] = []
    if (not precision.get("offload_text_encoders") and not cache["text_encoder"]
            and not targets & {"te1", "te2"} and method.get("kind") != "embedding"):
        out.append(("offload_text_encoders", {"precision.offload_text_encoders": True},
                    "keep the text encoders on the CPU between batches (`offload text encoders`; "
                    "they move to the GPU for each encode)"))
    if not precision.get("offload_vae") and not cache["latents"]:
        out.append(("offload_vae", {"precision.offload_vae": True},
                    "keep the VAE on the CPU between batches (`offload vae`; it moves to the GPU for each "
                    "encode)"))
    return out


def fp8_levers(plan: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """`base fp8`, for a method whose base weights are frozen."""
    method = plan["method"]
    if plan["precision"].get("base_fp8") or method.get("kind") == "finetune" or method.get("dora"):
        return []
    return [("base_fp8", {"precision.base_fp8": True},
             "store the frozen UNet and text-encoder weights in float8 (`base fp8`; each layer is upcast "
             "for its computation, the frozen model loses a little precision)")]


# Host-device copies of offloaded weights: PCIe 4.0 x8-x16 moves about 12 GB/s in practice (pinned memory
# does better; the weights are not pinned).
PCIE_BYTES_PER_SECOND = 12e9


def transfer_seconds(plan: dict[str, Any], model: dict[str, Any], wbytes: int, vae_bytes: int) -> float:
    """Seconds per micro-batch spent moving the offloaded components to the device and back."""
    cache = plan["data"]["cache"]
    away = offloaded(plan) - ({"te1", "te2"} if cache["text_encoder"] else set()) - (
        {"vae"} if cache["latents"] else set())  # cached: parked for good, never moved per step
    moved = sum(frozen_bytes(plan, model, part, wbytes) for part in ("te1", "te2") if part in away)
    if "vae" in away:
        params = model["params"]
        moved += (int(params["vae_encoder"]) + int(params["vae_decoder"])) * vae_bytes
    return 2 * moved / PCIE_BYTES_PER_SECOND
