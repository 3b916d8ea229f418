"""A bmaltais/kohya_ss GUI configuration (JSON) as sd-scripts settings, the way the GUI builds its
command: `max_resolution` is `resolution`, `lr_warmup` a percentage, `optimizer` is `optimizer_type`,
`LoRA_type` picks `network_module` and its `network_args`, a zero means "not set", and a zero
text-encoder (or UNet) learning rate trains the other model alone.
"""

from __future__ import annotations

from typing import Any

from sdxlc.tools.kohya.cmdline import parse_flags

RENAMED = {
    "max_resolution": "resolution", "optimizer": "optimizer_type", "lora_network_weights": "network_weights",
    "sdxl_no_half_vae": "no_half_vae",
}
ZERO_IS_UNSET = (
    "max_train_steps", "max_train_epochs", "min_snr_gamma", "ip_noise_gamma", "min_timestep", "max_timestep",
    "save_every_n_steps", "save_every_n_epochs", "save_last_n_steps", "save_last_n_epochs",
    "save_last_n_steps_state", "save_last_n_epochs_state", "sample_every_n_steps", "sample_every_n_epochs",
    "stop_text_encoder_training", "v_pred_like_loss", "vae_batch_size", "clip_skip", "seed",
    "adaptive_noise_scale", "noise_offset", "multires_noise_iterations", "caption_dropout_every_n_epochs",
    "scale_weight_norms", "network_dropout", "keep_tokens", "max_token_length", "lr_scheduler_power",
)
SPLIT = ("optimizer_args", "lr_scheduler_args", "network_args")
# the GUI turns these into `network_args` for kohya's own networks
_LORA_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
              "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout")
_LYCORIS = ("conv_dim", "conv_alpha", "unit", "factor", "use_cp", "use_tucker", "use_scalar",
            "decompose_both", "train_on_input", "LyCORIS_preset", "bypass_mode", "dora_wd",
            "rank_dropout_scale", "constrain", "rescaled", "train_norm")
_MODULES = {"Standard": "networks.lora", "Kohya LoCon": "networks.lora", "Kohya DyLoRA": "networks.dylora",
            "LoRA-FA": "networks.lora_fa", "Kohya LoHa": "networks.loha", "Kohya LoKr": "networks.lokr"}


def from_gui(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sd-scripts settings, launcher settings) of a GUI configuration."""
    values = {RENAMED.get(key, key): value for key, value in raw.items()}
    launcher: dict[str, Any] = {
        key: values.pop(key) for key in ("num_processes", "num_machines") if key in values}
    for key in ZERO_IS_UNSET:
        if key in values and _number(values[key]) == 0:
            values[key] = None
    for key in SPLIT:
        if values.get(key) is not None and not isinstance(values[key], list):
            values[key] = str(values[key]).replace('"', "").split()
    _warmup(values)
    _noise(values)
    _network(values)
    _learning_rates(values)
    _text_encoder_cache(values)
    attention = values.pop("xformers", None)
    if attention in ("xformers", "sdpa"):
        values[attention] = True
    extra = values.pop("additional_parameters", None)
    if isinstance(extra, str) and extra.strip():
        values.update(parse_flags(extra.split()))
    return values, launcher


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _warmup(values: dict[str, Any]) -> None:
    percent = _number(values.pop("lr_warmup", None)) or 0.0
    steps = _number(values.get("lr_warmup_steps")) or 0.0
    if steps > 0:
        values["lr_warmup_steps"] = int(steps)
    elif percent > 0:
        values["lr_warmup_steps"] = percent / 100
    else:
        values.pop("lr_warmup_steps", None)


def _noise(values: dict[str, Any]) -> None:
    kind = values.pop("noise_offset_type", None)
    if kind == "Multires":
        values.pop("noise_offset", None)
        values.pop("adaptive_noise_scale", None)
    elif kind is not None:
        values.pop("multires_noise_iterations", None)
        values.pop("multires_noise_discount", None)


def _network(values: dict[str, Any]) -> None:
    kind = values.pop("LoRA_type", None)
    if kind is None:
        return
    kind = str(kind)
    args = list(values.get("network_args") or [])
    if kind in ("Standard", "Kohya LoCon", "LoRA-FA"):
        if kind == "Kohya LoCon":
            args += [f"conv_dim={values.get('conv_dim')}", f"conv_alpha={values.get('conv_alpha')}"]
        args += [f"{key}={values[key]}" for key in _LORA_ARGS if values.get(key) not in (None, "", 0, "0")]
    for key in (*_LORA_ARGS, *_LYCORIS):
        values.pop(key, None)
    values["network_module"] = _MODULES.get(kind, f"lycoris.kohya ({kind})" if "LyCORIS" in kind else kind)
    values["network_args"] = args or None


def _learning_rates(values: dict[str, Any]) -> None:
    if "text_encoder_lr" not in values and "unet_lr" not in values:
        return
    te, unet = _number(values.get("text_encoder_lr")) or 0.0, _number(values.get("unet_lr")) or 0.0
    values["text_encoder_lr"] = [te, te] if te else None
    values["unet_lr"] = unet or None
    if te == 0 and unet != 0:
        values["network_train_unet_only"] = True
    elif te != 0 and unet == 0:
        values["network_train_text_encoder_only"] = True


def _text_encoder_cache(values: dict[str, Any]) -> None:
    cache = values.pop("sdxl_cache_text_encoder_outputs", None)
    if cache and values.get("sdxl", True):
        values["cache_text_encoder_outputs"] = True
