"""`sdxlc explain`: the reference text of a recipe word, a schema field, a diagnostic code or a profile.

Everything is read from the tables the compiler itself uses: the vocabulary (sdxlc/lang/vocabulary.py),
the recipe and plan schemas, the defaults (sdxlc/lang/defaults.py), the diagnostics catalog
(sdxlc/lang/diagnostics.py) and the hardware profiles (schema/profiles/). The only text kept here is the
longer explanation of each diagnostic code. A topic may be several things at once (`seed` is a
statement and a clause of `model` and `sample`; `fit` is a word and a schema field): all are shown.
"""

from __future__ import annotations

from typing import Any

from sdxlc.lang import vocabulary as vocab
from sdxlc.lang.defaults import DEFAULTS, MODEL_DEFAULTS
from sdxlc.lang.diagnostics import CATALOG
from sdxlc.plan.schemas import load_schema
from sdxlc.resolve.profiles import ProfileError, list_profiles, load_profile

DETAILS: dict[str, str] = {
    "SDX0101": "The text holds a character the language has no use for outside a string (such as `=` with no "
    "word before it, or a stray `{`). Quote text that needs it.",
    "SDX0102": "A string opened with `\"` must close on the same line. Escape a quote inside it as `\\\"`.",
    "SDX0103": "A token stands where the grammar cannot take it: a `,` or `=` without a value after it, or a "
    "`=` that does not join a word to its value.",
    "SDX0104": "The file ends in the middle of a statement, usually after a trailing `,` or `=`.",
    "SDX0201": "The word is not a statement keyword, or not a clause of the statement it is in. The help "
    "names the closest word; `sdxlc explain WORD` shows where each word belongs.",
    "SDX0202": "A bare token that is neither a number, a percentage, a size, a range nor a word "
    "(`8x`, `1e-`).",
    "SDX0203": "The argument is of the wrong kind for its field: a word where a number is needed, a list "
    "where one value is needed, or an extra value no clause takes.",
    "SDX0204": "The clause needs an argument and none follows it (`rank` without a number).",
    "SDX0205": "A statement keyword appears inside another statement. Put `;` or a new line before it.",
    "SDX0206": "Every statement starts with a keyword; this one starts with a value or a `name=value` pair.",
    "SDX0207": "`block_lr` takes exactly 23 learning rates in kohya order; `x9` repeats a value.",
    "SDX0208": "The word is part of the language but the recipe schema has no field for it yet: it is "
    "read, reported and ignored.",
    "SDX0209": "A string holds a control or invisible character (a NUL, an escape, a right-to-left mark). "
    "Free text (prompts, caption prefix and suffix, the default caption, the separator, an embedding's "
    "init word) may hold tabs and new lines (`\\t`, `\\n`); names and paths may not.",
    "SDX0210": "A string is longer than its field allows (`sdxlc explain PATH` gives the limit), or a path "
    "has a file or folder name over 255 bytes.",
    "SDX0301": "One file sets the same field twice with different values. Keep one; a value a file "
    "inherits through `use` may be overridden without error.",
    "SDX0302": "One file sets the same field twice with the same value; one of them can go.",
    "SDX0303": "Recipe files use each other in a circle; the message lists the chain.",
    "SDX0304": "`use` lines must come first (only `sdx` may precede them); a late `use` is ignored.",
    "SDX0305": "A recipe file (the one given, or one named by `use`) cannot be read.",
    "SDX0306": "A `--set` option is not `path=value`, or its value cannot be read for that path.",
    "SDX0307": "A recipe file is not a regular file (a folder, a device such as /dev/zero, a pipe) or is "
    "too large: at most 32 KiB per file and 64 KiB with every file it uses. It is never read past that.",
    "SDX0308": "A chain of `use` is deeper than 8 files; use the deeper files directly.",
    "SDX0309": "`set` or `--set` names a dataset index the recipe does not have (`data.3.repeat` with one "
    "`data` line), or a new dataset's `path` that would leave a gap: datasets are numbered from 0 in order.",
    "SDX0310": "A file has more than 200 errors: they are reported and the rest of the file is not checked.",
    "SDX0401": "The recipe document breaks the recipe schema (schema/recipe.schema.json).",
    "SDX0402": "`set` or `--set` names a path the recipe schema does not have.",
    "SDX0403": "The value is not one of the field's allowed values; the help names the closest one.",
    "SDX0404": "The value is outside the field's bounds (see `sdxlc explain PATH` for them).",
    "SDX0405": "The value does not have the form the field needs (a list length, a pattern).",
    "SDX0406": "A section such as `optimizer` cannot be set as a whole; set its fields one by one.",
    "SDX0407": "A warning: the value is inside the field's bounds but outside its usual range (kohya's and "
    "diffusers' usual settings), or a learning rate is far from the chosen optimizer's usual rates. The "
    "message gives the value, the range and why; a deliberate value can stay.",
    "SDX0501": "The recipe (with its `use` files) has no `data` statement, so there is nothing to train on.",
    "SDX0502": "A `data` folder does not exist; paths are relative to the file that names them.",
    "SDX0503": "A `data` folder holds no image the compiler can read (png, jpg, webp, bmp).",
    "SDX0504": "No bucket side between the bounds keeps the training resolution's pixel count.",
    "SDX0505": "`steps` and `epochs` both fix the length of the run; give one of them.",
    "SDX0506": "The `constant` schedule ignores warmup; use `constant_with_warmup` or drop `warmup`.",
    "SDX0507": "The warmup is as long as the whole run or longer, so the learning rate never peaks.",
    "SDX0508": "A `data` or `output` folder is a filesystem root or lies in /proc, /sys or /dev: scanning it "
    "would read the whole machine or the kernel's files, writing to it would damage them.",
    "SDX0509": "The output folder is the data folder, lies inside it, or holds it: the run's samples and "
    "saves would become training images of the next run. Put `output` beside the data.",
    "SDX0510": "The model names a .safetensors file that does not exist, or whose header (read without "
    "loading any weight) has no SDXL UNet (`model.diffusion_model.*`) or no OpenCLIP bigG text encoder "
    "(`conditioner.embedders.1.model.*`): a LoRA, a lone VAE, a diffusers component or an SD 1.x file.",
    "SDX0512": "Pickle checkpoints (.ckpt, .pt) can run arbitrary code when loaded. Add `allow pickle` to "
    "the model line only for files you trust (they are then read with torch.load(weights_only=True)), or "
    "convert the file to .safetensors.",
    "SDX0513": "A single file holds weights only; the model's shapes come from a diffusers config folder "
    "(model_index.json and each component's config.json, no weights needed). The named folder is missing "
    "or lacks one of those files. Leave `config` out to use the SDXL base configs shipped with sdxlc.",
    "SDX0514": "`config` describes the architecture of a single-file checkpoint; a diffusers folder, a hub "
    "id or the tiny model carries its own configs, so the setting is ignored.",
    "SDX0515": "`init normal` throws the UNet's weights away and starts from noise. A LoRA trains a small "
    "update on top of frozen base weights, so on a random UNet it learns little; train from scratch with "
    "`finetune unet`.",
    "SDX0516": "A path the recipe gives cannot be resolved: its symbolic links loop, or the system refuses "
    "the name. Nothing is read through it.",
    "SDX0517": "sdxlc trains Stable Diffusion XL base-topology models only. The compiler reads a folder's "
    "model_index.json (`_class_name`) and unet/config.json (SDXL: `text_time` size conditioning, "
    "cross_attention_dim = the two text encoders' widths) and knows the well-known hub ids: SD 1.x/2.x, "
    "SD3, FLUX, PixArt, SDXL inpainting and the SDXL refiner (one text encoder) are refused. Hub ids are "
    "never downloaded at plan time; an unknown one is taken for SDXL.",
    "SDX0518": "A single file holds weights only; its shapes come from `config` (by default the full-size "
    "SDXL configs shipped with sdxlc). The file's UNet width, text-encoder widths or UNet tensor count, read "
    "from its safetensors header, differ from that config, so the model could not be loaded with it and "
    "the estimate would size the wrong model. Name the model's own config folder with `config`.",
    "SDX0511": "The model source is neither an existing folder nor a hub id of the form `owner/name`.",
    "SDX0525": "With `cache latents` every image is encoded once, at its crop, before training, so a random "
    "crop or a colour jitter would be drawn once and then frozen. Drop the augmentation or the latent cache; "
    "`flip` works with cached latents (both orientations are cached).",
    "SDX0520": "With `cache te` the text encoders run once per caption before training and their outputs "
    "are reused, so shuffled tags and caption dropout would never be seen. Drop one of the two.",
    "SDX0521": "A text encoder that is trained changes its outputs every step, so they cannot be cached.",
    "SDX0522": "SDXL latents are 1/8 of the image and the UNet halves them three times: sizes must be "
    "multiples of 32.",
    "SDX0523": "The stock SDXL VAE overflows in float16 and produces NaN latents. Use the fp16-fix VAE, "
    "`vae fp32`, or bf16.",
    "SDX0524": "The hardware profile cannot compute in this mixed-precision dtype. On the CPU, bf16 runs "
    "(torch's CPU autocast) but fp16 does not train: accelerate turns on no CPU autocast and no loss "
    "scaling for it, so use bf16 or fp32 there.",
    "SDX0526": "The plan computes in bf16 on the CPU, and this machine's CPU flags (/proc/cpuinfo) show "
    "no native bf16 instructions (x86 avx512_bf16 or amx_bf16, Arm bf16): torch emulates bf16 there, "
    "slower than fp32. The warning depends on the machine that compiles the recipe, so it is never "
    "stored in the plan and does not change its hash. See docs/TRAINING.md.",
    "SDX0528": "The timestep range is empty: its low bound is not below its high bound.",
    "SDX0529": "Every per-block learning rate is 0, so no LoRA layer would change.",
    "SDX0530": "A dataset with `on bad image fail` holds files that cannot be trained on: corrupt, truncated "
    "or empty images, unsupported formats, decompression bombs, captions that are not UTF-8, symlink loops "
    "or manifest rows naming missing files. Each is listed with its reason; fix them or use "
    "`on bad image skip`. See docs/DATA.md.",
    "SDX0531": "Regularization (prior-preservation) images are balanced against the training images: each "
    "epoch takes as many regularization samples as there are training samples. With only regularization "
    "datasets there is nothing to train on. See docs/DATA.md.",
    "SDX0532": "Every training (non-regularization) dataset has `loss weight 0`: every step's loss would be "
    "0 and nothing would train.",
    "SDX0533": "A count the recipe implies is past its limit: epochs × steps per epoch above 10^8 steps, or "
    "an epoch of more than 5,000,000 samples (images × repeats × `N_name` folder repeats).",
    "SDX0536": "`mask \"folder\"` found no same-stem mask for some images: they train unmasked (an all-white "
    "mask), as kohya does. The plan counts them (`masks_missing`) and names the first few. See docs/DATA.md "
    "\"Masked loss\".",
    "SDX0537": "`mask alpha` reads each image's alpha channel; these images have none and train unmasked. "
    "Save them as RGBA PNG or WebP with the ignored parts transparent, or give a mask folder.",
    "SDX0538": "A mask of another aspect than its image is stretched to the image before the image's crop "
    "and flip, so it may not line up: export masks at their image's size.",
    "SDX0539": "The folder given to `mask` or `control` does not exist (paths are relative to the recipe; a "
    "folder named alpha is written `mask \"./alpha\"`), or lies inside the dataset's folder, where its "
    "images would be scanned as training images: keep it beside the dataset folder.",
    "SDX0540": "`args` names a keyword the optimizer class does not take, or one sdxlc sets itself. The "
    "accepted names, their types and defaults are in schema/optimizers.json (docs/TRAINING.md).",
    "SDX0541": "An `args` value has the wrong type for its optimizer argument: a number where a flag is "
    "expected, one number where a pair is (`betas=0.9,0.99`), a decimal where a whole number is.",
    "SDX0542": "Paged optimizers keep their state in CUDA unified memory that pages to CPU RAM under "
    "pressure; without CUDA there is nothing to page. The 8-bit optimizers without paging step on the CPU.",
    "SDX0543": "Adafactor already scales each update by its RMS (`clip_threshold`), so clipping the "
    "gradient norm first changes its updates for no gain. sdxlc turns clipping off for Adafactor unless "
    "the recipe sets `max_grad_norm`.",
    "SDX0544": "With `relative_step=true` Adafactor computes its learning rate from the step count and "
    "ignores the optimizer's lr, so a learning-rate schedule has no effect. Keep `schedule constant`, or "
    "use an explicit `lr` (`relative_step=false`, the default in sdxlc) with any schedule.",
    "SDX0545": "Prodigy estimates the step size D itself; the learning rate multiplies that estimate and "
    "is meant to be about 1. A typical AdamW rate (1e-4) makes Prodigy barely move. Scale with `d_coef`.",
    "SDX0546": "Adafactor's `warmup_init` warms up its relative step size, so the class refuses it "
    "without `relative_step=true`.",
    "SDX0550": "Zero terminal SNR makes the last timestep pure noise. A model that predicts the noise has "
    "nothing to learn there and cannot denoise from it; it needs v-prediction (`v_prediction`).",
    "SDX0560": "DeepSpeed ZeRO-2 shards optimizer state and gradients over the processes, FSDP the weights "
    "too. "
    "A LoRA trains a few million parameters, so there is little to shard and the extra communication costs "
    "time; FSDP also wants one dtype per sharded unit, which a LoRA in fp32 over frozen bf16 weights breaks. "
    "`strategy ddp` is the usual choice for a LoRA (docs/SCALE.md).",
    "SDX0561": "Several processes on the CPU train over gloo with `Accelerator(cpu=True)`. That exercises "
    "the "
    "multi-process path (data split, gradient averaging, main-process writes) but shares the same cores, "
    "so it is not faster than one process.",
    "SDX0562": "DeepSpeed and FSDP run on CUDA GPUs only; on the CPU only `strategy ddp` (gloo) works.",
    "SDX0563": "A run over several machines needs GPUs and a network between them (nccl); the `cpu` profile "
    "is for a single machine. Name the GPUs' profile and see docs/SCALE.md for the launch.",
    "SDX0564": "Every optimizer step consumes accumulate × processes batches (one per process per "
    "micro-step). "
    "When an epoch has fewer, the ranks' share of the epoch is padded by repeating batches, so a step sees "
    "some images twice.",
    "SDX0570": "A recipe trains one thing: a LoRA (`lora`, also the default), the whole model (`finetune`) "
    "or a new token (`embedding`). Two of these sections, in the recipe or in a file it uses, conflict; "
    "keep one (docs/METHODS.md).",
    "SDX0571": "`lora from` names a file the compiler reads the header of (rank, alpha, models, layers). "
    "It must exist and be a kohya-format LoRA .safetensors file with `*.lora_down.weight` keys.",
    "SDX0572": "A LoRA continued from a file keeps the file's rank, alpha, models and layer groups, so the "
    "weights fit. Leave those out of the recipe (they are read from the file), or start a new LoRA. A file "
    "of kohya's default network reads as `modules kohya` (attention+ff+proj), one with kohya's conv_dim as "
    "`kohya+conv+emb`; layers of no group (time_embed, conv_in, …) cannot be continued. "
    "For a lower rank, resize the file first (`sdxlc lora resize FILE -o SMALLER --rank N`) and continue "
    "from that.",
    "SDX0573": "Textual inversion trains input rows of both text encoders, so their outputs change every "
    "step and cannot be computed once before training.",
    "SDX0574": "The fused backward pass steps each weight inside the backward pass with Adafactor's "
    "per-weight update; sdxlc implements it for Adafactor only, as kohya does.",
    "SDX0575": "With the fused backward pass each weight steps as soon as its gradient is ready, so "
    "gradients are never kept to be summed over micro-batches: gradient accumulation is impossible.",
    "SDX0576": "With several processes a weight's gradient is averaged over them after the backward pass; "
    "the fused step would happen before that, on each process's own gradient.",
    "SDX0577": "`full bf16` keeps the trained weights in bfloat16, which needs bf16 mixed precision (and a "
    "card that supports it).",
    "SDX0578": "`save … diffusers` writes the trained model as a diffusers folder; only `finetune` trains a "
    "model. A LoRA or an embedding is one small file.",
    "SDX0579": "The chosen method ignores this setting: `block_lr` sets the UNet blocks' rates, `te1 lr` "
    "and `te2 lr` the rates of encoders that are trained.",
    "SDX0580": "A ControlNet-LLLite network learns how a control image (edges, depth, pose) steers the "
    "frozen UNet, from image/control pairs: every data line needs `control \"folder\"` with a same-stem "
    "control image per training image, and a `validate \"folder\"` (whose images have none) is refused: "
    "hold out training pairs with `validate … split 10%` (docs/METHODS.md \"ControlNet-LLLite\").",
    "SDX0581": "Control images are read only by a ControlNet-LLLite run (`lllite`); with another method the "
    "`control` folders of the data lines and the sample line's control images are not used.",
    "SDX0582": "`sample \"p1\" \"p2\" control \"c1.png\" \"c2.png\"` pairs the control images with the "
    "prompts in order; one control image serves every prompt. Another count cannot be paired.",
    "SDX0583": "A sample prompt's control image is an input of the plan (hashed like the model's files): it "
    "must be a readable file, relative to the recipe.",
    "SDX0584": "The LLLite network is one optimizer group at the optimizer's learning rate (as kohya trains "
    "it); `block_lr` sets the rates of UNet blocks, which LLLite does not train.",
    "SDX0535": "A mask is read as the luminance of its pixels, with any alpha composited onto white (as "
    "every training image is): a transparent pixel of a mask file therefore trains, however dark its colour. "
    "Masks painted on a transparent layer lose what the transparency meant; save them opaque (black = "
    "ignored), or use `mask alpha` to take each image's own alpha channel as its mask.",
    "SDX0585": "peft trains DoRA (a magnitude per output row on top of the direction a LoRA adapts) for "
    "LoRA layers only; its LoHa and LoKr layers have no magnitude. Train `lora … dora`, or drop `dora`.",
    "SDX0586": "LoHa and LoKr layers (peft's, as LyCORIS') have no dropout on their input, so `dropout` "
    "would be ignored; only a `lora` has it.",
    "SDX0587": "LoKr splits each width n into a × b with a the factor: 0 is no split. -1 (the default) picks "
    "the most balanced split of each layer; a factor that does not divide a width is taken as an upper "
    "bound for that layer's split, as LyCORIS does.",
    "SDX0588": "`proj`, `conv` and `emb` are layer groups of the UNet only (docs/METHODS.md): a LoRA "
    "`on te1` or `on te2` with only those groups would find no layer of the text encoder to train. Add "
    "`attention` or `ff` (or use `kohya`), or leave the text encoders out of `on`.",
    "SDX0589": "The LLLite stem of the deepest conditioned layers divides the control image's side by 32 "
    "(docs/METHODS.md \"ControlNet-LLLite\"): at a sample size that is not a multiple of 32 it gives fewer "
    "positions than the UNet layer has, and sampling would fail after training. Use `size 64`, `96`, `1024`…",
    "SDX0590": "A `save every`, `sample every` or `log every` cadence longer than the whole run never "
    "fires: the run writes only its final save, renders only its final samples, logs only its last step. "
    "A cadence in epochs counts the run's steps per epoch. Give a shorter cadence to get intermediate ones.",
    "SDX0591": "Adafactor with an explicit learning rate (sdxlc's default, `relative_step=false`) is usually "
    "trained at a constant rate after a short warmup (kohya's SDXL advice); an Adafactor recipe that names "
    "no schedule gets `constant_with_warmup` with 100 warmup steps (at most a tenth of the run). Another "
    "schedule is allowed, and warned about.",
    "SDX0592": "`validate … split` holds out the training images with the smallest split keys; holding "
    "out as many as the training datasets have leaves nothing to train. Hold out fewer, or give the "
    "validation images a folder of their own (docs/TRAINING.md \"Validation loss\").",
    "SDX0593": "`validate` needs validation images: a `split` of the training images, a folder "
    "(`validate \"data/val\"`), or both; an empty folder gives none.",
    "SDX0594": "The EMA is set to the weights until `from step` and then updates every `every` steps; when "
    "the first update would come after the last step, the EMA file is the final weights again. Update "
    "more often or start earlier (docs/TRAINING.md \"EMA\").",
    "SDX0595": "The EMA copies whole trained weights and the validation pass runs the whole UNet on the "
    "main process; FSDP keeps only a shard of the weights on each process. DDP and DeepSpeed ZeRO-2 keep "
    "whole weights on every process and work with both.",
    "SDX0601": "`profile auto` could not find a GPU with nvidia-smi, so the plan is made for the CPU.",
    "SDX0602": "The hardware profile named is unknown or unreadable; `sdxlc profiles` lists them.",
    "SDX0610": "The estimated peak memory of the run is over the profile's budget. The help lists the "
    "levers that would save the most; `fit auto` applies the ones the recipe leaves open.",
    "SDX0611": "`base fp8` stores frozen base weights in float8 and upcasts them per layer. A fine-tune "
    "trains those weights (in fp32 or bf16), so there is nothing frozen to store that way.",
    "SDX0612": "Offloaded text encoders visit the GPU only to encode a batch without gradients. A LoRA on "
    "them, their fine-tune or new embedding rows need them on the GPU through the backward pass.",
    "SDX0613": "On the CPU profile every component is in CPU memory already: the plan writes the offload "
    "words as false and the run behaves as without them.",
    "SDX0614": "FSDP flattens the parameters of each wrapped unit into one tensor, which has one dtype: the "
    "float8 weights of `base fp8` cannot sit beside the bf16 norms and LoRA. DDP keeps each parameter.",
    "SDX0615": "DoRA scales each LoRA layer by the norm of its base weight plus the update, computed on the "
    "stored base weight every step; torch does not promote float8 in that arithmetic.",
    "SDX0616": "A cached component is not used during the steps: after the caching pass the text encoders "
    "(`cache te`) or the VAE (`cache latents`) wait in CPU memory, offloaded or not, and sampling moves "
    "them to the GPU for its prompts and images either way. Offloading then only keeps them off the GPU "
    "from the model load until the caching pass encodes with them, so the estimate counts no saving for "
    "it. The caches are on by default where the recipe allows them; `no cache te` / `no cache latents` "
    "encode every step, and then the offload words keep the components off the GPU between batches.",
    "SDX0618": "torch.compile traces the UNet's step into graphs; a Python decision on a tensor's value or a "
    "call dynamo cannot follow ends a graph, and the rest of that layer runs eager. peft's LoHa and LoKr "
    "layers decide their module dropout with `torch.rand(1) > p`, and its DoRA layers look up the base "
    "weight's type module, at every adapted layer: the compiled step is cut into small pieces, so it gains "
    "little while the first run still spends minutes compiling (docs/TRAINING.md \"Compiling the step\").",
    "SDX0617": "Without `to disk` every cached latent and text-encoder output is held in host memory for the "
    "whole run (0.25-0.5 MiB of latents per 1024² image and flip, up to 0.6 MiB per caption), which a GPU "
    "profile's estimate does not count. `cache latents to disk` / `cache te to disk` keep only the entries' "
    "keys in memory and read each batch's entries from the disk cache.",
}

