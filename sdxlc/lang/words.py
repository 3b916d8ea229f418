"""The table of the recipe language's words: each statement keyword and clause, the recipe-schema path it
sets, how its argument is read, and a line of reference text. `sdxlc/lang/vocabulary.py` reads it.

Contexts: a `statement` entry starts a line; an `any` entry is a clause that may sit on any statement
line (or stand alone); any other context is the keyword of the statement the clause belongs to. An
entry whose words are empty is a positional argument of its context (`lr 1e-4 lion`: `lion`).
Paths with `*` are inside the `data` item of the current statement. A `section` statement's clauses
are those of its section (its path: `loha` takes the clauses of `lora`), and its `const` holds the
(path, value) settings the statement implies (`loha` sets `lora.adapter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATEMENT = "statement"
ANY = "any"

ARG_KINDS: dict[str, str] = {
    "value": "one value, read by the type of the schema field",
    "flag": "no argument: sets the fixed value shown",
    "range": "a range `low..high`: sets both bounds",
    "cadence": "a count and an optional unit, `500 steps` or `2 epochs`",
    "steps_or_percent": "a step count (`100`) or a percentage of the run (`5%`)",
    "count_or_percent": "an image count (`4`) or a percentage of the training images (`10%`)",
    "strings": "one or more quoted strings",
    "args": "one or more `name=value` pairs",
    "section": "no argument: starts a section the clauses fill in",
    "file": "a recipe file, relative to this one",
    "setting": "a schema path and a value",
    "unsupported": "accepted and ignored with a warning: the recipe schema has no field for it yet",
}


@dataclass(frozen=True)
class Entry:
    words: str
    context: str
    path: str
    arg: str
    doc: str
    const: Any = None

    @property
    def paths(self) -> tuple[str, ...]:
        """The schema paths set: one, or the pair a range or an alternative argument form needs."""
        return tuple(self.path.split())


def _flag(words: str, context: str, path: str, const: Any, doc: str) -> Entry:
    return Entry(words, context, path, "flag", doc, const)


S, A = STATEMENT, ANY

VOCABULARY: tuple[Entry, ...] = (
    # directives
    Entry("use", S, "", "file", "Inherit a recipe file: this file overrides it. Comes first (after `sdx`)."),
    Entry("set", S, "", "setting", "Set any recipe-schema path: `set optimizer.args.weight_decay 0.01`."),
    # statements
    Entry("sdx", S, "sdx", "value", "Language version of the recipe: `sdx 1`."),
    Entry("model", S, "model.source", "value",
          "Base model: `tiny`, a hub id, a diffusers folder or a single-file SDXL checkpoint."),
    Entry("vae", S, "model.vae", "value", "Replacement VAE: hub id, diffusers folder or .safetensors file."),
    Entry("profile", S, "profile", "value", "Hardware profile name, or `auto` to probe the local GPU."),
    Entry(
        "data", S, "data.*.path", "value",
        "Images with caption files: a folder (`10_name` sub-folders repeat 10×) or a .jsonl/.csv manifest.",
    ),
    Entry("resolution", S, "resolution.size", "value", "Training resolution: buckets keep about size² px."),
    Entry("lora", S, "lora", "section", "Train a LoRA; its clauses give rank, alpha, targets and dropout."),
    Entry("loha", S, "lora lora.adapter", "section",
          "Train a LoHa (LyCORIS Hadamard-product LoRA): the clauses of `lora` (docs/METHODS.md).",
          (("lora.adapter", "loha"),)),
    Entry("lokr", S, "lora lora.adapter", "section",
          "Train a LoKr (LyCORIS Kronecker-product LoRA): the clauses of `lora`, and `factor`.",
          (("lora.adapter", "lokr"),)),
    Entry("lr", S, "optimizer.lr", "value", "Learning rate; may be followed by the optimizer name."),
    Entry(
        "optimizer", S, "optimizer.name", "value",
        "Optimizer by name; `args` passes extra arguments, checked against schema/optimizers.json.",
    ),
    Entry("max_grad_norm", S, "optimizer.max_grad_norm", "value", "Gradient clipping norm; 0 turns it off."),
    Entry("clip", S, "optimizer.max_grad_norm", "value", "Same as `max_grad_norm`."),
    Entry("schedule", S, "schedule.name", "value", "Learning-rate schedule; `warmup` sets its warmup."),
    Entry("block_lr", S, "block_lr", "value", "23 per-block learning rates in kohya order; `x9` repeats."),
    Entry("batch", S, "training.batch_size", "value", "Images per step; `accumulate` adds accumulation."),
    Entry("steps", S, "training.steps", "value", "Total optimizer steps."),
    Entry("epochs", S, "training.epochs", "value", "Total epochs."),
    Entry("seed", S, "training.seed", "value", "Seed of everything random in the run."),
    Entry("noise", S, "noise", "section", "Noise settings: `noise offset 0.0357`."),
    Entry("snr gamma", S, "noise.snr_gamma", "value", "Min-SNR-gamma loss weighting."),
    Entry("timesteps", S, "noise.timestep_min noise.timestep_max", "range", "Training timestep range."),
    Entry("loss", S, "loss.type", "value", "Loss: `l2` (squared error) or `huber` (pseudo-Huber)."),
    Entry("save", S, "save", "section", "Intermediate saves: `save every 500 steps keep 3 fp16`."),
    Entry("sample", S, "sample", "section", "Sample images during training, with prompts in quotes."),
    Entry("ema", S, "ema.decay", "value",
          "Keep an EMA of the trained weights, saved as `<name>-ema.safetensors`: `ema 0.9999 every 2 steps "
          "from step 100` (docs/TRAINING.md \"EMA\")."),
    Entry("validate", S, "validate", "section",
          'Validation loss on held-out images: `validate every 100 steps split 10%` or '
          '`validate "data/val" every 100 steps` (docs/TRAINING.md "Validation loss").'),
    Entry("output", S, "output.dir", "value", "Output folder, relative to the recipe."),
    Entry("name", S, "output.name", "value", "Base name of the trained artifact."),
    Entry("log", S, "log", "section", 'Logging: `log every 10`, `log wandb "my-project"`.'),
    Entry("loader", S, "loader", "section",
          "How images are loaded: `loader workers 4 prefetch 2` (the batches are the same either way)."),
    Entry("workers", S, "loader.workers", "value",
          "Image-loading worker processes (same as `loader workers`)."),
    Entry("fit", S, "fit", "value", "`strict`: over budget is an error; `auto`: use open memory levers."),
    Entry("gpus", S, "launch.processes", "value", "GPUs to train on, one process each (docs/SCALE.md)."),
    Entry("processes", S, "launch.processes", "value", "Training processes per machine (same as `gpus`)."),
    Entry("machines", S, "launch.machines", "value", "Machines of a multi-machine run."),
    Entry("strategy", S, "launch.strategy", "value",
          "How processes share the model: `ddp`, `deepspeed-zero2` (shards optimizer state and gradients) "
          "or `fsdp` (shards weights too)."),
    Entry("finetune", S, "finetune", "section",
          "Train every weight of the UNet and/or text encoders: `finetune unet+te1+te2` (docs/METHODS.md)."),
    Entry("embedding", S, "embedding.token", "value",
          'Textual inversion of a new token: `embedding "<tok>" init "word" vectors 4` (docs/METHODS.md).'),
    Entry("lllite", S, "lllite", "section",
          "Train a ControlNet-LLLite network on the frozen UNet: `lllite cond_dim 32 mlp_dim 64`; every data "
          "line needs `control` (docs/METHODS.md)."),
    # clauses for any statement
    _flag("bf16", A, "precision.mixed", "bf16", "Mixed precision in bfloat16."),
    _flag("fp16", A, "precision.mixed", "fp16", "Mixed precision in float16."),
    _flag("fp32", A, "precision.mixed", "fp32", "No mixed precision: compute in float32."),
    _flag("vae fp32", A, "precision.vae_fp32", True, "Keep the VAE in float32."),
    _flag("vae_fp32", A, "precision.vae_fp32", True, "Same as `vae fp32`."),
    _flag("vae sliced", A, "precision.vae_slicing", True,
          "Encode a batch one image at a time with the VAE: the same latents, a smaller peak."),
    _flag("base fp8", A, "precision.base_fp8", True,
          "Frozen UNet and text-encoder weights in float8, upcast per layer (LoRA, LLLite, embedding)."),
    _flag("offload text encoders", A, "precision.offload_text_encoders", True,
          "Text encoders on the CPU between batches, on the GPU only to encode (none on the CPU profile)."),
    _flag("offload vae", A, "precision.offload_vae", True,
          "VAE on the CPU between batches, on the GPU only to encode (no effect on the CPU profile)."),
    _flag("cache te", A, "cache.text_encoder", True,
          "Encode captions once and free the text encoders (the default where nothing forbids it)."),
    _flag("cache latents", A, "cache.latents", True,
          "Encode images once and free the VAE (the default where nothing forbids it)."),
    _flag("to disk", A, "cache.to_disk", True, "Keep caches on disk between runs."),
    _flag("no cache te", A, "cache.text_encoder", False,
          "Encode captions every step (text-encoder outputs are cached by default where the recipe allows)."),
    _flag("no cache latents", A, "cache.latents", False,
          "Encode images every step (latents are cached by default where the recipe allows)."),
    _flag("checkpointing", A, "training.gradient_checkpointing", True, "Gradient checkpointing."),
    _flag("channels last", A, "training.channels_last", True,
          "UNet and VAE in channels-last memory format (the default on CUDA profiles)."),
    _flag("compile", A, "training.compile", True,
          "Compile the UNet's training step with torch.compile: faster steps after a first step that "
          "compiles (minutes on a CPU, cached on disk for the next run; docs/TRAINING.md)."),
    _flag("v_prediction", A, "model.prediction", "v_prediction", "The model predicts v."),
    _flag("vpred", A, "model.prediction", "v_prediction", "Same as `v_prediction`."),
    _flag("epsilon", A, "model.prediction", "epsilon", "The model predicts the noise."),
    _flag("debiased", A, "noise.debiased", True, "Debiased-estimation loss weighting, 1/sqrt(SNR)."),
    _flag(
        "zero_terminal_snr", A, "noise.zero_terminal_snr", True,
        "Rescale the noise schedule to zero terminal SNR (v-prediction only).",
    ),
    _flag("no buckets", A, "resolution.buckets", False, "Aspect-ratio bucketing off: square crops."),
    # model
    Entry("seed", "model", "model.tiny_seed", "value", "Seed the built-in tiny model is built from."),
    Entry("config", "model", "model.config", "value",
          "Diffusers config folder of a single-file model (default: the shipped SDXL base configs)."),
    _flag("allow pickle", "model", "model.allow_pickle", True,
          "Accept a pickle checkpoint (.ckpt, .pt), read with torch.load(weights_only=True)."),
    Entry("init normal", "model", "model.init_std", "value",
          "Train the UNet from scratch: re-initialise it from N(0, std), e.g. `init normal 0.02`."),
    # data
    Entry("repeat", "data", "data.*.repeat", "value", "How many times each image is seen per epoch."),
    Entry("caption", "data", "data.*.caption_ext", "value", "Extension of the caption files."),
    _flag("shuffle", "data", "data.*.shuffle", True, "Shuffle comma-separated caption tags."),
    Entry("keep", "data", "data.*.keep_tokens", "value", "Leading tags kept in place when shuffling."),
    Entry("dropout", "data", "data.*.caption_dropout", "value", "Probability of an empty caption."),
    _flag("flip", "data", "data.*.flip", True, "Random horizontal flip."),
    _flag("random crop", "data", "data.*.random_crop", True,
          "Crop at a random place instead of the centre (the real offset goes into size conditioning)."),
    Entry("color jitter", "data", "data.*.color_jitter", "value",
          "Random brightness, contrast and saturation change of up to this fraction."),
    _flag("as regularization", "data", "data.*.regularization", True,
          "A folder of regularization (prior-preservation) images, balanced to the training samples."),
    Entry("loss weight", "data", "data.*.loss_weight", "value",
          "Weight of this dataset's samples in the loss (kohya's `prior_loss_weight` for regularization)."),
    Entry("separator", "data", "data.*.separator", "value", "Tag separator of the captions (default `,`)."),
    Entry("tag dropout", "data", "data.*.tag_dropout", "value", "Probability of dropping each unkept tag."),
    Entry("prefix", "data", "data.*.prefix", "value", "Text put before every caption."),
    Entry("suffix", "data", "data.*.suffix", "value", "Text put after every caption."),
    Entry("default caption", "data", "data.*.default_caption", "value", "Caption of images without one."),
    Entry("on bad image", "data", "data.*.bad_image", "value", "Bad input files: `skip` or `fail`."),
    Entry("mask", "data", "data.*.mask", "value",
          'Masked loss: `mask "folder"` (same-stem images: white trains, black is ignored) or `mask alpha` '
          "(each image's own alpha channel)."),
    Entry("control", "data", "data.*.control", "value",
          'Control images (ControlNet-LLLite): `control "folder"`, one same-stem image per training image, '
          "cut and flipped like it."),
    # resolution
    _flag("buckets", "resolution", "resolution.buckets", True, "Aspect-ratio bucketing on."),
    Entry("", "resolution", "resolution.min resolution.max", "range", "Smallest and largest bucket side."),
    Entry("step", "resolution", "resolution.step", "value", "Bucket side step (a multiple of 32)."),
    _flag("no upscale", "resolution", "resolution.no_upscale", True,
          "Never upscale: an image smaller than the bucket area gets a bucket of its own size, rounded down "
          "to the step."),
    # lora
    Entry("rank", "lora", "lora.rank", "value", "LoRA rank (network dim)."),
    Entry("alpha", "lora", "lora.alpha", "value", "LoRA alpha; the update is scaled by alpha / rank."),
    Entry("on", "lora", "lora.targets", "value", "Models that get LoRA layers: `unet`, `unet+te1+te2`."),
    Entry("dropout", "lora", "lora.dropout", "value", "Dropout on the LoRA path."),
    Entry("modules", "lora", "lora.modules", "value",
          "Layers that get LoRA: groups `attention`, `ff`, `proj`, `conv`, `emb` joined with `+`, or `kohya` "
          "(kohya's default: attention+ff+proj) (docs/METHODS.md)."),
    Entry("te1 lr", "lora", "lora.lr_te1", "value", "Learning rate of the LoRA on text encoder 1 (CLIP-L)."),
    Entry("te2 lr", "lora", "lora.lr_te2", "value", "Learning rate of the LoRA on text encoder 2 (bigG)."),
    Entry("from", "lora", "lora.from", "value",
          "Continue from a kohya LoRA file; its rank, alpha, models and layers are read from the file."),
    Entry("factor", "lora", "lora.factor", "value",
          "LoKr's Kronecker factor (LyCORIS `factor`, `lokr rank 8 factor 4`): -1 picks the most balanced "
          "split of each layer."),
    _flag("dora", "lora", "lora.dora", True,
          "DoRA: also train each output row's magnitude (weight-decomposed LoRA, LyCORIS `dora_wd`)."),
    # finetune
    Entry("", "finetune", "finetune.targets", "value", "Models trained whole: `unet`, `unet+te1+te2`."),
    Entry("te1 lr", "finetune", "finetune.lr_te1", "value", "Learning rate of text encoder 1 (CLIP-L)."),
    Entry("te2 lr", "finetune", "finetune.lr_te2", "value", "Learning rate of text encoder 2 (bigG)."),
    _flag("full bf16", "finetune", "finetune.full_bf16", True,
          "Weights, gradients and optimizer state in bfloat16: no fp32 master weights."),
    _flag("fused backward", "finetune", "finetune.fused_backward", True,
          "Adafactor steps each weight inside the backward pass: the gradients never all exist at once."),
    # embedding
    Entry("init", "embedding", "embedding.init", "value", "Word the new vectors start from."),
    Entry("vectors", "embedding", "embedding.vectors", "value", "Vectors per token."),
    Entry("template", "embedding", "embedding.template", "value",
          "Captions from kohya's `object` or `style` templates with the token, not from the caption files."),
    # lllite
    Entry("cond_dim", "lllite", "lllite.cond_dim", "value",
          "Channels of the control image's embedding (kohya's `cond_emb_dim`; even)."),
    Entry("mlp_dim", "lllite", "lllite.mlp_dim", "value",
          "Width of each LLLite module's down/mid layers (kohya's `network_dim`)."),
    Entry("dropout", "lllite", "lllite.dropout", "value", "Dropout after each LLLite module's mid layer."),
    # optimizer
    Entry("", "lr", "optimizer.name", "value", "The optimizer, named after the learning rate."),
    Entry("lr", "optimizer", "optimizer.lr", "value", "Learning rate."),
    Entry("args", "optimizer", "optimizer.args", "args", "Extra optimizer arguments: `args eps=1e-8`."),
    # schedule
    Entry(
        "warmup",
        "schedule",
        "schedule.warmup_steps schedule.warmup_percent",
        "steps_or_percent",
        "Warmup in steps (`warmup 100`) or as a percentage of the run (`warmup 5%`).",
    ),
    # batch
    Entry("accumulate", "batch", "training.accumulate", "value", "Gradient accumulation steps."),
    # noise
    Entry("offset", "noise", "noise.offset", "value", "Noise offset."),
    Entry("snr gamma", "noise", "noise.snr_gamma", "value", "Min-SNR-gamma loss weighting."),
    Entry("timesteps", "noise", "noise.timestep_min noise.timestep_max", "range", "Training timestep range."),
    Entry("multires", "noise", "noise.multires_iterations", "value", "Pyramid (multires) noise levels."),
    Entry("discount", "noise", "noise.multires_discount", "value", "Pyramid-noise discount per level."),
    Entry("perturbation", "noise", "noise.perturbation", "value", "Input-perturbation noise gamma."),
    # loss
    Entry("c", "loss", "loss.huber_c", "value", "Pseudo-Huber threshold: `loss huber c 0.1`."),
    # save
    Entry("every", "save", "save.every save.unit", "cadence", "Save cadence: `every 500 steps`."),
    Entry("keep", "save", "save.keep", "value", "How many intermediate saves to keep."),
    _flag("fp16", "save", "save.dtype", "fp16", "Save weights in float16."),
    _flag("bf16", "save", "save.dtype", "bf16", "Save weights in bfloat16."),
    _flag("fp32", "save", "save.dtype", "fp32", "Save weights in float32."),
    _flag("diffusers", "save", "save.diffusers", True,
          "A full fine-tune also saves its final model as a diffusers folder."),
    _flag("private", "save", "save.private", True,
          "Saved files keep only kohya's `ss_*`/`modelspec.*` metadata and the plan hash: no plan."),
    # sample
    Entry("", "sample", "sample.prompts", "strings", "Sample prompts, each in quotes."),
    Entry("every", "sample", "sample.every sample.unit", "cadence", "Sampling cadence: `every 250 steps`."),
    Entry("size", "sample", "sample.size", "value", "Sample image side in pixels."),
    Entry("steps", "sample", "sample.steps", "value", "Denoising steps."),
    Entry("cfg", "sample", "sample.cfg", "value", "Classifier-free guidance scale."),
    Entry("seed", "sample", "sample.seed", "value", "Sample seed."),
    _flag("before", "sample", "sample.before", True,
          "Also sample the base model before the first step, and write a before/after grid."),
    Entry("control", "sample", "sample.controls", "strings",
          'Control images of the prompts for an LLLite run, one per prompt in order (or one for all): '
          '`sample "a cat" control "edges/cat.png"`.'),
    # ema
    Entry("every", "ema", "ema.every ema.unit", "cadence", "EMA update cadence: `every 2 steps`."),
    Entry("from step", "ema", "ema.from_step", "value",
          "Step from which the EMA averages; until then it is set to the weights: `from step 100`."),
    # validate
    Entry("", "validate", "validate.folder", "value",
          "A folder of validation images with captions (indexed like a `data` folder), not trained on."),
    Entry("every", "validate", "validate.every validate.unit", "cadence",
          "Validation cadence: `every 100 steps` (the end of the run always validates)."),
    Entry("split", "validate", "validate.split_images validate.split_percent", "count_or_percent",
          "Hold out a share (`split 10%`) or a count (`split 4`) of the training images for validation."),
    Entry("seed", "validate", "validate.seed", "value", "Seed of the split and the validation noise."),
    # log
    Entry("every", "log", "log.every", "value", "Log a line every N steps."),
    _flag("tensorboard", "log", "log.tensorboard", True,
          "TensorBoard event files in the output folder's `logs/` (the default)."),
    _flag("no tensorboard", "log", "log.tensorboard", False, "No TensorBoard event files."),
    Entry("wandb", "log", "log.wandb", "value",
          'Also log to Weights & Biases, in this project: `log wandb "my-project"`.'),
    Entry("mlflow", "log", "log.mlflow", "value",
          'Also log to MLflow (a file store in `logs/mlflow/`), in this project: `log mlflow "my-project"`.'),
    Entry("comet_ml", "log", "log.comet_ml", "value",
          'Also log to Comet, in this project: `log comet_ml "my-project"`.'),
    Entry("aim", "log", "log.aim", "value",
          'Also log to Aim (a repository under `logs/aim/`), in this project: `log aim "my-project"`.'),
    Entry("clearml", "log", "log.clearml", "value",
          'Also log to ClearML, in this project: `log clearml "my-project"`.'),
    Entry("dvclive", "log", "log.dvclive", "value",
          'Also log to DVCLive (files under `logs/dvclive/`), in this project: `log dvclive "my-project"`.'),
    Entry("swanlab", "log", "log.swanlab", "value",
          'Also log to SwanLab, in this project: `log swanlab "my-project"`.'),
    Entry("trackio", "log", "log.trackio", "value",
          'Also log to Trackio, in this project: `log trackio "my-project"`.'),
    # loader
    Entry("workers", "loader", "loader.workers", "value",
          "Worker processes that decode and augment images ahead of the step (0: in the training process)."),
    Entry("prefetch", "loader", "loader.prefetch", "value", "Batches each worker prepares ahead."),
    _flag("pin memory", "loader", "loader.pin_memory", True, "Batches in page-locked memory (CUDA)."),
    _flag("no pin memory", "loader", "loader.pin_memory", False, "Batches in ordinary memory."),
)

UNITS = {"steps": "steps", "step": "steps", "epochs": "epochs", "epoch": "epochs"}
