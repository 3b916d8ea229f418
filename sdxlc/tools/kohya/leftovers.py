"""The settings no recipe word carries, sorted into those that leave training as it is (logging,
speed, where files go) and those that change it. An unknown setting counts as a change: the reader
should look at it."""

from __future__ import annotations

from typing import Any

from sdxlc.tools.kohya.build import Builder
from sdxlc.tools.kohya.model import SECRET_KEYS, is_unset

_LOGGING = "logging only"
_SPEED = "speed or memory only: sdxlc chooses its own"
_FILES = "where or how files are written"
_GUI = "a GUI setting"
INERT: dict[str, str] = {
    **dict.fromkeys((
        "logging_dir", "log_with", "log_prefix", "log_tracker_name", "log_tracker_config", "wandb_run_name",
        "wandb_api_key", "log_config", "use_wandb", "training_comment", "metadata_author",
        "metadata_description", "metadata_license", "metadata_tags", "metadata_title", "no_metadata",
        "debug_dataset", "output_config", "config_file", "dataset_config", "sample_sampler",
        "sample_at_first", "show_timesteps"), _LOGGING),
    **dict.fromkeys((
        "xformers", "sdpa", "mem_eff_attn", "dynamo_backend", "lowram", "highvram",
        "max_data_loader_n_workers", "persistent_data_loader_workers", "vae_batch_size",
        "cpu_offload_checkpointing", "text_encoder_batch_size", "disable_mmap_load_safetensors",
        "ddp_timeout", "ddp_gradient_as_bucket_view", "ddp_static_graph", "cache_info", "skip_cache_check",
        "num_cpu_threads_per_process", "blocks_to_swap", "diffusers_xformers", "fused_optimizer_groups",
        "gpu_ids", "main_process_port", "multi_gpu", "dynamo_mode", "dynamo_use_fullgraph",
        "dynamo_use_dynamic", "extra_accelerate_launch_args", "mem_eff_save"), _SPEED),
    **dict.fromkeys((
        "save_model_as", "use_safetensors", "save_state", "save_state_on_train_end", "save_last_n_steps",
        "save_last_n_steps_state", "save_last_n_epochs", "save_last_n_epochs_state", "save_n_epoch_ratio",
        "huggingface_repo_id", "huggingface_repo_type", "huggingface_path_in_repo", "huggingface_token",
        "huggingface_repo_visibility", "save_state_to_huggingface", "resume_from_huggingface", "async_upload",
        "tokenizer_cache_dir", "save_as_bool", "model_list", "resume"), _FILES),
    **dict.fromkeys(("lr_warmup", "num_machines", "num_processes", "unit",
                     "noise_offset_type", "sdxl_cache_text_encoder_outputs", "sdxl_checkbox", "full_path",
                     "use_latent_files", "create_caption", "image_folder", "train_dir",
                     "latent_metadata_filename", "generate_image_buckets", "generate_caption_database",
                     "caption_metadata_filename", "create_buckets", "batch_size"), _GUI),
}
INERT["prior_loss_weight"] = "no regularization data: it weighs nothing"
_RESUME = "continue a run with `sdxlc run --resume` instead"
# settings that change training, with the value at which they do nothing
CHANGES: dict[str, tuple[Any, str]] = {
    "v2": (False, "SD 2.x; sdxlc trains SDXL"),
    "sd3_checkbox": (False, "an SD3 configuration; sdxlc trains SDXL"),
    "flux1_checkbox": (False, "a FLUX.1 configuration; sdxlc trains SDXL"),
    "full_fp16": (False, "sdxlc keeps fp32 master weights under fp16"),
    "fp8_base_unet": (False, "sdxlc's `base fp8` stores the text encoders in fp8 too"),
    "scale_weight_norms": (None, "sdxlc does not rescale LoRA weights"),
    "max_token_length": (75, "sdxlc reads 75 tokens of a caption"),
    "clip_skip": (1, "SDXL uses the penultimate layer; sdxlc has no clip_skip"),
    "weighted_captions": (False, "sdxlc does not read (word:1.2) weights"),
    "scale_v_pred_loss_like_noise_pred": (False, "sdxlc has no such loss scaling"),
    "v_pred_like_loss": (None, "sdxlc has no such loss"),
    "noise_offset_random_strength": (False, "sdxlc's noise offset is fixed"),
    "ip_noise_gamma_random_strength": (False, "sdxlc's perturbation is fixed"),
    "adaptive_noise_scale": (None, "sdxlc has no adaptive noise offset"),
    "huber_scale": (1.0, "sdxlc's Huber loss has no scale"),
    "lr_scheduler_type": ("", "sdxlc has its named schedules only"),
    "lr_scheduler_args": (None, "sdxlc's schedules take no arguments"),
    "lr_decay_steps": (0, "sdxlc's schedules have no decay phase"),
    "lr_scheduler_timescale": (None, "sdxlc's schedules take no timescale"),
    "lr_scheduler_min_lr_ratio": (None, "sdxlc's schedules decay to 0"),
    "stop_text_encoder_training": (None, "sdxlc trains the text encoders to the end"),
    "base_weights": (None, "sdxlc does not merge LoRAs into the base model"),
    "base_weights_multiplier": (None, "sdxlc does not merge LoRAs into the base model"),
    "in_json": (None, "fine-tuning metadata; give the images with caption files"),
    "dataset_repeats": (1, "fine-tuning metadata repeats"),
    "initial_epoch": (None, _RESUME), "initial_step": (None, _RESUME),
    "skip_until_initial_step": (False, _RESUME),
    "train_text_encoder": (False, "the script trains no text encoder"),
}


def settle(b: Builder) -> None:
    """A note for every setting of the files the recipe does not use."""
    for key, setting in b.config.settings.items():
        if key in b.used:
            continue
        value = "(hidden)" if key in SECRET_KEYS and setting.value else setting.value
        if key in CHANGES:
            inert, why = CHANGES[key]
            if not _same(setting.value, inert):
                b.note(key, value, why)
        elif key in INERT:
            if not is_unset(setting.value):
                b.note(key, value, INERT[key], changes=False)
        elif not is_unset(setting.value) and setting.value not in (0, "0", 0.0):
            b.note(key, value, "not a setting sdxlc knows: check it by hand")


def _same(value: Any, inert: Any) -> bool:
    if is_unset(value) or value == inert:
        return True
    try:
        return float(value) == float(inert)
    except (TypeError, ValueError):
        return str(value).lower() == str(inert).lower()