_EXAMPLE_VALUES: dict[str, str] = {
    "model.source": "tiny",
    "model.vae": '"madebyollin/sdxl-vae-fp16-fix"',
    "profile": "rtx3060-12gb",
    "data.*.path": '"data/style"',
    "data.*.caption_ext": ".txt",
    "output.dir": '"out/style"',
    "output.name": "style",
    "optimizer.name": "lion",
    "schedule.name": "cosine",
    "block_lr": "0, 1e-4 x9, 5e-5 x3, 1e-4 x9, 1e-4",
    "lora.targets": "unet",
    "sdx": "1",
    "ema.decay": "0.9999",
    "validate.folder": '"data/val"',
    "noise.snr_gamma": "5",
    "noise.offset": "0.0357",
    "noise.multires_iterations": "6",
    "noise.perturbation": "0.1",
    "loss.type": "huber",
}

_ARG_EXAMPLES: dict[str, str] = {
    "range": "0..1000",
    "cadence": "500 steps",
    "steps_or_percent": "5%",
    "count_or_percent": "10%",
    "strings": '"a lighthouse at dusk"',
    "args": "weight_decay=0.01",
    "file": '"base/sdxl.sdx"',
    "setting": "optimizer.args.weight_decay 0.01",
}


def explain(topic: str) -> str | None:
    """The reference text of a topic, or None when nothing is called that."""
    topic = topic.strip()
    if not topic:
        return None
    parts = [
        _code(topic.upper()) if topic.upper().startswith("SDX") else None,
        _words(topic),
        _field(topic),
        _value(topic),
        _profile(topic),
        _kohya(topic),
    ]
    found = [part for part in parts if part]
    return "\n\n".join(found) + "\n" if found else None


