"""What kohya trains: the script and `network_module` chosen, as `lora …`, `finetune …`, `embedding …` or
`lllite …` (control.py)."""

from __future__ import annotations

from sdxlc.tools.kohya import control, lycoris
from sdxlc.tools.kohya.build import Builder, num, quote, to_number

SDXL_SCRIPTS = {"sdxl_train_network.py": "lora", "sdxl_train.py": "finetune",
                "sdxl_train_textual_inversion.py": "embedding"}
OTHER_SCRIPTS = ("train_network.py", "train_db.py", "fine_tune.py", "train_textual_inversion.py",
                 "flux_train_network.py", "sd3_train_network.py", "flux_train.py", "sd3_train.py")


def method_kind(b: Builder) -> str:
    script = b.config.script
    if control.is_lllite(b):
        return "lllite"
    if script in SDXL_SCRIPTS:
        return SDXL_SCRIPTS[script]
    if script is not None:
        why = "not an SDXL script; sdxlc trains SDXL" if script in OTHER_SCRIPTS else "an unknown script"
        b.note("script", script, why)
    if b.has("token_string"):
        return "embedding"
    if any(b.has(k) for k in ("network_module", "network_dim", "network_alpha", "network_weights")):
        return "lora"
    # keys only the fine-tuning scripts (and the GUI's DreamBooth and fine-tune tabs) write, set or not
    if any(k in b.config.settings for k in ("train_text_encoder", "learning_rate_te", "learning_rate_te1",
                                            "learning_rate_te2", "block_lr")):
        return "finetune"
    return "lora"


def map_model(b: Builder) -> None:
    source = b.take("pretrained_model_name_or_path")
    if source:
        origin = b.config.settings["pretrained_model_name_or_path"].origin
        b.add(f"model {quote(b.path(str(source), origin, local_only=True))}")
    else:
        b.note("pretrained_model_name_or_path", None, "no base model given: add a `model` line",
               changes=False)
    vae = b.take("vae")
    if vae:
        b.add(f"vae {quote(b.path(str(vae), b.config.settings['vae'].origin, local_only=True))}")
    if b.flag("v_parameterization"):
        b.add("v_prediction")
    if b.flag("zero_terminal_snr"):
        b.add("zero_terminal_snr")
    if b.has("sdxl") and not b.flag("sdxl"):
        b.note("sdxl", False, "the configuration is not for SDXL; sdxlc trains SDXL")
    b.used.add("sdxl")


def map_lora(b: Builder, lr: float) -> None:
    module = str(b.take("network_module", "networks.lora") or "networks.lora")
    adapter = lycoris.statement(b) if module == lycoris.MODULE else None  # loha, lokr, lora … dora
    if module != "networks.lora" and adapter is None:
        b.note("network_module", module, "sdxlc trains kohya's LoRA (networks.lora) and LyCORIS' "
               "loha, lokr and DoRA (lycoris.kohya) only")
    words = adapter[:1] if adapter else ["lora"]
    weights = b.take("network_weights")
    from_file = bool(weights) and b.flag("dim_from_weights")
    if not from_file:
        rank = b.integer("network_dim", 4)
        words += ["rank", str(rank), "alpha", num(b.number("network_alpha", 1.0) or 1.0)]
    else:
        b.used.update(("network_dim", "network_alpha"))
    targets = _lora_targets(b)
    words += ["on", "+".join(targets), "modules", _modules(b)]
    dropout = b.number("network_dropout", 0)
    if dropout:
        words += ["dropout", num(dropout)]
    if weights:
        words += ["from", quote(b.path(str(weights), b.config.settings["network_weights"].origin))]
    words += adapter[1:] if adapter else []
    _text_encoder_lrs(b, words, targets, lr)
    b.add(" ".join(words))


def _lora_targets(b: Builder) -> list[str]:
    if b.flag("network_train_unet_only"):
        return ["unet"]
    if b.flag("network_train_text_encoder_only"):
        return ["te1", "te2"]
    return ["unet", "te1", "te2"]


