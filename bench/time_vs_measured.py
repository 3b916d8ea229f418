"""Seconds per training step on the CPU: the runtime's real steps against the time estimate.

Usage: python bench/time_vs_measured.py [--quick] [--only SUBSTRING] [--threads 2] [--warmup 3] [--steps 10]
                                        [--out bench/results/time_vs_measured.md]
       python bench/time_vs_measured.py --quick; python bench/time_vs_measured.py --rest --append
       python bench/time_vs_measured.py --render   (re-estimate the recorded rows with the current code)
       python bench/time_vs_measured.py --fit [--write] [--basis wall|cpu]   (fit the CPU time constants
              to the recorded rows; `--write` stores them in schema/models/tiny.json's `cpu_time`)

Every row is a recipe compiled by the real compiler (profile cpu) and run by the real runtime
(`runtime.train.run.run_plan`: data loading, caches, the method, accelerate, the optimizer, logging) in a
FRESH process with `OMP_NUM_THREADS` fixed. An optimizer step post-hook (torch's global one, so no runtime
code is wrapped) stamps the end of every optimizer step; the step times are the intervals between stamps,
the first `--warmup` are dropped and the median of the next `--steps` is the row's measurement. The
quickstart row is `recipes/quickstart.sdx` itself (only its step count and output folder are overridden);
the other rows train the built-in tiny model or `models/tiny-shapes` on 16 generated 256 px images.
The load average is read before and after each row. The rows are written as JSON beside the markdown after
every row; `--render` and `--fit` read that JSON (no torch needed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "time_vs_measured.md"
QUICKSTART = ROOT / "recipes" / "quickstart.sdx"
SHAPES = ROOT / "recipes" / "models" / "tiny-shapes"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
       "TOKENIZERS_PARALLELISM": "false"}

# name: (model, method line, px, batch, checkpointing, cache te, cache latents, accumulate)
Row = tuple[str, str, int, int, bool, bool, bool, int]
MEASURED = ("name", "measured", "intervals", "cpu_seconds", "cpu_intervals", "threads", "load_before",
            "load_after", "wall", "when")
ATTN = "lora rank 8 alpha 8 on unet"
WIDE = "lora rank 16 alpha 16 on unet modules attention+ff+conv"
FT = "finetune unet"
ROWS: dict[str, Row | None] = {
    "quickstart": None,  # recipes/quickstart.sdx as it is
    "shapes wide 64 b4 ckpt uncached": ("shapes", WIDE, 64, 4, True, False, False, 1),
    "shapes 128 b4": ("shapes", WIDE, 128, 4, False, False, False, 1),
    "shapes attn 64 b1 cached": ("shapes", ATTN, 64, 1, False, True, True, 1),
    "shapes attn 96 b2 cached": ("shapes", ATTN, 96, 2, False, True, True, 1),  # bench/vs_diffusers.py's job
    "attn 64 b1": ("tiny", ATTN, 64, 1, False, True, True, 1),
    "attn 64 b4": ("tiny", ATTN, 64, 4, False, True, True, 1),
    "attn 128 b1": ("tiny", ATTN, 128, 1, False, True, True, 1),
    "attn 128 b2 ckpt": ("tiny", ATTN, 128, 2, True, True, True, 1),
    "attn 128 b4": ("tiny", ATTN, 128, 4, False, True, True, 1),
    "attn 256 b1": ("tiny", ATTN, 256, 1, False, True, True, 1),
    "attn 256 b2 ckpt": ("tiny", ATTN, 256, 2, True, True, True, 1),
    "attn 64 b2x2": ("tiny", ATTN, 64, 2, False, True, True, 2),
    "wide 64 b4": ("tiny", WIDE, 64, 4, False, True, True, 1),
    "wide 128 b2 ckpt": ("tiny", WIDE, 128, 2, True, True, True, 1),
    "wide 256 b1": ("tiny", WIDE, 256, 1, False, True, True, 1),
    "attn 128 b2 uncached": ("tiny", ATTN, 128, 2, False, False, False, 1),
    "attn 128 b2 te cached": ("tiny", ATTN, 128, 2, False, True, False, 1),
    "attn 64 b4 uncached ckpt": ("tiny", ATTN, 64, 4, True, False, False, 1),
    "finetune 64 b1": ("tiny", FT, 64, 1, False, True, True, 1),
    "finetune 128 b2 ckpt": ("tiny", FT, 128, 2, True, True, True, 1),
    "finetune 256 b1": ("tiny", FT, 256, 1, False, True, True, 1),
}
QUICK = ["quickstart", "shapes wide 64 b4 ckpt uncached", "attn 64 b1", "attn 128 b4", "attn 256 b2 ckpt",
         "wide 128 b2 ckpt",
         "attn 128 b2 uncached", "finetune 64 b1"]


# ---- recipes and plans (no torch) ---------------------------------------------------------------


def make_images(folder: Path) -> Path:
    """16 generated 256 px images with captions (Pillow), made once."""
    data = folder / "images"
    if (data / "15.txt").exists():
        return data
    from PIL import Image, ImageDraw

    data.mkdir(parents=True, exist_ok=True)
    for i in range(16):
        image = Image.new("RGB", (256, 256), ((i * 53) % 256, (i * 97) % 256, (i * 151) % 256))
        draw = ImageDraw.Draw(image)
        draw.ellipse((20 + i * 5, 30, 200, 220 - i * 5), outline=(255, 255, 255), width=6)
        image.save(data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text(f"a shape number {i} in sks style", encoding="utf-8")
    return data


def recipe_text(row: Row, data: Path, out: Path, steps: int) -> str:
    model, method, px, batch, ckpt, _, _, accumulate = row
    model_line = "model tiny" if model == "tiny" else f'model "{SHAPES}"'
    lines = ["sdx 1", model_line, "profile cpu", f'data "{data}" repeat 4 caption .txt',
             f"resolution {px} no buckets", method, "lr 1e-4 adamw", f"batch {batch} accumulate {accumulate}",
             f"steps {steps}", "seed 42", f'output "{out}"', "log every 10"]
    if ckpt:
        lines.append("checkpointing")
    return "\n".join(lines) + "\n"


def plan_for(name: str, folder: Path, steps: int) -> dict[str, Any]:
    """The row's sealed plan (the current compiler and estimate)."""
    from sdxlc.pipeline import compile_recipe

    row = ROWS[name]
    out = folder / "out"
    if row is None:
        sets: tuple[str, ...] = (f"training.steps={steps}", f"output.dir={out}")
        compiled = compile_recipe(QUICKSTART, sets=sets)
    else:
        path = folder / "bench.sdx"
        path.write_text(recipe_text(row, make_images(folder.parent), out, steps), encoding="utf-8")
        sets = (f"cache.text_encoder={str(row[5]).lower()}", f"cache.latents={str(row[6]).lower()}")
        compiled = compile_recipe(path, sets=sets, profile="cpu")
    if compiled.plan is None:
        raise SystemExit(f"{name}: does not compile: {[str(d) for d in compiled.errors]}")
    return compiled.plan