def topics() -> list[str]:
    """Every topic `explain` knows: words, recipe and plan paths, codes and profile names."""
    words = [entry.words for entry in vocab.VOCABULARY if entry.words]
    paths = _recipe_paths() + [path for path, _ in _plan_fields()]
    codes = sorted(set(CATALOG) | set(DETAILS))
    values = [str(value) for _, choices in _enums() for value in choices]
    return list(dict.fromkeys(words + paths + codes + values + list_profiles() + kohya_topics()))


def _kohya(topic: str) -> str | None:
    from sdxlc.tools.kohya.table import explain_kohya

    return explain_kohya(topic)


def kohya_topics() -> list[str]:
    from sdxlc.tools.kohya.table import kohya_topics as names

    return names()


# --- diagnostic codes ---------------------------------------------------------------------------


def _code(code: str) -> str | None:
    if code not in CATALOG and code not in DETAILS:
        return None
    lines = [f"{code}"]
    if code in CATALOG:
        severity, title = CATALOG[code]
        lines = [f"{code} ({severity}): {title}"]
    if code in DETAILS:
        lines += ["", DETAILS[code]]
    return "\n".join(lines)


# --- vocabulary words ---------------------------------------------------------------------------


def _words(topic: str) -> str | None:
    """Every entry spelled `topic`, or (when none is) every phrase starting with it (`cache`)."""
    entries = [e for e in vocab.VOCABULARY if e.words == topic]
    if not entries:
        entries = [e for e in vocab.VOCABULARY if e.words.split()[:1] == [topic] and " " in e.words]
    if not entries:
        return None
    return "\n\n".join(_entry_text(entry) for entry in entries)


