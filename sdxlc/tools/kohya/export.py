"""A compiled plan as kohya's files: `config.toml` for sd-scripts' `--config_file` and `dataset.toml` for
its `--dataset_config`. Paths are absolute (kohya reads them from its working folder). What kohya has no
setting for is a `# kohya has no …` comment at the top of the file it belongs to.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sdxlc.resolve.adapter import lycoris_network_args
from sdxlc.resolve.lora_groups import expand
from sdxlc.tools.kohya import export_control

SCRIPTS = {"lora": "sdxl_train_network.py", "finetune": "sdxl_train.py",
           "embedding": "sdxl_train_textual_inversion.py", "lllite": "sdxl_train_control_net_lllite.py"}
_OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "paged_adamw8bit": "PagedAdamW8bit",
               "lion": "Lion", "lion8bit": "Lion8bit", "paged_lion8bit": "PagedLion8bit",
               "prodigy": "Prodigy", "adafactor": "AdaFactor", "sgd": "torch.optim.SGD"}
_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
_SAVE = {"fp32": "float", "fp16": "fp16", "bf16": "bf16"}
_KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$")
Table = dict[str, Any]
KOHYA_KINDS = (expand(["kohya"]), expand(["kohya", "conv", "emb"]))  # kohya's LoRA, with conv_dim


def export_files(plan: dict[str, Any], folder: Path) -> dict[str, str]:
    """File name → text: `config.toml`, `dataset.toml` and, when the plan samples, `prompts.txt`."""
    lacks: list[str] = []
    config = {**_model(plan), **_method(plan, lacks), **_optimizer(plan), **_training(plan, lacks),
              **_outputs(plan, folder, lacks)}
    config["dataset_config"] = str(folder / "dataset.toml")
    datasets, data_lacks = _datasets(plan)
    files = {"config.toml": _render(config, _header(plan, lacks)),
             "dataset.toml": _render_datasets(datasets, _header(plan, data_lacks))}
    if plan["sample"]["prompts"]:
        files["prompts.txt"] = _prompts(plan)
    return files


def script_for(plan: dict[str, Any]) -> str:
    return SCRIPTS[plan["method"]["kind"]]


def _header(plan: dict[str, Any], lacks: list[str]) -> list[str]:
    lines = [f"# written by sdxlc from plan {plan['plan_hash'][:12]} for {script_for(plan)}"]
    return lines + [f"# kohya has no {line}" for line in lacks]


def _model(plan: dict[str, Any]) -> Table:
    model = plan["model"]
    table: Table = {"pretrained_model_name_or_path": model["source"]}
    if model.get("vae"):
        table["vae"] = model["vae"]
    if model["prediction"] == "v_prediction":
        table["v_parameterization"] = True
    if plan["training"]["zero_terminal_snr"]:
        table["zero_terminal_snr"] = True
    return table


def _method(plan: dict[str, Any], lacks: list[str]) -> Table:
    method = plan["method"]
    kind = method["kind"]
    if kind == "finetune":
        return _finetune(method, plan["optimizer"]["lr"])
    if kind == "lllite":  # sdxl_train_control_net_lllite.py's own arguments
        return {"cond_emb_dim": method["cond_dim"], "network_dim": method["mlp_dim"],
                **({"network_dropout": method["dropout"]} if method["dropout"] else {})}
    if kind == "embedding":
        return {"token_string": method["token"], "init_word": method["init"],
                "num_vectors_per_token": method["vectors"],
                **({f"use_{method['template']}_template": True} if method.get("template") else {})}
    table: Table = {"network_module": "networks.lora", "network_dim": method["rank"],
                    "network_alpha": method["alpha"]}
    if method["dropout"]:
        table["network_dropout"] = method["dropout"]
    kinds = expand(method["modules"])
    if "conv" in kinds:
        table["network_args"] = [f"conv_dim={method['rank']}", f"conv_alpha={method['alpha']}"]
    if extra := lycoris_network_args(method):  # LoHa, LoKr, DoRA: LyCORIS' network for kohya's scripts
        table["network_module"] = "lycoris.kohya"
        table["network_args"] = [*table.get("network_args", []), *extra]
    text_only = "unet" not in method["targets"] and kinds == ["attention", "ff"]  # kohya on the encoders
    if kinds not in KOHYA_KINDS and not text_only:
        named = "+".join(method["modules"])
        lacks.append(f"LoRA on {named} layers alone (modules {named}): kohya's LoRA adapts `modules kohya` "
                     "(attention, ff, proj_in/proj_out), with conv_dim `kohya+conv+emb`")
    targets = method["targets"]
    if targets == ["unet"]:
        table["network_train_unet_only"] = True
    elif "unet" not in targets:
        table["network_train_text_encoder_only"] = True
    if "unet" in targets and len(targets) == 2 or targets == ["te1"] or targets == ["te2"]:
        lacks.append(f"LoRA on one text encoder (on {'+'.join(targets)}): kohya trains both or neither")
    rates = [method.get("lr_te1"), method.get("lr_te2")]
    if any(rate is not None for rate in rates):
        lr = plan["optimizer"]["lr"]
        table["text_encoder_lr"] = [lr if rate is None else rate for rate in rates]
    if method.get("init_from"):
        table["network_weights"] = method["init_from"]
    return table


def _finetune(method: dict[str, Any], lr: float) -> Table:
    table: Table = {}
    if "te1" in method["targets"] or "te2" in method["targets"]:
        table["train_text_encoder"] = True
        for name in ("te1", "te2"):  # 0 leaves that encoder frozen
            trained = name in method["targets"]
            table[f"learning_rate_{name}"] = (method[f"lr_{name}"] or lr) if trained else 0.0
    if method.get("block_lr"):
        table["block_lr"] = ",".join(repr(float(v)) for v in method["block_lr"])
    if method.get("full_bf16"):
        table["full_bf16"] = True
    if method.get("fused_backward"):
        table["fused_backward_pass"] = True
    return table


def _optimizer(plan: dict[str, Any]) -> Table:
    optimizer, schedule = plan["optimizer"], plan["schedule"]
    args = dict(optimizer["args"])
    name = _OPTIMIZERS[optimizer["name"]]
    if optimizer["name"] == "sgd" and args.get("nesterov") and args.get("momentum", 0) > 0:
        name = "SGDNesterov"
        args.pop("nesterov")
    table: Table = {"optimizer_type": name, "learning_rate": optimizer["lr"],
                    "max_grad_norm": optimizer["max_grad_norm"], "lr_scheduler": schedule["name"],
                    "lr_warmup_steps": schedule["warmup_steps"]}
    if args:
        table["optimizer_args"] = [f"{key}={_literal(value)}" for key, value in args.items()]
    if optimizer["name"] == "adafactor" and args.get("relative_step"):
        table["lr_scheduler"] = "adafactor"
    if plan["method"]["kind"] == "lora":
        table["unet_lr"] = optimizer["lr"]
    return table


def _literal(value: Any) -> str:
    """An optimizer argument as kohya's `ast.literal_eval` reads it."""
    if isinstance(value, list):
        return ",".join(_literal(v) for v in value)
    if isinstance(value, str):
        return repr(value)
    return repr(value)


