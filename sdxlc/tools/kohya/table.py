"""kohya setting → recipe word, for `sdxlc explain kohya:network_dim` (docs/KOHYA.md has the same table)."""

from __future__ import annotations

from sdxlc.tools.kohya.leftovers import CHANGES, INERT

WORDS: dict[str, str] = {
    "pretrained_model_name_or_path": '`model "…"`',
    "vae": '`vae "…"`',
    "v_parameterization": "`v_prediction`",
    "zero_terminal_snr": "`zero_terminal_snr`",
    "no_half_vae": "`vae fp32`",
    "fp8_base": "`base fp8`",
    "image_dir": '`data "…"`',
    "train_data_dir": '`data "…"` (its `<N>_<tokens>` folders give repeats and class tokens)',
    "reg_data_dir": '`data "…" as regularization`',
    "is_reg": "`as regularization`",
    "prior_loss_weight": "`loss weight W` on the regularization data",
    "num_repeats": "`repeat N`",
    "caption_extension": "`caption .ext`",
    "class_tokens": '`default caption "…"`',
    "shuffle_caption": "`shuffle`",
    "keep_tokens": "`keep N`",
    "caption_dropout_rate": "`dropout P` (data)",
    "caption_tag_dropout_rate": "`tag dropout P`",
    "caption_separator": "`separator`",
    "caption_prefix": "`prefix`",
    "caption_suffix": "`suffix`",
    "flip_aug": "`flip`",
    "random_crop": "`random crop`",
    "alpha_mask": "`mask alpha` (data)",
    "masked_loss": "`mask \"…\"` (data) from each subset's `conditioning_data_dir`",
    "conditioning_data_dir": '`mask "…"` with masked_loss; `control "…"` for ControlNet-LLLite',
    "validation_split": "`validate … split P%`",
    "validation_seed": "`validate … seed N`",
    "validate_every_n_steps": "`validate every N steps`",
    "validate_every_n_epochs": "`validate every N epochs` (1 when neither cadence is given)",
    "resolution": "`resolution N`",
    "enable_bucket": "`buckets` (absent: `no buckets`)",
    "min_bucket_reso": "`buckets MIN..MAX`",
    "max_bucket_reso": "`buckets MIN..MAX`",
    "bucket_reso_steps": "`step S` (resolution)",
    "bucket_no_upscale": "`no upscale`",
    "batch_size": "`batch N`",
    "train_batch_size": "`batch N`",
    "gradient_accumulation_steps": "`accumulate N`",
    "max_train_steps": "`steps N`",
    "max_train_epochs": "`epochs N`",
    "seed": "`seed N`",
    "network_module": "`lora … modules kohya` (networks.lora only)",
    "network_dim": "`lora rank N` (LLLite: `lllite … mlp_dim N`)",
    "network_alpha": "`lora alpha A`",
    "network_dropout": "`lora dropout P` (LLLite: `lllite … dropout P`)",
    "network_train_unet_only": "`lora on unet`",
    "network_train_text_encoder_only": "`lora on te1+te2`",
    "network_args": "`modules kohya+conv+emb` for conv_dim/conv_alpha equal to the LoRA's",
    "network_weights": '`lora from "…"`',
    "learning_rate": "`lr`",
    "unet_lr": "`lr`",
    "text_encoder_lr": "`te1 lr`, `te2 lr`",
    "optimizer_type": "`lr … NAME` / `optimizer NAME`",
    "optimizer_args": "`optimizer … args k=v`",
    "max_grad_norm": "`max_grad_norm`",
    "lr_scheduler": "`schedule NAME`",
    "lr_warmup_steps": "`warmup N` or `warmup P%`",
    "mixed_precision": "`fp32` / `fp16` / `bf16`",
    "gradient_checkpointing": "`checkpointing`",
    "torch_compile": "`compile` (with dynamo_backend inductor, kohya's default)",
    "cache_latents": "`cache latents`",
    "cache_text_encoder_outputs": "`cache te`",
    "cache_latents_to_disk": "`cache latents to disk`",
    "cache_text_encoder_outputs_to_disk": "`cache te to disk`",
    "noise_offset": "`noise offset`",
    "min_snr_gamma": "`snr gamma`",
    "multires_noise_iterations": "`noise multires N`",
    "multires_noise_discount": "`noise … discount D`",
    "ip_noise_gamma": "`noise perturbation G`",
    "min_timestep": "`noise timesteps MIN..MAX`",
    "max_timestep": "`noise timesteps MIN..MAX`",
    "debiased_estimation_loss": "`debiased`",
    "loss_type": "`loss huber` (l2 is the default)",
    "huber_c": "`loss huber c C`",
    "save_every_n_steps": "`save every N steps`",
    "save_every_n_epochs": "`save every N epochs`",
    "save_last_n_epochs": "`save … keep N`",
    "save_precision": "`save … fp32/fp16/bf16`",
    "sample_prompts": '`sample "…"`',
    "sample_every_n_steps": "`sample … every N steps`",
    "sample_every_n_epochs": "`sample … every N epochs`",
    "output_dir": '`output "…"`',
    "output_name": '`name "…"`',
    "num_processes": "`gpus N`",
    "num_machines": "`machines N`",
    "train_text_encoder": "`finetune unet+te1+te2`",
    "learning_rate_te1": "`finetune … te1 lr`",
    "learning_rate_te2": "`finetune … te2 lr`",
    "block_lr": "`block_lr …`",
    "full_bf16": "`finetune … full bf16`",
    "fused_backward_pass": "`finetune … fused backward`",
    "token_string": '`embedding "…"`',
    "init_word": '`embedding … init "…"`',
    "num_vectors_per_token": "`embedding … vectors N`",
    "use_object_template": "`embedding … template object`",
    "use_style_template": "`embedding … template style`",
    "cond_emb_dim": "`lllite cond_dim N` (sdxl_train_control_net_lllite.py)",
}


def explain_kohya(topic: str) -> str | None:
    """`kohya`: the whole table; `kohya:network_dim` (or `kohya:--network_dim`): one setting."""
    if topic == "kohya":
        rows = [f"  --{key:<36} {words}" for key, words in WORDS.items()]
        return "\n".join(["kohya-ss/sd-scripts settings and their recipe words (`sdxlc import kohya`, "
                          "docs/KOHYA.md):", *rows])
    if not topic.startswith("kohya:"):
        return None
    key = topic.removeprefix("kohya:").strip().lstrip("-").replace("-", "_")
    if key in WORDS:
        return f"kohya `--{key}`: in a recipe {WORDS[key]} (`sdxlc import kohya`, docs/KOHYA.md)."
    if key in CHANGES:
        return f"kohya `--{key}`: no recipe word ({CHANGES[key][1]}); `sdxlc import kohya` notes it."
    if key in INERT:
        return f"kohya `--{key}`: no recipe word, and none is needed ({INERT[key]})."
    return None


def kohya_topics() -> list[str]:
    return ["kohya", *(f"kohya:{key}" for key in (*WORDS, *CHANGES, *INERT))]