def _entry_text(entry: vocab.Entry) -> str:
    if entry.context == vocab.STATEMENT:
        where = "statement"
    elif entry.context == vocab.ANY:
        where = "clause of any statement"
    else:
        where = f"clause of `{entry.context}`"
    words = f"`{entry.words}`" if entry.words else "(positional argument)"
    lines = [f"{words} ({where})", f"  {entry.doc}"]
    if entry.paths:
        lines.append("  sets:     " + ", ".join(entry.paths))
    lines.append(f"  argument: {_argument(entry)}")
    lines.append(f"  example:  {example_line(entry)}")
    return "\n".join(lines)


def _argument(entry: vocab.Entry) -> str:
    if entry.arg == "flag":
        return f"none: sets `{_literal(entry.const)}`"
    node = vocab.schema_node(entry.paths[0].replace("*", "0")) if entry.arg == "value" else None
    return _type_text(node) if node is not None else vocab.ARG_KINDS[entry.arg]


def example_line(entry: vocab.Entry) -> str:
    """A recipe line that uses the entry."""
    clause = " ".join(part for part in (entry.words, _example_argument(entry)) if part)
    if entry.context in (vocab.STATEMENT, vocab.ANY):
        if entry.arg == "section":
            first = next((e for e in vocab.VOCABULARY if e.context == entry.paths[0]), None)
            return f"{clause} {example_line(first).split(' ', 1)[1]}" if first else clause
        return clause
    owner = next(e for e in vocab.VOCABULARY if e.context == vocab.STATEMENT and e.words == entry.context)
    head = " ".join(part for part in (owner.words, _example_argument(owner)) if part)
    return f"{head} {clause}"


