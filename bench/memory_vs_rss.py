"""Real memory of training steps on CPU (peak RSS) against the analytic estimate and `sdxlc plan --exact`.

Usage: python bench/memory_vs_rss.py [--out bench/results/memory_vs_rss.md] [--quick] [--threads 2]
       [--only SUBSTRING] [--full]

Every row is a recipe compiled by the real compiler (profile cpu, 3 steps, no buckets, no samples) and
run by the real runtime (`runtime.train.run.run_plan`) in a FRESH process with
`MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0` (so glibc mmaps every block over 64 KiB and
returns it on free: RSS follows live bytes) and `OMP_NUM_THREADS` fixed. The worker wraps three runtime
seams without changing them: `runtime.train.run.setup_model` (model load), `runtime.train.loop.batch_loss`
(encode = everything from the end of the previous step to the UNet forward; forward) and the
accelerator's `backward`, plus an optimizer step post-hook. At each seam it reads VmHWM and VmRSS from
/proc/self/status and resets VmHWM by writing "5" to /proc/self/clear_refs (so each number is the peak of
that phase alone; where the kernel refuses, the peaks are cumulative and the table says so).

Baseline: a separate fresh process with the same environment that imports exactly the modules the worker
imports before it loads anything (torch, diffusers' SDXL pipeline and models, transformers' CLIP models
and Adafactor, peft, accelerate, the runtime's train/run, loop, methods and model modules), reads the plan
and runs one 4x4 matmul and one autograd backward on 4 values (so torch's lazily-initialised CPU kernels
and autograd engine are in), and builds nothing else: no model, no optimizer, no data loader. Its VmRSS
(the interpreter, the shared libraries' resident pages, import-time Python objects, glibc arenas) is
subtracted from every peak. What stays in "measured": tensors, plus Python objects of the model
(modules, parameters' wrappers), autograd graph nodes, the data set's decoded images and the loader,
oneDNN scratch buffers.

The estimate column is the plan's training peak on the cpu profile (sum of `vram_breakdown` without
`sample_peak`; `allocator_overhead` counts: it is the profile's term for this slack); the exact column
is `runtime.exact.step.measure` (one steady-state step on fake tensors; no allocator overhead). On the cpu
profile both add the process's `runtime_state` and leave out the memory-mapped weights a step never reads
(sdxlc/plan/host_memory.py), so both compare with RSS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MiB = float(1 << 20)
DATA = ROOT / "recipes" / "data" / "quickstart"
NOT_SEEN = {"sample_peak"}
PHASES = ("load", "encode", "forward", "backward", "optimizer")
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}

# (model, method, px, batch, checkpointing, optimizer); model: tiny | mid96 | mid160 | sdxl
Row = tuple[str, str, int, int, bool, str]
ROWS: list[Row] = [
    ("tiny", "lora", 64, 1, False, "adamw"),
    ("tiny", "finetune", 64, 4, True, "adamw"),
    ("mid96", "lora", 128, 1, True, "adamw"),
    ("mid96", "lora", 128, 4, False, "adamw"),
    ("mid96", "lora", 256, 1, False, "lion"),
    ("mid96", "finetune", 128, 1, True, "adamw"),
    ("mid96", "finetune", 128, 4, True, "adafactor"),
    ("mid160", "lora", 128, 1, True, "adafactor"),
    ("mid160", "finetune", 128, 1, True, "adafactor"),
]
NO_CACHE = ("cache.text_encoder=false", "cache.latents=false")
WORK = Path(tempfile.gettempdir()) / "sdxlc-memory-vs-rss"  # model folders, kept between runs
FULL_ROW: Row = ("sdxl", "lora", 256, 1, True, "adamw")
FULL_NEEDS_GB = 18

# SDXL topology (layers per block 2, transformer depth 1/2/10), head width 32; small CLIP text encoders
# (4 layers, 256 and 512 wide: cross-attention width 768) and a small VAE keep the UNet the bulk.
MID_UNETS = {
    "mid96": {"block_out_channels": [96, 192, 384], "attention_head_dim": [3, 6, 12]},
    "mid160": {"block_out_channels": [160, 320, 640], "attention_head_dim": [5, 10, 20]},
    # shallower (transformer depth 1/2/2): tests/test_memory_truth.py
    "small96": {"block_out_channels": [96, 192, 384], "attention_head_dim": [3, 6, 12],
                "transformer_layers_per_block": [1, 2, 2]},
}
TE_WIDTHS = (256, 512)


# ---- models ------------------------------------------------------------------------------------


def build_mid_folder(name: str, folder: Path) -> Path:
    """A random-init SDXL-topology diffusers folder (weights and configs) that `sdxlc plan` sizes."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from runtime.formats.single_file import SDXL_CONFIG_DIR, load_tokenizers
    from sdxlc.resolve.model_source import SHIPPED_CONFIG

    torch.manual_seed(0)
    tok1, tok2 = load_tokenizers(SDXL_CONFIG_DIR)
    w1, w2 = TE_WIDTHS

    def text(width: int, projection: bool) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tok1), hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=4, num_attention_heads=width // 64,
                              max_position_embeddings=77,
                              projection_dim=width, hidden_act="gelu" if projection else "quick_gelu")

    unet_config = json.loads((SHIPPED_CONFIG / "unet" / "config.json").read_text())
    unet_config.update(MID_UNETS[name], cross_attention_dim=w1 + w2,
                       projection_class_embeddings_input_dim=6 * 256 + w2)
    unet_config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        norm_num_groups=32, scaling_factor=0.13025, sample_size=256)
    pipe = StableDiffusionXLPipeline(
        unet=UNet2DConditionModel(**unet_config), vae=vae,
        text_encoder=CLIPTextModel(text(w1, False)),
        text_encoder_2=CLIPTextModelWithProjection(text(w2, True)),
        tokenizer=tok1, tokenizer_2=tok2,
        scheduler=EulerDiscreteScheduler.from_pretrained(SHIPPED_CONFIG / "scheduler"), add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_full_folder(folder: Path) -> Path:
    """Full-size SDXL from the shipped configs, random init, saved as a diffusers folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from runtime.formats.single_file import SDXL_CONFIG_DIR, load_tokenizers

    torch.manual_seed(0)
    tok1, tok2 = load_tokenizers(SDXL_CONFIG_DIR)
    conf = SDXL_CONFIG_DIR
    builders: dict[str, Any] = {  # one component in memory at a time
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(conf / "unet")),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(conf / "vae")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(conf / "text_encoder")),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(conf / "text_encoder_2")
        ),
    }
    for name, build in builders.items():
        build().save_pretrained(folder / name)
    tok1.save_pretrained(folder / "tokenizer")
    tok2.save_pretrained(folder / "tokenizer_2")
    EulerDiscreteScheduler.from_pretrained(conf / "scheduler").save_pretrained(folder / "scheduler")
    shutil.copy(conf / "model_index.json", folder / "model_index.json")
    return folder


# ---- plans -------------------------------------------------------------------------------------


def recipe_text(model_line: str, row: Row, out: Path) -> str:
    _, method, px, batch, ckpt, optimizer = row
    lines = ["sdx 1", model_line, "profile cpu", f'data "{DATA}" caption .txt', f"resolution {px} no buckets"]
    lines.append("lora rank 8 alpha 8 on unet" if method == "lora" else "finetune unet")
    lines += [f"lr 1e-4 {optimizer}", f"batch {batch}", "steps 3", f'output "{out}"']
    if ckpt:
        lines.append("checkpointing")
    return "\n".join(lines) + "\n"


def plan_for(model_line: str, row: Row, folder: Path) -> dict[str, Any]:
    from sdxlc.pipeline import compile_recipe

    path = folder / "bench.sdx"
    path.write_text(recipe_text(model_line, row, folder / "out"), encoding="utf-8")
    # the rows measure encoders and VAE at work in every step: no cache, whatever the default is
    compiled = compile_recipe(path, sets=NO_CACHE, profile="cpu")
    if compiled.plan is None:
        raise SystemExit(f"{row}: does not compile: {[str(d) for d in compiled.errors]}")
    return compiled.plan


# ---- the measuring processes -------------------------------------------------------------------


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def import_stack() -> None:
    """What the worker imports before it loads the model; the baseline process imports the same."""
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers.optimization  # noqa: F401
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

    import runtime.methods.finetune  # noqa: F401
    import runtime.methods.lora  # noqa: F401
    import runtime.model.load  # noqa: F401
    import runtime.train.loop  # noqa: F401
    import runtime.train.run  # noqa: F401

    a = torch.ones(4, 4, requires_grad=True)
    (a @ a).sum().backward()


def baseline(out: Path) -> None:
    import_stack()
    _reset_hwm()
    out.write_text(json.dumps(_status()))


def worker(plan_path: Path, out: Path) -> None:
    """Run the plan with the runtime, recording the peak and the resident bytes at every seam."""
    import_stack()
    from runtime.train import loop
    from runtime.train import run as runmod

    plan = json.loads(plan_path.read_text())
    marks: list[dict[str, Any]] = []
    state = {"step": 0, "resettable": _reset_hwm(), "t": time.perf_counter()}

    def mark(phase: str) -> None:
        now = _status()
        marks.append({"phase": phase, "step": state["step"], "peak": now["VmHWM"], "rss": now["VmRSS"],
                      "anon": now["RssAnon"], "file": now["RssFile"],
                      "seconds": time.perf_counter() - state["t"]})
        state["resettable"] = _reset_hwm() and state["resettable"]
        state["t"] = time.perf_counter()

    setup_model, batch_loss, make_optimizer = runmod.setup_model, loop.batch_loss, loop.make_optimizer

    def setup_wrapped(plan_: dict[str, Any]) -> Any:
        mark("before_load")
        loaded = setup_model(plan_)
        mark("load")
        backward = loaded.accelerator.backward

        def backward_wrapped(loss: Any, **kwargs: Any) -> None:
            backward(loss, **kwargs)
            mark("backward")

        loaded.accelerator.backward = backward_wrapped
        return loaded

    def loss_wrapped(*args: Any, **kwargs: Any) -> Any:
        state["step"] += 1
        mark("encode")
        loss = batch_loss(*args, **kwargs)
        mark("forward")
        return loss

    def optimizer_wrapped(*args: Any, **kwargs: Any) -> Any:
        optimizer = make_optimizer(*args, **kwargs)
        optimizer.register_step_post_hook(lambda *_: mark("optimizer"))
        return optimizer

    runmod.setup_model, loop.batch_loss, loop.make_optimizer = setup_wrapped, loss_wrapped, optimizer_wrapped
    started = time.perf_counter()
    runmod.run_plan(plan, progress=False)
    out.write_text(json.dumps({"marks": marks, "resettable": state["resettable"],
                               "seconds": time.perf_counter() - started}))


def spawn(args: list[str], threads: int, timeout: float) -> dict[str, Any]:
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        proc = subprocess.run([sys.executable, __file__, *args, str(out)], env=env, timeout=timeout,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        data: dict[str, Any] = json.loads(out.read_text())
        return data
    finally:
        out.unlink(missing_ok=True)


# ---- one row -----------------------------------------------------------------------------------


def phases(marks: list[dict[str, Any]], step: int) -> dict[str, int]:
    """Peak bytes of each phase of one step (load counts as step 0)."""
    return {m["phase"]: int(m["peak"]) for m in marks if m["step"] == step and m["phase"] != "before_load"}


def estimate_terms(plan: dict[str, Any]) -> tuple[int, int]:
    """(training peak, resident weights) of the plan's estimate."""
    terms = {k: v for k, v in plan["estimate"]["vram_breakdown"].items() if k not in NOT_SEEN}
    weights = sum(v for k, v in terms.items() if k.endswith("_weights") or k == "trainable_params")
    return int(sum(terms.values())), int(weights)


def predictions(model_line: str, row: Row, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row's plan and what the estimate and `--exact` predict for it (configs are all they read)."""
    from runtime.exact.step import measure

    plan = plan_for(model_line, row, folder)
    exact = measure(plan)
    est, est_weights = estimate_terms(plan)
    return plan, {"estimate": est, "estimate_weights": est_weights, "exact": exact["peak_bytes"],
                  "exact_phases": exact["phase_peaks"], "exact_resident": exact["resident_bytes"],
                  "exact_breakdown": exact["breakdown"],
                  "estimate_breakdown": plan["estimate"]["vram_breakdown"]}


def measure_row(model_line: str, row: Row, tmp: Path, threads: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    plan, predicted = predictions(model_line, row, folder)
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(plan))
    base = spawn(["--baseline"], threads, 600)
    real = spawn(["--worker", str(plan_path)], threads, 1800)
    return {"row": row, "model_line": model_line, "baseline": base["VmRSS"], "marks": real["marks"],
            "resettable": real["resettable"], "seconds": real["seconds"], **predicted}


def rerender(path: Path) -> list[dict[str, Any]]:
    """The stored measurements with the estimate and `--exact` of the current code."""
    rows: list[dict[str, Any]] = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            r["row"] = tuple(r["row"])
            r.update(predictions(r["model_line"], r["row"], Path(tempfile.mkdtemp(dir=tmp)))[1])
    return rows


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a row's table line (bytes above the baseline)."""
    base, marks = r["baseline"], r["marks"]
    load = next(m for m in marks if m["phase"] == "load")
    before = next(m for m in marks if m["phase"] == "before_load")
    first, third = phases(marks, 1), phases(marks, 3)
    steady = max(third.values()) - base
    return {
        "load_rss": load["rss"] - base, "before_load": before["rss"] - base, "load_peak": load["peak"] - base,
        "first": {k: v - base for k, v in first.items()}, "third": {k: v - base for k, v in third.items()},
        "steady": steady, "first_peak": max(first.values()) - base,
        "est_err": (r["estimate"] - steady) / steady * 100, "exact_err": (r["exact"] - steady) / steady * 100,
    }


# ---- the report --------------------------------------------------------------------------------


def render(rows: list[dict[str, Any]], skipped: list[str], command: str, load: str, threads: int) -> str:
    import diffusers
    import torch

    out = [
        "# Real memory (peak RSS on CPU) vs the estimate and `sdxlc plan --exact`",
        "",
        f"Date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPU cores; Python {platform.python_version()}, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}; load average before the run {load}; "
        f"OMP_NUM_THREADS={threads}.",
        "",
        f"Command: `{command}`",
        "",
        "Each row: a recipe compiled with profile cpu (3 steps, square images without buckets, LoRA rank 8 "
        "on the UNet's attention or a UNet fine-tune, fp32), run by `runtime.train.run.run_plan` in a fresh "
        "process under `MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`. Numbers are MiB above the "
        "baseline process (same imports, nothing built; see the module docstring of bench/memory_vs_rss.py). "
        "`load` = resident after the model is loaded and the method attached; step columns are the peak "
        "of each phase (VmHWM reset at every seam): `fwd` (UNet forward, loss), `bwd` (backward), `opt` "
        "(gradient clipping and the optimizer step; the first step creates the optimizer state). `step 1` "
        "= the first step's peak, `steady` = step 3's peak, which the estimate (cpu profile, training "
        "terms incl. its 1% allocator overhead and its `runtime_state`) and `--exact` (fake tensors, one "
        "steady-state step, plus the same `runtime_state`; both without the mapped weights a step never "
        "reads) predict. Errors are (predicted - steady) / steady.",
        "",
        "| # | model | method | px | batch | ckpt | optimizer | base MiB | pre | load | step-1 fwd/bwd/opt | "
        "step-3 fwd/bwd/opt | step 1 | steady | estimate | err | exact | err | exact fwd/bwd/opt | run s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def trio(d: dict[str, Any]) -> str:
        return "/".join(f"{d.get(k, 0) / MiB:.0f}" for k in ("forward", "backward", "optimizer"))

    for i, r in enumerate(rows, 1):
        s = summary(r)
        model, method, px, batch, ckpt, opt = r["row"]
        out.append(
            f"| {i} | {model} | {method} | {px} | {batch} | {'on' if ckpt else 'off'} | {opt} | "
            f"{r['baseline'] / MiB:.0f} | {s['before_load'] / MiB:.0f} | {s['load_rss'] / MiB:.0f} | "
            f"{trio(s['first'])} | {trio(s['third'])} | "
            f"{s['first_peak'] / MiB:.0f} | {s['steady'] / MiB:.0f} | {r['estimate'] / MiB:.0f} | "
            f"{s['est_err']:+.1f}% | {r['exact'] / MiB:.0f} | {s['exact_err']:+.1f}% | "
            f"{trio(r['exact_phases'])} | {r['seconds']:.0f} |"
        )
    for line in skipped:
        out.append(f"\n{line}")
    if rows and not all(r["resettable"] for r in rows):
        out.append("\nVmHWM could not be reset here: phase peaks are cumulative.")
    out.append("\nRaw numbers: bench/results/memory_vs_rss.json.")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory_vs_rss.md")
    parser.add_argument("--quick", action="store_true", help="only the tiny and mid96 LoRA rows")
    parser.add_argument("--only", help="only rows whose text contains this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also full-size SDXL, if memory allows")
    parser.add_argument("--append", action="store_true",
                        help="add these rows to the stored ones (a row measured again replaces its old one)")
    parser.add_argument("--rerender", action="store_true",
                        help="recompute the estimate and --exact columns of the stored measurements")
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", nargs=1, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.baseline:
        return baseline(args.baseline[0])
    command = "python " + " ".join(sys.argv)
    load = open("/proc/loadavg").read().split()[:3]
    raw = args.out.with_suffix(".json")
    if args.rerender:
        text = render(rerender(raw), [], command + " (measured: see the json's first run)", " ".join(load),
                      args.threads)
        args.out.write_text(text, encoding="utf-8")
        print(text)
        return None
    rows = [r for r in ROWS if not args.quick or r[0] == "tiny" or (r[0] == "mid96" and r[1] == "lora")]
    rows = [r for r in rows if not args.only or args.only in str(r)]
    skipped: list[str] = []
    if args.full:
        available = int(subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.split("\n")[1]
                        .split()[-1])
        if available >= FULL_NEEDS_GB:
            rows.append(FULL_ROW)
        else:
            skipped.append(f"{FULL_ROW}: not run: memory ({available} GB available, {FULL_NEEDS_GB} needed)")
    results = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        folders: dict[str, str] = {"tiny": "model tiny"}
        for row in rows:
            if row[0] not in folders:
                path = WORK / row[0]
                if not (path / "model_index.json").is_file():  # built once, kept for --rerender
                    shutil.rmtree(path, ignore_errors=True)
                    (build_full_folder if row[0] == "sdxl" else lambda p, n=row[0]: build_mid_folder(n, p))(
                        path)
                folders[row[0]] = f'model "{path}"'
            try:
                results.append(measure_row(folders[row[0]], row, tmp, args.threads))
            except (RuntimeError, SystemExit, KeyError, ValueError, subprocess.TimeoutExpired) as exc:
                skipped.append(f"{row}: not measured: {str(exc).strip().splitlines()[-1][:300]}")
                print(skipped[-1], flush=True)
                continue
            s = summary(results[-1])
            print(f"{row}: steady {s['steady'] / MiB:.0f} MiB, estimate {s['est_err']:+.1f}%, "
                  f"exact {s['exact_err']:+.1f}%, {results[-1]['seconds']:.0f} s", flush=True)
    text = render(results, skipped, command, " ".join(load), args.threads)
    args.out.write_text(text, encoding="utf-8")
    if args.append and raw.is_file():
        new = {tuple(r["row"]) for r in results}
        old = [r for r in json.loads(raw.read_text()) if tuple(r["row"]) not in new]
        results = [*old, *results]
        for r in results:
            r["row"] = tuple(r["row"])
        order = [*ROWS, FULL_ROW]
        results.sort(key=lambda r: order.index(r["row"]) if r["row"] in order else len(order))
        text = render(results, skipped, command, " ".join(load), args.threads)
        args.out.write_text(text, encoding="utf-8")
    raw.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