def describe(plan: dict[str, Any]) -> dict[str, Any]:
    """What the table shows of a plan."""
    m, t, c = plan["method"], plan["training"], plan["data"]["cache"]
    what = m["kind"] if m["kind"] != "lora" else f"lora r{m['rank']} {'+'.join(m.get('modules') or ['attn'])}"
    return {"method": what, "model": Path(str(plan["model"]["source"])).name,
            "px": plan["data"]["resolution"], "batch": t["batch_size"], "accumulate": t["accumulate"],
            "ckpt": t["gradient_checkpointing"],
            "cached": "+".join(k for k in ("text_encoder", "latents") if c[k]).replace("text_encoder", "te")
            or "none"}


# ---- the measuring process ----------------------------------------------------------------------


def worker(plan_path: Path, out: Path) -> None:
    """Run the plan with the runtime, stamping the end of every optimizer step."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from runtime.train import run as runmod

    plan = json.loads(plan_path.read_text())
    stamps: list[float] = []
    cpu: list[float] = []  # the process's CPU seconds (every thread), less sensitive to other load

    def stamp(*_: Any) -> None:
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    register_optimizer_step_post_hook(stamp)
    started = time.perf_counter()
    runmod.run_plan(plan, progress=False)
    out.write_text(json.dumps({"stamps": [s - started for s in stamps], "cpu": cpu,
                               "threads": torch.get_num_threads(),
                               "seconds": time.perf_counter() - started, "torch": torch.__version__}))


def spawn(plan_path: Path, threads: int, timeout: float) -> dict[str, Any]:
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = plan_path.with_name("measured.json")
    proc = subprocess.run([sys.executable, __file__, "--worker", str(plan_path), str(out)], env=env,
                          timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {proc.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def measure_row(name: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    plan = plan_for(name, folder, args.warmup + args.steps + 1)
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(plan))
    load_before = os.getloadavg()
    real = spawn(plan_path, args.threads, 1200)
    load_after = os.getloadavg()
    stamps = real["stamps"]
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.warmup:][: args.steps]
    cpu = [b - a for a, b in zip(real["cpu"], real["cpu"][1:], strict=False)][args.warmup:][: args.steps]
    return {"name": name, "measured": statistics.median(intervals), "intervals": intervals,
            "cpu_seconds": statistics.median(cpu), "cpu_intervals": cpu,
            "threads": real["threads"], "load_before": load_before, "load_after": load_after,
            "wall": real["seconds"],
            "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")}


# ---- estimate, table, fit -----------------------------------------------------------------------


def with_estimates(rows: list[dict[str, Any]], steps: int = 14) -> list[dict[str, Any]]:
    """Each recorded row with its plan's description, estimate and CPU time features (current code)."""
    from sdxlc.estimate import cputime
    from sdxlc.estimate.analytic import model_facts

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            folder = Path(tempfile.mkdtemp(dir=tmp))
            plan = plan_for(r["name"], folder, steps)
            est = plan["estimate"]
            feats = cputime.features(plan, model_facts(plan), float(est["step_flops"]))
            out.append({**r, **describe(plan), "estimate": est["seconds_per_step"], "step_flops":
                        est["step_flops"], "features": feats, "family": cputime.family(model_facts(plan))})
    return out