def _example_argument(entry: vocab.Entry) -> str:
    if entry.arg == "range":
        low, high = (_default(path) for path in entry.paths)
        return f"{low}..{high}" if low and high else _ARG_EXAMPLES["range"]
    if entry.arg != "value":
        return _ARG_EXAMPLES.get(entry.arg, "")
    path = entry.paths[0]
    if path in _EXAMPLE_VALUES:
        return _EXAMPLE_VALUES[path]
    if _default(path):
        return _default(path)
    node = vocab.schema_node(path.replace("*", "0")) or {}
    if "enum" in node:
        return str(node["enum"][0])
    if node.get("type") in ("integer", "number"):
        return str(node.get("minimum", 1))
    return '"…"'


def _default(path: str) -> str:
    """The built-in default of a recipe path as recipe text (SDXL's where it depends on the model)."""
    if path in DEFAULTS:
        return _literal(DEFAULTS[path])
    if path in MODEL_DEFAULTS["sdxl"]:
        return _literal(MODEL_DEFAULTS["sdxl"][path])
    return ""


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(_literal(v) for v in value)
    return str(value)


# --- schema fields ------------------------------------------------------------------------------


def _recipe_paths() -> list[str]:
    sections = [name for name, node in load_schema("recipe")["properties"].items() if "properties" in node]
    return sections + vocab.leaf_paths()