def _training(plan: dict[str, Any], lacks: list[str]) -> Table:
    training, cache, precision = plan["training"], plan["data"]["cache"], plan["precision"]
    table: Table = {"max_train_steps": training["total_steps"], "train_batch_size": training["batch_size"],
                    "gradient_accumulation_steps": training["accumulate"], "seed": training["seed"],
                    "mixed_precision": _PRECISION[precision["mixed"]],
                    "gradient_checkpointing": training["gradient_checkpointing"],
                    "no_half_vae": precision["vae_fp32"], "cache_latents": cache["latents"],
                    "cache_text_encoder_outputs": cache["text_encoder"]}
    if cache["to_disk"]:
        table["cache_latents_to_disk"] = cache["latents"]
        table["cache_text_encoder_outputs_to_disk"] = cache["text_encoder"]
    noise = {"noise_offset": training["noise_offset"], "min_snr_gamma": training["snr_gamma"],
             "multires_noise_iterations": training["multires_iterations"],
             "ip_noise_gamma": training["input_perturbation"]}
    table.update({key: value for key, value in noise.items() if value})
    if training["multires_iterations"]:
        table["multires_noise_discount"] = training["multires_discount"]
    if (training["timestep_min"], training["timestep_max"]) != (0, 1000):
        table.update(min_timestep=training["timestep_min"], max_timestep=training["timestep_max"])
    if training["debiased"]:
        table["debiased_estimation_loss"] = True
    if training["loss"] == "huber":
        table.update(loss_type="huber", huber_c=training["huber_c"], huber_schedule="constant")
    launch = plan["launch"]
    if launch["processes"] > 1 or launch["machines"] > 1:
        lacks.append(f"launcher setting in this file: run `accelerate launch --num_processes "
                     f"{launch['processes'] * launch['machines']}` ({launch['strategy']})")
    if precision.get("vae_slicing"):
        lacks.append("VAE slicing (`vae sliced`): it changes memory only")
    if precision.get("base_fp8"):
        table["fp8_base"] = True
    for key, word in (("offload_text_encoders", "offload text encoders"), ("offload_vae", "offload vae")):
        if precision.get(key):
            lacks.append(f"`{word}`: it changes memory only")
    table.update(export_control.masked_loss(plan))
    table.update(export_control.validation(plan, lacks)[0])
    return table