def render(rows: list[dict[str, Any]], meta: dict[str, Any], basis: str = "measured") -> str:
    errors = [(r["estimate"] - r[basis]) / r[basis] for r in rows]
    within = sum(abs(e) <= 0.25 for e in errors)
    lines = [
        "# CPU seconds per step: the runtime's real steps vs the time estimate", "",
        f"Measured {meta['date']} on {meta['machine']}; torch {meta['torch']}, {meta['threads']} threads "
        f"(`OMP_NUM_THREADS`); command `{meta['command']}`; {meta['warmup']} warm-up steps, then the median "
        f"of {meta['steps']} steps. Estimates from the current code (`--render`).", "",
        f"**Against the {'wall-clock' if basis == 'measured' else 'CPU'} seconds: {within} of {len(rows)} "
        f"rows within 25%; median |error| {statistics.median(abs(e) for e in errors) * 100:.1f}%, "
        f"worst {max(errors, key=abs) * 100:+.1f}%.**",
        "",
        "The constants of `schema/models/tiny.json` `cpu_time` are fitted to these rows by "
        "`python bench/time_vs_measured.py --fit --write --basis "
        f"{'wall' if basis == 'measured' else 'cpu'}` "
        "(docs/ESTIMATE.md \"CPU steps\"). Load averages far above the core count mean the wall-clock "
        "column is mostly waiting: re-measure on a quiet machine and refit on the wall-clock basis.",
        "",
        "Each row is a recipe compiled with profile cpu and run by `runtime.train.run.run_plan` in a fresh "
        "process; a step is the interval between two optimizer steps (data loading, encoders, forward, "
        "backward, clipping, the optimizer, logging). `load` is the 1-minute load average before/after "
        "the row (a load above the core count means other work competed for them). `wall s` is the median "
        "interval, `CPU s` the median CPU time the process used in it (every thread): on a loaded machine "
        "the CPU time of a one-thread run stands in for the wall time a quiet machine would show.", "",
        "| # | row | model | method | px | batch | ckpt | cached | GFLOP/step | estimate s | wall s | "
        "CPU s | error | load before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (r, e) in enumerate(zip(rows, errors, strict=True), 1):
        batch = f"{r['batch']}×{r['accumulate']}" if r["accumulate"] > 1 else str(r["batch"])
        lines.append(
            f"| {i} | {r['name']} | {r['model']} | {r['method']} | {r['px']} | {batch} | "
            f"{'on' if r['ckpt'] else 'off'} | {r['cached']} | {r['step_flops'] / 1e9:.2f} | "
            f"{r['estimate']:.3f} | {r['measured']:.3f} | {r.get('cpu_seconds', float('nan')):.3f} | "
            f"{e * 100:+.1f}% | "
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |")
    return "\n".join(lines) + "\n"


def fit(rows: list[dict[str, Any]], basis: str = "measured") -> dict[str, float]:
    """Least squares on the relative error of `cputime.seconds` over the rows' features, every constant
    kept >= 0 (non-negative least squares)."""
    import numpy as np

    from sdxlc.estimate import cputime

    names = cputime.FITTED
    x = np.array([[r["features"][cputime.FEATURE[n]] for n in names] for r in rows], dtype=float)
    y = np.array([r[basis] for r in rows], dtype=float)
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    a, b = (x / scale) / y[:, None], np.ones(len(y))
    free = list(range(len(names)))
    coef = np.zeros(len(names))
    while free:  # drop the most negative constant until every one left is >= 0 (an active set)
        solved, *_ = np.linalg.lstsq(a[:, free], b, rcond=None)
        if solved.min() >= 0:
            coef[free] = solved
            break
        free.pop(int(np.argmin(solved)))
    return {n: float(c / s) for n, c, s in zip(names, coef, scale, strict=True)}


def write_constants(constants: dict[str, float], rows: list[dict[str, Any]], meta: dict[str, Any],
                    basis: str) -> None:
    """Store the fitted constants in schema/models/tiny.json's `cpu_time`, touching nothing else."""
    from sdxlc.estimate import cputime

    path = ROOT / "schema" / "models" / "tiny.json"
    text = path.read_text(encoding="utf-8")
    what = "wall-clock" if basis == "measured" else "CPU"
    note = (f"bench/time_vs_measured.py --fit: least squares on the relative error over the {what} seconds "
            f"of {len(rows)} rows measured {meta['date']} with {meta['threads']} thread(s) "
            "(bench/results/time_vs_measured.json)")
    block = cputime.block(constants, note)
    start = text.index('  "cpu_time": {')
    end = text.index("\n  },\n", start) + len("\n  },\n")
    path.write_text(text[:start] + block + text[end:], encoding="utf-8")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} rows (about 4 min)")
    parser.add_argument("--rest", action="store_true", help="only the rows --quick leaves out")
    parser.add_argument("--append", action="store_true", help="keep the recorded rows not measured again")
    parser.add_argument("--only", help="only rows whose name contains this")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="re-estimate the recorded rows only")
    parser.add_argument("--fit", action="store_true", help="fit the CPU time constants")
    parser.add_argument("--write", action="store_true", help="with --fit: write them to tiny.json")
    parser.add_argument("--basis", choices=["wall", "cpu"], default="wall",
                        help="compare with (and fit to) the wall-clock or the CPU seconds (a loaded machine)")
    args = parser.parse_args()
    json_path = args.out.with_suffix(".json")
    basis = "measured" if args.basis == "wall" else "cpu_seconds"
    if args.render or args.fit:
        recorded = json.loads(json_path.read_text())
        rows, meta = with_estimates(recorded["rows"]), recorded["meta"]
        if args.fit:
            tiny = [r for r in rows if r["family"] == "tiny"]
            constants = fit(tiny, basis)
            print(json.dumps(constants, indent=2))
            if args.write:
                write_constants(constants, tiny, meta, basis)
                rows = with_estimates(recorded["rows"])
        meta["basis"] = basis
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
        args.out.write_text(render(rows, meta, basis), encoding="utf-8")
        print(render(rows, meta, basis))
        return
    names = [n for n in (QUICK if args.quick else ROWS) if not args.only or args.only in n]
    names = [n for n in names if not args.rest or n not in QUICK]
    import torch

    meta = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
            "threads": args.threads, "warmup": args.warmup, "steps": args.steps,
            "command": "python bench/time_vs_measured.py " + " ".join(sys.argv[1:])}
    del torch
    measured: list[dict[str, Any]] = []
    if args.append and json_path.exists():
        measured = [r for r in json.loads(json_path.read_text())["rows"] if r["name"] not in names]
        measured = [{k: r[k] for k in MEASURED if k in r} for r in measured]
        meta["command"] += " (appended to the recorded rows)"
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            started = time.perf_counter()
            row = measure_row(name, Path(tmp), args)
            measured.append(row)
            print(f"{name}: {row['measured']:.3f} s/step (load {row['load_before'][0]:.2f} -> "
                  f"{row['load_after'][0]:.2f}; {time.perf_counter() - started:.0f} s)", flush=True)
            json_path.write_text(json.dumps({"meta": meta, "rows": measured}, indent=1), encoding="utf-8")
    rows = with_estimates(measured)
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
    args.out.write_text(render(rows, meta, basis), encoding="utf-8")
    print(render(rows, meta, basis))


if __name__ == "__main__":
    main()