def _field(topic: str) -> str | None:
    if not topic or not all(part for part in topic.split(".")):
        return None
    recipe = _recipe_field(topic)
    plan = next((node for path, node in _plan_fields() if path == _generic(topic)), None)
    if recipe is None and plan is None:
        return None
    out = [recipe] if recipe else []
    if plan is not None:
        out.append(_describe(f"{topic} (plan field)", plan, load_schema("plan")))
    return "\n\n".join(out)


def _recipe_field(topic: str) -> str | None:
    node = vocab.schema_node(topic.replace("*", "0"))
    if node is None:
        return None
    text = _describe(f"{topic} (recipe field)", node, load_schema("recipe"))
    generic = _generic(topic)
    defaults = [f"  default:  {_literal(DEFAULTS[generic])}"] if generic in DEFAULTS else []
    for family, table in MODEL_DEFAULTS.items():
        if generic in table:
            defaults.append(f"  default:  {_literal(table[generic])} for {family} models")
    words = [f"`{e.words or e.context}`" for e in vocab.VOCABULARY if generic in e.paths]
    lines = [text, *defaults]
    if words:
        lines.append("  words:    " + ", ".join(dict.fromkeys(words)))
    return "\n".join(lines)


def _generic(path: str) -> str:
    return ".".join("*" if part.isdigit() else part for part in path.split("."))