def _outputs(plan: dict[str, Any], folder: Path, lacks: list[str]) -> Table:
    save, sample, log = plan["save"], plan["sample"], plan["log"]
    table: Table = {"output_dir": plan["output"]["dir"], "output_name": plan["output"]["name"],
                    "save_model_as": "safetensors", "save_precision": _SAVE[save["dtype"]]}
    if save.get("every_steps"):
        table["save_every_n_steps"] = save["every_steps"]
        table["save_last_n_steps"] = save["every_steps"] * save["keep"]
    if sample["prompts"]:
        table["sample_prompts"] = str(folder / "prompts.txt")
        if sample.get("every_steps"):
            table["sample_every_n_steps"] = sample["every_steps"]
    if log.get("tensorboard"):
        table.update(logging_dir=str(Path(plan["output"]["dir"]) / "logs"), log_with="tensorboard")
    if plan["training"].get("compile"):
        table.update(torch_compile=True, dynamo_backend="inductor")
    if plan["training"]["channels_last"]:
        lacks.append("channels-last memory format (`channels last`): it changes speed only")
    return table


def _prompts(plan: dict[str, Any]) -> str:
    s = plan["sample"]
    options = f"--w {s['width']} --h {s['height']} --s {s['steps']} --l {s['cfg']} --d {s['seed']}"
    # an LLLite run's sample control images: kohya's `--cn` option of the prompt line
    controls = [f" --cn {c['path']}" for c in s.get("controls") or []] or [""] * len(s["prompts"])
    return "".join(f"{prompt.replace(chr(10), ' ')} {options}{control}\n"
                   for prompt, control in zip(s["prompts"], controls, strict=True))


