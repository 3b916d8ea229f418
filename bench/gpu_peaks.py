"""Real training steps on a GPU against the analytic estimate: the data to calibrate it.

Usage: python bench/gpu_peaks.py [--quick] [--method lora|finetune|embedding ...] [--limit N] [--steps 3]
       [--profile h200-141gb] [--model sdxl|tiny] [--out bench/results/gpu_peaks.md]
       python bench/gpu_peaks.py --device cpu --model tiny --quick --steps 1 --out /tmp/p.md  (smoke test)

Each row is a configuration of bench/estimate_vs_exact.py (`--quick`: QUICK below) compiled for a CUDA
profile, then 1 warm-up + `--steps` optimizer steps of the runtime's own code (`runtime.run.setup_model`,
caches' parking, `make_optimizer`, accelerate's prepare/backward/clip, the fused backward pass, `batch_loss`)
on a full-size SDXL from the shipped configs with random weights (built once on the GPU, kept in system
RAM, copied per row), with random inputs at the largest bucket (`runtime.exact.conditioning`: VAE and
text encoders run when not cached; no data loading). Memory: torch's allocated/reserved peaks over the
steps, after setup and an emptied cache, against the training-peak terms of `vram_breakdown` (without
allocator_overhead, cuda_context, sample_peak) and those plus allocator_overhead. Context = device memory
in use (`mem_get_info`) - reserved - what nvidia-smi saw in use before CUDA was touched (0 without
nvidia-smi): the context, kernels loaded so far (it grows over the rows), workspaces outside the allocator.
Time: median synchronized step. OOM and other failures are recorded per row. `--model tiny`: resolutions
/ 8; `--device cpu`: fp32, no memory columns. Writes the markdown and the rows as JSON after every row.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
GiB, MiB = float(1 << 30), float(1 << 20)
Config = tuple[str, int, int, bool, str, str, str]  # as in estimate_vs_exact.py
QUICK: list[Config] = [  # rows of the matrix spanning the terms: batch, checkpointing, encoders, methods
    ("lora", 1024, 1, True, "adamw", "bf16", "te+latents"),
    ("lora", 1024, 4, True, "adamw", "bf16", "te+latents"),
    ("lora", 1024, 1, False, "adamw", "bf16", "te+latents"),
    ("lora", 1024, 1, True, "adamw", "bf16", "none"),
    ("finetune", 1024, 1, True, "adamw", "bf16", "te+latents"),
    ("embedding", 1024, 1, True, "adamw", "bf16", "latents"),
]


def smi(index: str) -> tuple[int | None, str | None]:
    """(bytes in use, driver version) of a GPU from nvidia-smi, which creates no CUDA context here."""
    query = ["nvidia-smi", "--query-gpu=memory.used,driver_version", "--format=csv,noheader,nounits", "-i"]
    try:
        line = subprocess.run([*query, index], capture_output=True, text=True, timeout=30, check=True).stdout
        line = line.splitlines()[0]
        used, driver = (part.strip() for part in line.split(","))
        return int(used) * int(MiB), driver
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None, None


def analytic(plan: dict[str, Any], not_seen: set[str]) -> dict[str, Any]:
    est, terms = plan["estimate"], plan["estimate"]["vram_breakdown"]
    return {"est_peak": sum(v for k, v in terms.items() if k not in not_seen),
            "est_overhead": terms.get("allocator_overhead", 0), "est_context": terms.get("cuda_context", 0),
            "est_seconds": est["seconds_per_step"], "est_step_flops": est["step_flops"],
            "est_vram_bytes": est["vram_bytes"], "vram_breakdown": terms}


def build_pristine(model: str, device: str, seed: int) -> SimpleNamespace:
    """The base pipeline in fp32 with random weights, in system RAM (each row takes a copy)."""
    import logging

    import torch

    if model == "tiny":
        from runtime.model.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(seed)
        names = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
        return SimpleNamespace(**{name: getattr(pipe, name) for name in names})
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from runtime.formats.single_file import SDXL_CONFIG_DIR as config
    from runtime.formats.single_file import load_tokenizers

    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    torch.manual_seed(seed)
    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(config / "text_encoder_2")),
    }
    parts: dict[str, Any] = {}
    for name, build in builders.items():  # one at a time: the largest is the UNet, 10 GB in fp32
        with torch.device(device):  # random initialisation is fast on the GPU
            parts[name] = build().to("cpu")
    parts["tokenizer"], parts["tokenizer_2"] = load_tokenizers(config)
    return SimpleNamespace(**parts)


def reset_accelerate() -> None:
    """A fresh accelerate state: each row has its own mixed precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class Phases:
    """The caching allocator's peaks per phase of the step (encode, forward, backward, optimizer)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.name = cuda, ""
        self.peaks: dict[str, list[int]] = {}  # phase -> [max allocated, max reserved]

    def __call__(self, name: str) -> None:
        """End the current phase, keeping its peaks, and start `name` ("" to end)."""
        if self.cuda:
            import torch

            if self.name:
                old = self.peaks.get(self.name, [0, 0])
                self.peaks[self.name] = [max(old[0], torch.cuda.max_memory_allocated()),
                                         max(old[1], torch.cuda.max_memory_reserved())]
            torch.cuda.reset_peak_memory_stats()
        self.name = name


def measure(plan: dict[str, Any], pipe: SimpleNamespace, steps: int, baseline: int) -> dict[str, Any]:
    """Set the plan up on `pipe` as `sdxlc run` does, run 1 + `steps` optimizer steps; what they took."""
    import torch
    from accelerate.utils import set_seed

    from runtime.exact import step as exact
    from runtime.methods import registry as methods
    from runtime.methods.finetune import fuse_backward
    from runtime.model import load as models
    from runtime.train import run
    from runtime.train.loss import batch_loss
    from runtime.train.optim import make_optimizer, make_schedule

    reset_accelerate()
    set_seed(plan["training"]["seed"])
    cuda = plan["hardware"]["device"] == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    out: dict[str, Any] = dict.fromkeys(("setup_max_allocated", "setup_max_reserved", "max_allocated",
                                         "max_reserved", "peak_phase", "alloc_retries", "context"))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with mock.patch.object(models, "load_pipeline", lambda model: pipe):  # the random weights, not a file
        loaded = run.setup_model(plan)
    acc, training, opt = loaded.accelerator, plan["training"], plan["optimizer"]
    here = exact.resident(plan)
    for name, resident in here.items():
        if cuda and not resident:  # the text-encoder and latent caches park these in system RAM
            getattr(loaded.pipe, exact.PARTS[name]).to("cpu")
    parts = {name: getattr(loaded.pipe, exact.PARTS[name]) for name, resident in here.items() if resident}
    method = methods.for_plan(plan)
    optimizer = make_optimizer(opt, method.param_groups(loaded.pipe))
    schedule = make_schedule(plan, optimizer)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    model, optimizer = acc.prepare(loaded.pipe.unet, optimizer)  # as runtime.loop.train, one process
    for module in (model, *method.text_encoders(loaded.pipe)):
        module.train()
    fused, max_norm = bool(plan["method"].get("fused_backward")), float(opt["max_grad_norm"])
    measure_norm = max_norm > 0 or bool(plan["log"]["tensorboard"])  # the loop's condition
    hooks = fuse_backward(getattr(optimizer, "optimizer", optimizer), max_norm) if fused else []
    batch, accumulate = int(training["batch_size"]), int(training["accumulate"])
    width, height = exact.largest_bucket(plan)
    if cuda:
        torch.cuda.synchronize()
        out.update(setup_max_allocated=torch.cuda.max_memory_allocated(),
                   setup_max_reserved=torch.cuda.max_memory_reserved())
        gc.collect()
        torch.cuda.empty_cache()
    phase, losses, seconds, skipped = Phases(cuda), [], [], 0
    try:
        for index in range(1 + steps):
            sync()
            started = time.perf_counter()
            for _ in range(accumulate):
                phase("encode")
                with torch.device(acc.device):  # exact's random inputs, on the device as the caches keep them
                    latents, states, pooled = exact.conditioning(plan, parts, loaded, batch, width, height)
                time_ids = torch.randn(batch, 6)  # from the loader, on the CPU
                with acc.accumulate(model):
                    phase("forward")
                    loss = batch_loss(model, loaded, training, latents, states, pooled, time_ids)
                    phase("backward")  # the fused backward pass steps every weight in here
                    acc.backward(loss)
                    phase("optimizer")
                    if not fused and acc.sync_gradients and measure_norm:
                        acc.clip_grad_norm_(trainable, max_norm if max_norm > 0 else math.inf)
                    if not fused:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach().item())
                skipped += int(acc.sync_gradients and acc.optimizer_step_was_skipped)
            schedule.step()
            sync()
            if index:  # the first step is the warm-up
                seconds.append(time.perf_counter() - started)
        phase("")
        if cuda:
            free, total = torch.cuda.mem_get_info()
            peak = max(phase.peaks, key=lambda name: phase.peaks[name][0])
            out.update(max_allocated=phase.peaks[peak][0], peak_phase=peak,
                       max_reserved=max(reserved for _, reserved in phase.peaks.values()),
                       alloc_retries=int(torch.cuda.memory_stats().get("num_alloc_retries", 0)),
                       context=total - free - torch.cuda.memory_reserved() - baseline)
    finally:
        for handle in hooks:
            handle.remove()
        acc.free_memory()
    notes = ["loss not finite (random weights)"] * (not all(math.isfinite(x) for x in losses))
    notes += [f"{skipped} steps skipped by the fp16 grad scaler"] * bool(skipped)
    out.update(step_seconds=seconds, seconds=statistics.median(seconds), losses=losses,
               skipped_steps=skipped, phase_peaks=phase.peaks, notes=notes)
    return out


def measure_row(plan: dict[str, Any], pipe: SimpleNamespace, steps: int, baseline: int) -> dict[str, Any]:
    """`measure`, with OOM and other failures recorded in the row instead of raised."""
    import torch

    cuda = plan["hardware"]["device"] == "cuda"
    row: dict[str, Any] = {"status": "ok", "notes": []}
    try:
        row.update(measure(plan, pipe, steps, baseline))
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="OOM", error=(str(exc).splitlines() or ["out of memory"])[0][:200])
        if cuda:  # how far it got: the peaks of the phase it failed in
            row.update(max_allocated=torch.cuda.max_memory_allocated(),
                       max_reserved=torch.cuda.max_memory_reserved())
    except Exception as exc:  # a missing package, a runtime error: recorded, the next row runs
        traceback.print_exc()
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
    reset_accelerate()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def environment(args: argparse.Namespace, baseline: int | None, driver: str | None) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    from sdxlc.resolve.profiles import load_profile

    profile = load_profile(args.profile)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": args.device,
        "model": args.model, "profile": args.profile, "steps": args.steps, "quick": args.quick,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "driver": driver, "gpu": None, "gpu_total_bytes": None,
        "cudnn": None, "baseline_used_bytes": baseline, "context_at_init": None,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "profile_allocator_overhead": profile.allocator_overhead,
        "profile_context_bytes": profile.context_bytes, "profile_efficiency": profile.efficiency,
    }
    if args.device == "cuda":
        torch.cuda.init()
        torch.cuda.synchronize()  # the first runtime call creates the context, before any allocation
        free, total = torch.cuda.mem_get_info()
        meta.update(gpu=torch.cuda.get_device_name(0), gpu_total_bytes=total,
                    cudnn=torch.backends.cudnn.version(),
                    context_at_init=total - free - torch.cuda.memory_reserved() - (baseline or 0))
    return meta


def _fmt(value: float | None, unit: float = 1.0, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value / unit, spec)


def _err(estimate: float | None, measured: float | None) -> str:
    return "n/a" if not estimate or not measured else f"{(estimate - measured) / measured * 100:+.1f}%"


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    mem = [r for r in ok if r["max_allocated"]]
    ratios = [r["max_reserved"] / r["max_allocated"] for r in mem]
    summary = [f"{len(ok)} of {len(rows)} rows ran ({sum(r['status'] == 'OOM' for r in rows)} OOM)"]
    if ratios:
        contexts = [r["context"] / MiB for r in mem]
        summary += [f"reserved/allocated median {statistics.median(ratios):.3f}, max {max(ratios):.3f} "
                    f"(profile allocator_overhead {meta['profile_allocator_overhead']})",
                    f"context {min(contexts):.0f}-{max(contexts):.0f} MiB "
                    f"(profile {_fmt(meta['profile_context_bytes'], MiB, '.0f')} MiB)"]
    if ok:
        summary.append(f"estimated/measured s/step median "
                       f"{statistics.median(r['est_seconds'] / r['seconds'] for r in ok):.2f} "
                       f"(profile efficiency {meta['profile_efficiency']})")
    out = [
        "# Real training steps vs the analytic estimate",
        "",
        f"Date {meta['date']}; {meta['gpu'] or 'no GPU'} ({_fmt(meta['gpu_total_bytes'], GiB, '.1f')} GiB); "
        f"torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}, driver {meta['driver']}, "
        f"diffusers {meta['diffusers']}, transformers {meta['transformers']}, "
        f"PYTORCH_CUDA_ALLOC_CONF={meta['alloc_conf']}. `bench/gpu_peaks.py`: model {meta['model']} (random "
        f"weights), profile {meta['profile']}, 1 warm-up + {meta['steps']} timed steps. CUDA context after "
        f"`torch.cuda.init()`: {_fmt(meta['context_at_init'], MiB, '.0f')} MiB (nvidia-smi before: "
        f"{_fmt(meta['baseline_used_bytes'], MiB, '.0f')} MiB in use).",
        "",
        "`est.` = analytic training peak (`vram_breakdown` without allocator_overhead, cuda_context, "
        "sample_peak), `+ovh` with allocator_overhead; `max alloc`, `max reserved` = torch's peaks over the "
        "steps, after setup and an emptied cache; `peak in` = the phase of the allocated peak; `setup res.` "
        "= reserved peak of loading, placing and attaching; `ctx` = in use - reserved - baseline after the "
        "steps. Errors: (est. - max alloc) / max alloc, (+ovh - max reserved) / max reserved, (est. - s)/s.",
        "",
        f"**Summary: {'; '.join(summary)}.**",
        "",
        "| # | method | px | batch | ckpt | optimizer | precision | cached | est. GiB | +ovh GiB "
        "| max alloc GiB | peak in | max reserved GiB | res/alloc | setup res. GiB | est. ctx MiB | ctx MiB "
        "| est. s | s/step | alloc err | res. err | time err | status |",
        "|" + "---|" * 23,
    ]
    for i, r in enumerate(rows, 1):
        method, res, batch, ckpt, opt, prec, cache = r["config"]
        ran = r["status"] == "ok"
        alloc, reserved = (r.get("max_allocated"), r.get("max_reserved")) if ran else (None, None)
        with_ovh = r["est_peak"] + r["est_overhead"]
        status = "; ".join([r["status"] + (f": {r['error']}" if r.get("error") else ""), *r["notes"]])
        cells = [
            i, method, res, batch, "on" if ckpt else "off", opt, prec, cache, _fmt(r["est_peak"], GiB, ".2f"),
            _fmt(with_ovh, GiB, ".2f"), _fmt(alloc, GiB, ".2f"), r.get("peak_phase") or "n/a",
            _fmt(reserved, GiB, ".2f"), _fmt(reserved / alloc if alloc and reserved else None),
            _fmt(r.get("setup_max_reserved"), GiB, ".2f"), _fmt(r["est_context"], MiB, ".0f"),
            _fmt(r.get("context"), MiB, ".0f"), _fmt(r["est_seconds"]), _fmt(r.get("seconds")),
            _err(r["est_peak"], alloc), _err(with_ovh, reserved),
            _err(r["est_seconds"], r.get("seconds")), status.replace("|", "/"),
        ]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the rows of QUICK (~3 min on an H200)")
    parser.add_argument("--method", choices=["embedding", "finetune", "lora"], action="append",
                        help="only these methods (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="at most N rows of each method")
    parser.add_argument("--profile", help="hardware profile (default h200-141gb; cpu with --device cpu)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps after the warm-up step")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--model", choices=["sdxl", "tiny"], default="sdxl")
    parser.add_argument("--out", type=Path, help="markdown (default bench/results/gpu_peaks.md)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    args.profile = args.profile or ("cpu" if args.device == "cpu" else "h200-141gb")
    real = (args.device, args.model) == ("cuda", "sdxl")  # other runs do not overwrite its results
    args.out = args.out or ROOT / "bench" / "results" / (
        "gpu_peaks.md" if real else f"gpu_peaks-{args.device}-{args.model}.md")
    return args


def compile_rows(args: argparse.Namespace, bench: ModuleType) -> list[tuple[Config, dict[str, Any]]]:
    """The selected rows, compiled before any runs (a row that does not compile is left out), as run: the
    tiny model at 1/8 of the resolution, fp32 on the CPU (the cpu profile has no bf16)."""
    plans = []
    selected = [c for kind in args.method or list(bench.CONFIGS)
                for c in [c for c in bench.CONFIGS[kind] if not args.quick or c in QUICK][: args.limit]]
    with tempfile.TemporaryDirectory() as tmp:
        for method, res, batch, ckpt, optimizer, precision, cache in selected:
            config = (method, res // 8 if args.model == "tiny" else res, batch, ckpt, optimizer,
                      "fp32" if args.device == "cpu" else precision, cache)
            try:
                plan = bench.plan_for(config, Path(tmp), profile=args.profile,
                                      model="model tiny" if args.model == "tiny" else bench.SDXL)
            except SystemExit as exc:  # plan_for's message
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            if plan["hardware"]["device"] != args.device:
                raise SystemExit(f"gpu_peaks: profile {args.profile} is for {plan['hardware']['device']}, "
                                 f"not --device {args.device}")
            plans.append((config, plan))
    if not plans:
        raise SystemExit("gpu_peaks: none of the selected configurations compiles")
    return plans


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    baseline, driver = smi(index) if args.device == "cuda" else (None, None)  # before CUDA is touched
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"gpu_peaks: --device cuda, but torch {torch.__version__} sees no CUDA device "
            "(torch.cuda.is_available() is False). Run it on a CUDA machine with a CUDA build of torch, or "
            "smoke-test it here with `--device cpu --model tiny`."
        )
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import estimate_vs_exact as bench  # the configurations, the recipe and the compile helper

    plans = compile_rows(args, bench)
    meta = environment(args, baseline, driver)
    started = time.perf_counter()
    pristine = build_pristine(args.model, args.device, int(plans[0][1]["model"].get("tiny_seed") or 0))
    if args.device == "cuda":
        torch.cuda.empty_cache()
    print(f"built {args.model} with random weights in {time.perf_counter() - started:.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i, (config, plan) in enumerate(plans):
        started = time.perf_counter()
        pipe = pristine if i == len(plans) - 1 else copy.deepcopy(pristine)  # the last row needs no copy
        rows.append({"config": list(config), **analytic(plan, bench.NOT_SEEN),
                     **measure_row(plan, pipe, args.steps, baseline or 0)})
        del pipe
        text = render(rows, meta)  # written after every row: a run cut short keeps what it measured
        print(text.splitlines()[-1], f"({time.perf_counter() - started:.1f} s)", flush=True)
        args.out.write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n",
                                                 encoding="utf-8")
    print("\n" + text)


if __name__ == "__main__":
    main()
