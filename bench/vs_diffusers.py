"""sdxlc against diffusers' SDXL LoRA example script (`train_text_to_image_lora_sdxl.py`), same work, CPU.

Both tools train a LoRA of rank 8 on the UNet attention (`to_q`, `to_k`, `to_v`, `to_out.0`, what the
example script targets) of the same tiny SDXL pipeline (`recipes/models/tiny-shapes`, a diffusers folder),
on the same 12 images with the same captions (the first 12 of `recipes/data/outlines`, upscaled to 96 px),
at 96 px, batch 2, AdamW (torch defaults, weight decay 1e-2, both), lr 1e-4 constant, gradient clipping
1.0, fp32, seed 42, TensorBoard logging (the default of both), the final LoRA saved and nothing sampled.
Both run as a user runs them, each with its own interpreter: sdxlc as `sdxlc run RECIPE` from this
repository's venv (a fresh recipe and output folder per run), the example script under
`accelerate launch` from a scratch venv (a fresh output folder and HF_HOME per run). Both get the same
thread count: OMP_NUM_THREADS and MKL_NUM_THREADS, and accelerate's `--num_cpu_threads_per_process`.
Everything runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1).

Two comparisons, each of `--pairs` interleaved pairs (the order of the two tools alternates from pair
to pair; the pairs of the two comparisons alternate too):

- `recommended`: each tool as its documentation recommends for the job. The example script has no option
  to precompute anything: every step it runs both text encoders on the batch's captions and the VAE
  encoder on its images (README_sdxl.md's command, less what does not apply on a CPU: fp16, the hub,
  wandb, validation). sdxlc caches as its plan decides (`CACHE_WORDS_RECOMMENDED`, no recipe words: the
  default caches text-encoder outputs and latents for this recipe); the results say what the plan's
  `data.cache` did.
- `compiled`: the recommended settings plus the recipe word `compile` (torch.compile of the UNet's training
  step; the script is run as in `recommended`, its README has no compile option). One untimed sdxlc run
  fills an inductor cache first (TORCHINDUCTOR_CACHE_DIR in the work folder); its wall time is reported
  as the first run's compile cost, and the timed runs reuse the cache, as any later run of a recipe does.
- `like-for-like`: sdxlc with caching off (`CACHE_WORDS_OFF`, `no cache te no cache latents`; the bench
  stops if the plan caches anything), so both tools encode every step.

Measured per run: the whole-process wall time and the peak RSS (`os.wait4`'s `ru_maxrss`: the largest
of the process and its waited-for children, so for `accelerate launch` it is the training process's).
The steady-state speed needs no log parsing and treats both tools alike: each pair runs both tools for
`--steps` S and for S/2 steps; `(S - S/2) / (wall(S) - wall(S/2))` is the speed without the start-up,
loading, caching and saving that both runs share. Reported per tool: min / median / max over the pairs,
and per pair the ratios sdxlc steps/s ÷ diffusers steps/s, diffusers wall ÷ sdxlc wall (both > 1 when
sdxlc is faster) and sdxlc peak RSS ÷ diffusers peak RSS (< 1 when sdxlc uses less memory).

Set up the scratch venv once, outside the repository (the same torch build and library versions as this
repository's `.venv`; PyPI's torchvision for that torch lacks compiled ops for the CPU build, which the
example script does not use: when `import torchvision` fails, the bench puts a `sitecustomize.py` on
the script's PYTHONPATH that skips torchvision's registrations of those ops)::

    python3 -m venv /tmp/diffusers-venv
    /tmp/diffusers-venv/bin/pip install torch==2.13.0
    /tmp/diffusers-venv/bin/pip install --no-deps torchvision==0.28.0
    /tmp/diffusers-venv/bin/pip install diffusers==0.42.1 transformers==5.23.0 accelerate==1.15.0 \
        peft==0.21.2 tensorboard==2.21.0 datasets

(`.venv/bin/pip show diffusers transformers accelerate peft tensorboard` gives the versions to match.)
Where that torchvision does not install, `pip install torch==2.14.1 torchvision==0.29.1` on x86_64 gives
a matching pair (another torch than sdxlc's: the results name both). Save the example script of
diffusers' repository, `examples/text_to_image/train_text_to_image_lora_sdxl.py`, at the commit or
release matching the diffusers version, outside the repository, e.g. as
`/tmp/diffusers-examples/train_text_to_image_lora_sdxl.py`; it is run as it is, never copied here.

Run from the repository root, on a quiet machine (about 8 runs per pair: with `--steps 60` and 3 pairs
some 15-25 minutes on 2 cores)::

    .venv/bin/python bench/vs_diffusers.py \
        --diffusers-script /tmp/diffusers-examples/train_text_to_image_lora_sdxl.py \
        --diffusers-script-rev "huggingface/diffusers@<commit>" \
        --python /tmp/diffusers-venv/bin/python --pairs 3 --steps 60

Writes `bench/results/vs_diffusers.md` (or `--out`), with the per-run numbers; `--keep DIR` keeps the
runs' folders and logs there. `--smoke` marks the results as a smoke run, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "vs_diffusers.md"
SDXLC = Path(sys.executable).parent / "sdxlc"
MODEL = ROOT / "recipes" / "models" / "tiny-shapes"
SOURCE_IMAGES = ROOT / "recipes" / "data" / "outlines"
IMAGES = 12
RESOLUTION = 96
BATCH = 2
RANK = 8
LR = "1e-4"
SEED = 42

# Recipe words for sdxlc's caching in each comparison: none where the plan decides (a LoRA on the UNet
# with fixed captions caches text-encoder outputs and latents by default, docs/LANGUAGE.md), the negated
# words where caching must be off. The bench checks the compiled plan's data.cache either way.
CACHE_WORDS_RECOMMENDED = ""
CACHE_WORDS_OFF = "no cache te no cache latents"

RECIPE = """sdx 1
model "{model}"
profile cpu
data "{data}" caption .txt
resolution {resolution} no buckets
lora rank {rank} alpha {rank} on unet modules attention fp32 {cache}
lr {lr} adamw; schedule constant
batch {batch}
steps {steps}
seed {seed}
output "out"
"""

# The example script's options for this job: README_sdxl.md's command (constant lr without warmup,
# checkpoints every 500 steps, seed 42) on the same data and settings as the recipe; fp16 mixed
# precision, the hub, wandb and validation prompts left out (CPU, offline). No --random_flip: sdxlc's
# recipe does not flip either, so both do the same work.
DIFFUSERS_ARGS = [
    "--caption_column", "text", "--resolution", str(RESOLUTION), "--train_batch_size", str(BATCH),
    "--learning_rate", LR, "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
    "--mixed_precision", "no", "--seed", str(SEED), "--rank", str(RANK),
    "--checkpointing_steps", "500", "--report_to", "tensorboard",
]

WARMUP_STEPS = 10  # logged steps before this one are left out of the logged speed
LOG_EVERY = 10  # sdxlc's default log cadence; both tools log a loss point at every 10th step

# `compiled`: the recommended settings plus `compile` (torch.compile of the UNet's step), run on an inductor
# cache that one untimed run filled first (`Bench.warm`: its wall time is the first run's compile cost)
COMPILE_WORDS = "compile"
COMPARISONS = {"recommended": CACHE_WORDS_RECOMMENDED, "like-for-like": CACHE_WORDS_OFF,
               "compiled": f"{CACHE_WORDS_RECOMMENDED} {COMPILE_WORDS}".strip()}

# Skips torchvision's registrations of compiled ops that its PyPI wheel cannot provide beside a CPU
# build of torch (the example script uses only torchvision's transforms).
TORCHVISION_GUARD = '''import sys
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
'''

VERSIONS_PROBE = """import importlib.metadata as m, json, torch
out = {"torch threads": torch.get_num_threads()}
for name in ("torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "datasets",
             "tensorboard", "sdxlc"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


@dataclass
class Run:
    comparison: str
    pair: int
    tool: str
    steps: int
    wall_s: float
    maxrss_mib: float
    cache: str = ""
    logged_sps: float = float("nan")  # steps/s between the TensorBoard points after the warm-up


def make_data(work: Path) -> tuple[Path, Path]:
    """The same 12 images (PNG, 96 px) and captions: a caption-file folder and an imagefolder."""
    from PIL import Image

    plain, imagefolder = work / "data-sdxlc", work / "data-imagefolder"
    plain.mkdir()
    imagefolder.mkdir()
    rows = []
    for index in range(IMAGES):
        stem = f"{index:02d}"
        image = Image.open(SOURCE_IMAGES / f"{stem}.png").convert("RGB")
        image = image.resize((RESOLUTION, RESOLUTION), Image.Resampling.LANCZOS)
        image.save(plain / f"{stem}.png")
        shutil.copyfile(plain / f"{stem}.png", imagefolder / f"{stem}.png")
        caption = (SOURCE_IMAGES / f"{stem}.txt").read_text().strip()
        (plain / f"{stem}.txt").write_text(caption + "\n")
        rows.append(json.dumps({"file_name": f"{stem}.png", "text": caption}))
    (imagefolder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return plain, imagefolder


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process; stops the bench if it fails."""
    with open(log, "wb") as out:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            raise
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"exit {code}: {shlex.join(cmd)}\n(log {log})\n" + "\n".join(tail))
    return wall, usage.ru_maxrss / 1024


def logged_speed(folder: Path, warmup: int) -> float:
    """Steps per second between the first logged 10th step past `warmup` and the last, from the wall-clock
    stamps of the run's TensorBoard loss points (both tools log their loss there): the steady speed,
    without start-up, loading, caching and saving. NaN when fewer than two points are past the warm-up."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: list[tuple[int, float]] = []
    for events in folder.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = [t for t in accumulator.Tags()["scalars"] if "loss" in t and "val" not in t]
        for tag in tags[:1]:
            points += [(e.step, e.wall_time) for e in accumulator.Scalars(tag)]
    # sdxlc reads its losses at its log cadence (every 10 steps by default) and writes the points of the
    # steps in between then: only the points of every 10th step carry their own step's time
    steady = sorted(p for p in points if p[0] > warmup and p[0] % LOG_EVERY == 0)
    if len(steady) < 2 or steady[-1][1] <= steady[0][1]:
        return float("nan")
    return (steady[-1][0] - steady[0][0]) / (steady[-1][1] - steady[0][1])


def cache_of(plan: dict[str, Any]) -> str:
    cache = plan["data"]["cache"]
    on = [name for name, key in (("te", "text_encoder"), ("latents", "latents")) if cache.get(key)]
    return "cache " + "+".join(on) if on else "no cache"


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.data, self.imagefolder = make_data(work)
        self.runs: list[Run] = []
        self.count = 0
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false"}
        self.env.pop("PYTHONPATH", None)
        self.diffusers_env = dict(self.env)
        self.env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")  # sdxlc's compiled runs share it
        self.guarded = self._torchvision_guard()
        self.cold: Run | None = None  # the untimed run that filled the inductor cache

    def _torchvision_guard(self) -> bool:
        probe = subprocess.run([self.args.python, "-c", "import torchvision"], env=self.env,
                               capture_output=True, text=True)
        if probe.returncode == 0:
            return False
        guard = self.work / "torchvision-guard"
        guard.mkdir()
        (guard / "sitecustomize.py").write_text(TORCHVISION_GUARD)
        self.diffusers_env["PYTHONPATH"] = str(guard)
        again = subprocess.run([self.args.python, "-c", "import torchvision.transforms"],
                               env=self.diffusers_env, capture_output=True, text=True)
        if again.returncode != 0:
            raise SystemExit("torchvision does not import in the scratch venv, even guarded:\n"
                             + probe.stderr[-2000:] + again.stderr[-2000:])
        return True

    def versions(self, python: str, env: dict[str, str]) -> dict[str, Any]:
        done = subprocess.run([python, "-c", VERSIONS_PROBE], env=env, cwd=self.work, capture_output=True,
                              text=True, check=True)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def _folder(self, comparison: str, pair: int, tool: str, steps: int) -> Path:
        self.count += 1
        folder = self.work / f"{self.count:03d}-{comparison}-{pair}-{tool}-{steps}"
        folder.mkdir()
        return folder

    def sdxlc(self, comparison: str, pair: int, steps: int) -> Run:
        folder = self._folder(comparison, pair, "sdxlc", steps)
        recipe = folder / "bench.sdx"
        recipe.write_text(RECIPE.format(model=MODEL, data=self.data, resolution=RESOLUTION, rank=RANK,
                                        cache=COMPARISONS[comparison], lr=LR, batch=BATCH, steps=steps,
                                        seed=SEED))
        env = {**self.env, "HF_HOME": str(folder / "hf-home")}
        wall, rss = run_timed([str(SDXLC), "run", str(recipe)], env, folder, folder / "run.log")
        plan = json.loads((folder / "out" / "plan.json").read_text())
        if not (folder / "out" / "bench.safetensors").is_file():
            raise SystemExit(f"sdxlc saved no LoRA in {folder / 'out'}")
        if plan["training"]["total_steps"] != steps:
            raise SystemExit(f"sdxlc planned {plan['training']['total_steps']} steps, not {steps}")
        cache = cache_of(plan)
        if comparison == "like-for-like" and cache != "no cache":
            raise SystemExit(f"the like-for-like recipe caches ({cache}): set CACHE_WORDS_OFF to the words "
                             "that turn caching off")
        return Run(comparison, pair, "sdxlc", steps, wall, rss, cache, logged_speed(folder, WARMUP_STEPS))

    def diffusers(self, comparison: str, pair: int, steps: int) -> Run:
        folder = self._folder(comparison, pair, "diffusers", steps)
        env = {**self.diffusers_env, "HF_HOME": str(folder / "hf-home")}
        cmd = [self.args.python, "-m", "accelerate.commands.launch", "--num_processes", "1",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", str(self.args.threads), str(self.args.diffusers_script),
               "--pretrained_model_name_or_path", str(MODEL), "--train_data_dir", str(self.imagefolder),
               "--output_dir", str(folder / "out"), "--max_train_steps", str(steps), *DIFFUSERS_ARGS]
        wall, rss = run_timed(cmd, env, folder, folder / "run.log")
        if not (folder / "out" / "pytorch_lora_weights.safetensors").is_file():
            raise SystemExit(f"the example script saved no LoRA in {folder / 'out'}")
        return Run(comparison, pair, "diffusers", steps, wall, rss, "encodes every step",
                   logged_speed(folder, WARMUP_STEPS))

    def warm(self, steps: int) -> None:
        """One compiled run on an empty inductor cache: it fills the cache the timed compiled runs use, and
        its wall time is what a first run pays to compile."""
        self.cold = self.sdxlc("compiled", -1, steps)
        print(f"  compiled run on an empty inductor cache, {steps} steps: {self.cold.wall_s:.1f} s",
              flush=True)

    def one(self, comparison: str, pair: int, tool: str, steps: int) -> None:
        run = (self.sdxlc if tool == "sdxlc" else self.diffusers)(comparison, pair, steps)
        self.runs.append(run)
        print(f"  {comparison:13} pair {pair} {tool:9} {steps:4} steps  {run.wall_s:7.1f} s  "
              f"{run.logged_sps:6.2f} steps/s logged  {run.maxrss_mib:6.0f} MiB  {run.cache}", flush=True)


def spread(values: list[float], digits: int = 2) -> str:
    good = [v for v in values if v == v]
    if not good:
        return "n/a"
    return " / ".join(f"{v:.{digits}f}" for v in (min(good), statistics.median(good), max(good)))


def summarize(runs: list[Run], comparison: str, steps: int, half: int) -> tuple[list[str], dict[str, Any]]:
    pairs = sorted({r.pair for r in runs if r.comparison == comparison})

    def get(pair: int, tool: str, n: int) -> Run:
        return next(r for r in runs if (r.comparison, r.pair, r.tool, r.steps) == (comparison, pair, tool, n))

    sps: dict[str, list[float]] = {"sdxlc": [], "diffusers": []}
    logged: dict[str, list[float]] = {"sdxlc": [], "diffusers": []}
    wall: dict[str, list[float]] = {"sdxlc": [], "diffusers": []}
    rss: dict[str, list[float]] = {"sdxlc": [], "diffusers": []}
    for pair in pairs:
        for tool in sps:
            full, part = get(pair, tool, steps), get(pair, tool, half)
            delta = full.wall_s - part.wall_s
            sps[tool].append((steps - half) / delta if delta > 0 else float("nan"))
            wall[tool].append(full.wall_s)
            logged[tool] += [full.logged_sps, part.logged_sps]
            rss[tool].append(max(full.maxrss_mib, part.maxrss_mib))
    speed_ratio = [a / b for a, b in zip(sps["sdxlc"], sps["diffusers"], strict=True)]
    logged_ratio = [a / b for a, b in zip(logged["sdxlc"], logged["diffusers"], strict=True)]
    wall_ratio = [b / a for a, b in zip(wall["sdxlc"], wall["diffusers"], strict=True)]
    rss_ratio = [a / b for a, b in zip(rss["sdxlc"], rss["diffusers"], strict=True)]
    caches = sorted({r.cache for r in runs if r.comparison == comparison and r.tool == "sdxlc"})
    lines = [
        f"### {comparison} (sdxlc: {', '.join(caches)}; diffusers script: encodes every step)",
        "",
        "| | sdxlc min / median / max | diffusers min / median / max | ratio per pair min / median / max |",
        "|---|---|---|---|",
        f"| steady steps/s, logged (TensorBoard stamps past step {WARMUP_STEPS}, every run) | "
        f"{spread(logged['sdxlc'], 3)} | {spread(logged['diffusers'], 3)} | {spread(logged_ratio)} "
        "(sdxlc ÷ diffusers, run by run) |",
        f"| steady steps/s, from wall({steps}) − wall({half}) | {spread(sps['sdxlc'], 3)} | "
        f"{spread(sps['diffusers'], 3)} | {spread(speed_ratio)} (sdxlc ÷ diffusers) |",
        f"| whole process, {steps} steps (s) | {spread(wall['sdxlc'], 1)} | {spread(wall['diffusers'], 1)} | "
        f"{spread(wall_ratio)} (diffusers ÷ sdxlc) |",
        f"| peak RSS (MiB) | {spread(rss['sdxlc'], 0)} | {spread(rss['diffusers'], 0)} | "
        f"{spread(rss_ratio)} (sdxlc ÷ diffusers) |",
        "",
    ]
    unusable = sum(1 for v in speed_ratio if v != v)
    if unusable:
        lines += [f"In {unusable} pair(s) a tool's short run took as long as its long run: no steady "
                        "speed for that pair (too few steps for the noise on this machine).", ""]
    summary = {"logged_sps_ratio_median": median(logged_ratio),
               "steady_sps_ratio_median": median(speed_ratio),
               "wall_ratio_median": median(wall_ratio),
               "rss_ratio_median": median(rss_ratio)}
    return lines, summary


def median(values: list[float]) -> float | None:
    good = [v for v in values if v == v]
    return statistics.median(good) if good else None


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-script", type=Path, required=True,
                        help="diffusers' examples/text_to_image/train_text_to_image_lora_sdxl.py")
    parser.add_argument("--diffusers-script-rev", default="not given",
                        help="where the script comes from, e.g. huggingface/diffusers@<commit>")
    parser.add_argument("--python", required=True, help="the scratch venv's python that runs the script")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved pairs per comparison (>= 3)")
    parser.add_argument("--steps", type=int, default=60, help="steps of the long run; the short run has half")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--comparisons", default=",".join(COMPARISONS),
                        help="comma-separated, of: " + ", ".join(COMPARISONS))
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--keep", type=Path, help="keep the runs' folders and logs in this new folder")
    parser.add_argument("--smoke", action="store_true", help="mark the results as a smoke run")
    args = parser.parse_args()
    if args.pairs < 3:
        parser.error("--pairs must be at least 3")
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    comparisons = [c.strip() for c in args.comparisons.split(",") if c.strip()]
    if not comparisons or any(c not in COMPARISONS for c in comparisons):
        parser.error("--comparisons takes " + ", ".join(COMPARISONS))
    if not args.diffusers_script.is_file():
        parser.error(f"no file {args.diffusers_script}")
    args.diffusers_script = args.diffusers_script.resolve()
    half = args.steps // 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill the running child and clean up

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vs-diffusers-"))
    try:
        bench = Bench(args, work)
        ours = bench.versions(sys.executable, bench.env)
        theirs = bench.versions(args.python, bench.diffusers_env)
        print(f"threads {args.threads}; sdxlc venv {ours}; scratch venv {theirs}; work in {work}", flush=True)
        if "compiled" in comparisons:
            bench.warm(half)
        for pair in range(args.pairs):
            order = ["sdxlc", "diffusers"] if pair % 2 == 0 else ["diffusers", "sdxlc"]
            for comparison in comparisons:
                for steps in (args.steps, half):
                    for tool in order:
                        bench.one(comparison, pair, tool, steps)
        load_after = os.getloadavg()
        finished = datetime.datetime.now(datetime.timezone.utc)
        if args.keep:
            shutil.copytree(work, args.keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    script_sha = hashlib.sha256(args.diffusers_script.read_bytes()).hexdigest()
    command = shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                          else sys.executable, *sys.argv])
    lines = ["# sdxlc against the diffusers SDXL LoRA example script", ""]
    if args.smoke:
        lines += ["**Smoke run on a shared, loaded machine: it shows that the bench works end to end; its",
                  "timings are not a measurement.**", ""]
    lines += [
        "Written by `bench/vs_diffusers.py` (its docstring says how to set up the scratch venv and run it).",
        f"The same work for both: the tiny SDXL pipeline `recipes/models/tiny-shapes`, {IMAGES} images of "
        f"`recipes/data/outlines` at {RESOLUTION} px with their captions, batch {BATCH}, LoRA rank {RANK} "
        f"(alpha {RANK}) on the UNet's to_q/to_k/to_v/to_out.0, AdamW lr {LR} constant, clip 1.0, fp32 "
        f"on the CPU, seed {SEED}, TensorBoard logs, the LoRA saved at the end. Steady steps/s = "
        f"({args.steps} - {half}) steps ÷ (wall of the {args.steps}-step run - wall of the {half}-step run), "
        f"per pair; whole process = wall of the {args.steps}-step run; peak RSS = the larger of the pair's "
        "two runs (ru_maxrss of the process and its children). Ratios > 1 favour sdxlc, except RSS (< 1).",
        "",
        f"- date: {started:%Y-%m-%d %H:%M}–{finished:%H:%M} UTC "
        f"({(finished - started).total_seconds() / 60:.0f} min); machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.threads} threads for both (OMP_NUM_THREADS, MKL_NUM_THREADS, "
        f"accelerate --num_cpu_threads_per_process; torch threads sdxlc {ours.get('torch threads')}, "
        f"diffusers venv {theirs.get('torch threads')})",
        f"- load average before: {' '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{' '.join(f'{v:.2f}' for v in load_after)}",
        f"- pairs: {args.pairs} per comparison, interleaved (the first tool alternates per pair); "
        f"steps {args.steps} and {half}",
        f"- sdxlc venv: {', '.join(f'{k} {v}' for k, v in ours.items() if k != 'torch threads')}",
        f"- scratch venv: {', '.join(f'{k} {v}' for k, v in theirs.items() if k != 'torch threads')}"
        + ("; torchvision's compiled-ops registrations skipped (sitecustomize guard)" if bench.guarded
           else ""),
        f"- diffusers script: `{args.diffusers_script.name}` from {args.diffusers_script_rev}, "
        f"sha256 {script_sha[:16]}…, run under `accelerate launch`",
        f"- command: `{command}`",
        "",
        "## Results",
        "",
    ]
    summaries, tables = {}, []
    for comparison in comparisons:
        table, summaries[comparison] = summarize(bench.runs, comparison, args.steps, half)
        tables += table
    for comparison, summary in summaries.items():
        speed = times(summary["logged_sps_ratio_median"])
        lines.append(f"- {comparison}: sdxlc's steady-state steps/s {speed} the script's (median over the "
                     f"runs, from the logged step stamps; from wall-time differences "
                     f"{times(summary['steady_sps_ratio_median'])}; the goal is ≥ 1.5× with the recommended "
                     "settings), "
                     f"whole process {times(summary['wall_ratio_median'])} as fast, peak RSS "
                     f"{times(summary['rss_ratio_median'])} the script's")
    if bench.cold is not None:
        lines.append(f"- compiled, first run: {bench.cold.wall_s:.1f} s for {bench.cold.steps} steps on an "
                     "empty inductor cache (the compile of the UNet's step); the timed compiled runs reuse "
                     "that cache, as a second run of a recipe does")
    lines += ["", *tables]
    lines += ["## Runs", "", "| comparison | pair | tool | steps | wall (s) | logged steps/s | "
              "peak RSS (MiB) | caching |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.comparison} | {r.pair} | {r.tool} | {r.steps} | {r.wall_s:.1f} | {r.logged_sps:.2f} | "
              f"{r.maxrss_mib:.0f} | {r.cache} |" for r in bench.runs]
    recipe = RECIPE.format(model=f"<repo>/{MODEL.relative_to(ROOT)}", data="<work>/data-sdxlc",
                           resolution=RESOLUTION, rank=RANK, cache="{cache}", lr=LR, batch=BATCH,
                           steps=f"{args.steps} or {half}", seed=SEED)
    lines += ["", "sdxlc recipe (`{cache}` per comparison: " + ", ".join(
        f"{c}: `{COMPARISONS[c] or '(none)'}`" for c in comparisons) + "):", "", "```",
        recipe.strip(), "```", "", "diffusers script options (besides model, data, output dir and "
        "`--max_train_steps`): `" + shlex.join(DIFFUSERS_ARGS) + "`", ""]
    args.out.write_text("\n".join(lines))
    print(json.dumps(summaries))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