def _datasets(plan: dict[str, Any]) -> tuple[Table, list[str]]:
    data, training = plan["data"], plan["training"]
    lacks: list[str] = []
    buckets = data["buckets"]
    general: Table = {"resolution": data["resolution"], "batch_size": training["batch_size"],
                      "enable_bucket": buckets["enabled"]}
    if buckets["enabled"]:
        general.update(min_bucket_reso=buckets["min"], max_bucket_reso=buckets["max"],
                       bucket_reso_steps=buckets["step"], bucket_no_upscale=buckets["no_upscale"])
    subsets: list[Table] = []
    reg_weights = {d["loss_weight"] for d in data["datasets"] if d["regularization"]}
    if len(reg_weights) == 1:
        general["prior_loss_weight"] = reg_weights.pop()
    elif reg_weights:
        lacks.append(f"loss weight per regularization dataset ({sorted(reg_weights)}): prior_loss_weight is "
                     "one value")
    for dataset in data["datasets"]:
        subsets += export_control.subsets(plan, dataset, _subsets(dataset, lacks), lacks)
    general.update(export_control.validation(plan, [])[1])
    return {"general": general, "subsets": subsets}, lacks


def _subsets(dataset: dict[str, Any], lacks: list[str]) -> list[Table]:
    path = Path(dataset["path"])
    if dataset.get("source") not in (None, "folder"):
        lacks.append(f"manifest datasets: {path} (list its images in a folder with caption files)")
        return []
    common: Table = {
        "caption_extension": dataset["caption_ext"], "shuffle_caption": dataset["shuffle"],
        "keep_tokens": dataset["keep_tokens"], "caption_dropout_rate": dataset["caption_dropout"],
        "caption_tag_dropout_rate": dataset["tag_dropout"], "flip_aug": dataset["flip"],
        "random_crop": dataset["random_crop"], "is_reg": dataset["regularization"]}
    if dataset.get("control"):  # kohya's ControlNet-LLLite dataset: same-stem conditioning images
        common["conditioning_data_dir"] = dataset["control"]
    for key, kohya in (("separator", "caption_separator"), ("prefix", "caption_prefix"),
                       ("suffix", "caption_suffix")):
        if dataset[key] and (key != "separator" or dataset[key] != ","):
            common[kohya] = dataset[key]
    if dataset.get("color_jitter"):
        lacks.append(f"color jitter ({dataset['color_jitter']} on {path}): kohya's color_aug shifts hue only")
    if dataset["loss_weight"] != 1 and not dataset["regularization"]:
        lacks.append(f"loss weight of a training dataset ({dataset['loss_weight']} on {path})")
    found = []
    entries = sorted(path.iterdir()) if path.is_dir() else []
    folders = [p for p in entries if p.is_dir() and _KOHYA_FOLDER.match(p.name)]
    for sub in folders:
        match = _KOHYA_FOLDER.match(sub.name)
        assert match is not None
        found.append({"image_dir": str(sub), "num_repeats": int(match.group(1)) * dataset["repeat"],
                      "class_tokens": match.group(2), **common})
    if not folders or any(p.is_file() for p in entries):
        entry = {"image_dir": str(path), "num_repeats": dataset["repeat"], **common}
        if dataset.get("default_caption"):
            entry["class_tokens"] = dataset["default_caption"]
        found.insert(0, entry)
    return found


def _render(table: Table, header: list[str]) -> str:
    return "\n".join([*header, *(f"{key} = {_toml(value)}" for key, value in table.items())]) + "\n"


def _render_datasets(doc: Table, header: list[str]) -> str:
    """One `[[datasets]]`, and another for the subsets with `conditioning_data_dir` (a ControlNet dataset
    is one whose every subset has it)."""
    lines = [*header, "[general]", *(f"{k} = {_toml(v)}" for k, v in doc["general"].items())]
    plain = [s for s in doc["subsets"] if export_control.CONDITIONING not in s]
    control = [s for s in doc["subsets"] if export_control.CONDITIONING in s]
    for group in [g for g in (plain, control) if g] or [[]]:
        lines += ["", "[[datasets]]"]
        for subset in group:
            lines += ["", "  [[datasets.subsets]]", *(f"  {k} = {_toml(v)}" for k, v in subset.items())]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