def _describe(title: str, node: dict[str, Any], schema: dict[str, Any]) -> str:
    node = _deref(node, schema)
    lines = [title]
    if node.get("description"):
        lines.append(f"  {node['description']}")
    if "properties" in node:
        lines.append("  fields:   " + ", ".join(node["properties"]))
    else:
        lines.append(f"  type:     {_type_text(node)}")
    return "\n".join(lines)


def _type_text(node: dict[str, Any]) -> str:
    """`vocab.type_text`, also for a list without a fixed length (which it does not handle)."""
    if node.get("type") == "array" and node.get("minItems") is None and node.get("maxItems") is None:
        return "list of " + _type_text(node.get("items", {}))
    return vocab.type_text(node)


def _deref(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target: dict[str, Any] = schema.get("$defs", {}).get(ref.split("/")[-1], {})
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _plan_fields() -> list[tuple[str, dict[str, Any]]]:
    """Every field of the plan schema as (dotted path with `*` for items, schema node)."""
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        if prefix:
            out.append((prefix, node))
        items = node.get("items")
        if isinstance(items, dict) and "properties" in items:
            walk(items, f"{prefix}.*")
        for name, child in node.get("properties", {}).items():
            walk(child, f"{prefix}.{name}" if prefix else name)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{prefix}.*")

    walk(load_schema("plan"), "")
    return out


def _enums() -> list[tuple[str, list[Any]]]:
    """The recipe fields that take one of a fixed set of values, with those values."""
    out = []
    for path in vocab.leaf_paths():
        node = vocab.schema_node(path.replace("*", "0")) or {}
        choices = node.get("enum") or node.get("items", {}).get("enum")
        if choices:
            out.append((path, list(choices)))
    return out


def _value(topic: str) -> str | None:
    """`lion`: the fields it is a value of, and the words that set them."""
    fields = [path for path, choices in _enums() if topic in [str(c) for c in choices]]
    if not fields:
        return None
    out = []
    for path in fields:
        entries = [e for e in vocab.VOCABULARY if path in e.paths and e.arg == "value"]
        lines = [f"`{topic}` (a value of {path})"]
        for entry in entries:
            line = example_line(entry).rsplit(" ", 1)[0] + f" {topic}"
            lines.append(f"  example:  {line}")
        lines.append(_recipe_field(path) or "")
        out.append("\n".join(lines).rstrip())
    return "\n\n".join(out)


# --- hardware profiles --------------------------------------------------------------------------


def _profile(topic: str) -> str | None:
    if topic not in list_profiles():
        return None
    try:
        p = load_profile(topic)
    except ProfileError as error:
        return f"{topic} (hardware profile): {error.message}"
    gib = 2**30
    tflops = f"fp32 {p.fp32_tflops:g}"
    tflops += f", bf16 {p.bf16_tflops:g}" if p.bf16_tflops else ""
    tflops += f", fp16 {p.fp16_tflops:g}" if p.fp16_tflops else ""
    cpu_bf16 = "on request (CPU autocast, not the default)" if p.device == "cpu" else "no"
    lines = [
        f"{p.name} (hardware profile): {p.title}",
        f"  device:    {p.device} ({p.tier}, {p.architecture})",
        f"  memory:    {p.vram_total_bytes / gib:.1f} GiB, {p.usable_vram_bytes / gib:.1f} GiB usable",
        f"  dtypes:    bf16 {'yes' if p.bf16 else cpu_bf16}, fp16 {'yes' if p.fp16 else 'no'}",
        f"  TFLOP/s:   {tflops}; memory bandwidth {p.memory_bandwidth_gbps:g} GB/s",
        f"  example:   profile {p.name}",
    ]
    lines += [f"  note:      {note}" for note in p.notes]
    return "\n".join(lines)
