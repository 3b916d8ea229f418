"""Steps, batch, seed, precision, caching, noise and loss, saves, samples, output and launch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdxlc.tools.kohya.build import Builder, num, quote, to_number

_PRECISION = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
_SAVE_DTYPE = {"float": "fp32", "fp16": "fp16", "bf16": "bf16"}


def map_steps(b: Builder, batch: Any) -> None:
    if batch in (None, ""):
        size = b.integer("train_batch_size", 1)
    else:
        number = to_number("batch_size", batch, "the dataset config")
        size = 1 if number is None else int(number)
    b.used.add("train_batch_size")
    accumulate = b.integer("gradient_accumulation_steps", 1)
    b.add(f"batch {size}" + (f" accumulate {accumulate}" if accumulate != 1 else ""))
    epochs, gui_epochs = b.integer("max_train_epochs"), b.integer("epoch")
    steps = b.integer("max_train_steps")
    if epochs:
        b.add(f"epochs {epochs}")
    elif steps is None and gui_epochs:
        b.add(f"epochs {gui_epochs}")  # the GUI computes the steps of this many epochs
    else:
        b.add(f"steps {steps or 1600}")
    seed = b.integer("seed")
    if seed is None:
        b.remarks.append("kohya draws a random seed when none is given; this recipe uses sdxlc's 42")
    else:
        b.add(f"seed {seed}")


def map_precision(b: Builder, kind: str) -> None:
    """Mixed precision (the script's, else accelerate's), caching and memory switches on one line."""
    mixed = str(b.take("mixed_precision", "no") or "no")
    words = [_PRECISION.get(mixed, "")]
    if not words[0]:
        b.note("mixed_precision", mixed, "not no, fp16 or bf16")
        words = []
    if b.flag("no_half_vae"):
        words.append("vae fp32")
    if b.flag("fp8_base"):
        words.append("base fp8")
    if b.flag("gradient_checkpointing"):
        words.append("checkpointing")
    if b.flag("torch_compile"):  # kohya's --dynamo_backend defaults to inductor, as sdxlc's compile
        backend = str(b.take("dynamo_backend", "inductor") or "inductor").lower()
        if backend == "inductor":
            words.append("compile")
        else:
            b.note("dynamo_backend", backend, "sdxlc's `compile` uses TorchInductor")
    latents_disk, te_disk = b.flag("cache_latents_to_disk"), b.flag("cache_text_encoder_outputs_to_disk")
    # kohya caches nothing it is not told to: the off words keep that where sdxlc would cache by default
    words.append("cache latents" if b.flag("cache_latents") or latents_disk else "no cache latents")
    words.append("cache te" if b.flag("cache_text_encoder_outputs") or te_disk else "no cache te")
    if latents_disk or te_disk:
        words.append("to disk")
    if b.flag("full_bf16") and kind != "finetune":
        b.note("full_bf16", True, "sdxlc keeps bf16 weights for a full fine-tune only")
    b.add(" ".join(words))


def map_noise(b: Builder) -> None:
    words = ["noise"]
    for key, clause in (("noise_offset", "offset"), ("min_snr_gamma", "snr gamma"),
                        ("multires_noise_iterations", "multires"), ("ip_noise_gamma", "perturbation")):
        value = b.number(key)
        if value:
            words += [clause, num(int(value) if key == "multires_noise_iterations" else value)]
    discount = b.number("multires_noise_discount", 0.3)
    if "multires" in words and discount not in (None, 0.3):
        words += ["discount", num(discount)]
    low, high = b.integer("min_timestep", 0), b.integer("max_timestep", 1000)
    if (low, high) != (0, 1000):
        words += ["timesteps", f"{low or 0}..{1000 if high is None else high}"]
    if len(words) > 1:
        b.add(" ".join(words))
    if b.flag("debiased_estimation_loss"):
        b.add("debiased")
    _loss(b)


def _loss(b: Builder) -> None:
    kind = str(b.take("loss_type", "l2") or "l2")
    huber_c = b.number("huber_c", 0.1)
    schedule = str(b.take("huber_schedule", "snr") or "snr")
    if kind == "huber":
        b.add(f"loss huber c {num(huber_c or 0.1)}")
        if schedule != "constant":
            b.note("huber_schedule", schedule, "sdxlc's Huber threshold is constant")
    elif kind != "l2":
        b.note("loss_type", kind, "sdxlc has l2 and huber losses")


def map_save(b: Builder) -> None:
    words = ["save"]
    steps, epochs = b.integer("save_every_n_steps"), b.integer("save_every_n_epochs")
    if steps:
        words += ["every", str(steps), "steps"]
    elif epochs:
        words += ["every", str(epochs), "epochs"]
    keep = b.integer("save_last_n_epochs") if epochs and not steps else None
    last_steps = b.integer("save_last_n_steps") if steps else None
    if last_steps and steps:  # kohya keeps the saves of the last N steps
        keep = max(1, last_steps // steps)
    if keep:
        words += ["keep", str(keep)]
    elif len(words) > 1:
        b.remarks.append("kohya keeps every intermediate save; sdxlc keeps the last 3 (`save … keep N`)")
    precision = str(b.take("save_precision", "float") or "float")
    words.append(_SAVE_DTYPE.get(precision, "fp32"))
    b.add(" ".join(words))


def map_sample(b: Builder) -> None:
    every, unit = b.integer("sample_every_n_steps"), "steps"
    epochs = b.integer("sample_every_n_epochs")
    if not every:
        every, unit = epochs, "epochs"
    lines = _prompts(b)
    if not lines:
        return
    prompts = [line.split(" --", 1)[0].strip()[:2000] for line in lines]
    words = ["sample", " ".join(quote(p) for p in prompts)]
    controls = [match.group(1).strip() for line in lines if (match := _CN.search(line))]
    if controls and len(controls) == len(lines):  # kohya's `--cn`: each prompt's control image (LLLite)
        words += ["control", " ".join(quote(c) for c in controls)]
    if every:
        words += ["every", str(every), unit]
    b.add(" ".join(words))


def _prompts(b: Builder) -> list[str]:
    """kohya's prompt file (or the GUI's prompt text): its prompt lines, options (`--w 1024 --n …`) kept."""
    raw = b.take("sample_prompts")
    if not raw:
        return []
    text = str(raw)
    origin = b.config.settings["sample_prompts"].origin
    file = Path(b.path(text, origin))
    file = file if file.is_absolute() else b.recipe_dir / file
    if "\n" not in text and text.endswith((".toml", ".json")):
        b.note("sample_prompts", raw, "a TOML or JSON prompt file: give the prompts with `sample`",
               changes=False)
        return []
    if "\n" not in text and file.is_file():
        text = file.read_text(encoding="utf-8", errors="replace")
    elif "\n" not in text and text.endswith(".txt"):
        b.note("sample_prompts", raw, "the prompt file is missing", changes=False)
        return []
    return [line.strip() for line in text.splitlines()
            if line.split(" --", 1)[0].strip() and not line.strip().startswith("#")]


_CN = re.compile(r"(?:^| )--cn (.+?)(?= --|$)", re.IGNORECASE)  # kohya's prompt option `--cn IMAGE`


def map_output(b: Builder) -> None:
    folder = b.take("output_dir")
    if folder:
        b.add(f"output {quote(b.path(str(folder), b.config.settings['output_dir'].origin))}")
    name = b.take("output_name")
    if name:
        b.add(f"name {quote(str(name))}")


def map_launch(b: Builder) -> None:
    processes, machines = b.integer("num_processes", 1), b.integer("num_machines", 1)
    if processes and processes > 1:
        b.add(f"gpus {processes}")
    if machines and machines > 1:
        b.add(f"machines {machines}")