def _modules(b: Builder) -> str:
    """kohya's LoRA adapts every Linear of the transformer blocks (attention, feed-forward, proj_in/out) and
    of the text encoders' attention and MLP: `modules kohya`. `conv_dim` in network_args adds the resnets,
    down- and upsamplers: their convolutions (`conv`) and time-embedding projections (`emb`)."""
    kinds = "kohya"
    args = {}
    raw = b.take("network_args") or []
    for pair in raw if isinstance(raw, list) else str(raw).split():
        key, _, value = str(pair).partition("=")
        args[key] = value.strip('"')
    dim, alpha = b.config.get("network_dim", 4), b.config.get("network_alpha", 1)
    conv_dim = args.pop("conv_dim", None)
    if conv_dim not in (None, "", "0", "None"):
        conv_alpha = args.pop("conv_alpha", "1")
        origin = b.config.settings["network_args"].origin
        same_dim = to_number("conv_dim", conv_dim, origin) == to_number("network_dim", dim, origin)
        same_alpha = to_number("conv_alpha", conv_alpha, origin) == to_number("network_alpha", alpha, origin)
        if same_dim and same_alpha:
            kinds += "+conv+emb"
        else:
            b.note("network_args", f"conv_dim={conv_dim} conv_alpha={conv_alpha}",
                   "sdxlc gives conv layers the LoRA's rank and alpha")
    args.pop("conv_alpha", None)
    lycoris.drop_args(args, b.config.get("network_module"))
    for key, value in args.items():
        if key == "dora_wd":  # kohya's own networks.lora takes no such argument and trains a plain LoRA
            b.note("network_args", f"{key}={value}", "kohya's networks.lora ignores it; DoRA is LyCORIS' "
                   "(network_module lycoris.kohya): `lora … dora`", changes=False)
            continue
        b.note("network_args", f"{key}={value}", "a network argument sdxlc does not have")
    return kinds


def _text_encoder_lrs(b: Builder, words: list[str], targets: list[str], lr: float) -> None:
    """kohya's `text_encoder_lr` (one value, or one per encoder) falls back to `learning_rate`."""
    raw = b.take("text_encoder_lr")
    values = raw if isinstance(raw, list) else [] if raw in (None, "") else str(raw).split()
    origin = b.config.settings["text_encoder_lr"].origin if values else ""
    rates = [to_number("text_encoder_lr", v, origin) or 0.0 for v in values][:2]
    if not rates:
        rates = [b.number("learning_rate", 2e-6) or 2e-6]
    te1, te2 = rates[0], rates[-1]
    for name, rate in (("te1", te1), ("te2", te2)):
        if name in targets and rate != lr:
            words += [f"{name} lr", num(rate)]


def map_finetune(b: Builder, lr: float) -> None:
    targets = ["unet", "te1", "te2"] if b.flag("train_text_encoder") else ["unet"]
    words = ["finetune", "+".join(targets)]
    for name, key in (("te1", "learning_rate_te1"), ("te2", "learning_rate_te2")):
        rate = b.number(key)
        if name in targets and rate is not None and rate != lr:
            words += [f"{name} lr", num(rate)]
    if b.flag("full_bf16"):
        words.append("full bf16")
    if b.flag("fused_backward_pass"):
        words.append("fused backward")
    b.add(" ".join(words))
    block = b.take("block_lr")
    if block:
        values = block if isinstance(block, list) else str(block).split(",")
        origin = b.config.settings["block_lr"].origin
        b.add("block_lr " + ", ".join(num(to_number("block_lr", v, origin) or 0.0) for v in values))


def map_embedding(b: Builder) -> None:
    token = b.take("token_string") or "<token>"
    words = ["embedding", quote(str(token))]
    init = b.take("init_word")
    if init:
        words += ["init", quote(str(init))]
    words += ["vectors", str(b.integer("num_vectors_per_token", 1))]
    if b.flag("use_object_template"):
        words += ["template", "object"]
    elif b.flag("use_style_template"):
        words += ["template", "style"]
    b.add(" ".join(words))
