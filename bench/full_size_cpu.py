"""Full-size SDXL on the CPU through `sdxlc run`: a random-init LoRA (unet+te1+te2) and a textual inversion,
2 steps each at 512 px with checkpointing, wall time and peak RSS against the estimate; the LoRA reloaded
into a full-size diffusers pipeline with `load_lora_weights`, every module of the file consumed.

Usage: python bench/full_size_cpu.py [--out bench/results/full_size_cpu.md] [--need-gb 20]

The model is the shipped SDXL configs (sdxlc/data/sdxl_config) with random weights, saved once as a
diffusers folder (bench/memory_vs_rss.py `build_full_folder`, kept in the temp folder). Each run is a fresh
`sdxlc run RECIPE` process under `MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`; its peak RSS is
the child's `ru_maxrss` (os.wait4), less the empty-process baseline of bench/memory_vs_rss.py. Without
`--need-gb` GB available (`free -g`) nothing runs and the result file says so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import memory_vs_rss as mvr  # noqa: E402

GiB = float(1 << 30)
JOBS = {
    "lora unet+te1+te2": "lora rank 8 alpha 8 on unet+te1+te2",
    "embedding": 'embedding "<sks>" init "dog" vectors 2',
}


def available_gb() -> int:
    out = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout
    return int(out.split("\n")[1].split()[-1])


def recipe(folder: Path, model: Path, method: str) -> Path:
    path = folder / "full.sdx"
    path.write_text("\n".join([
        "sdx 1", f'model "{model}"', "profile cpu", f'data "{mvr.DATA}" caption .txt',
        "resolution 512 no buckets",
        method, "lr 1e-4 adamw", "batch 1", "steps 2", "checkpointing", f'output "{folder / "out"}"',
    ]) + "\n", encoding="utf-8")
    return path


def estimate(path: Path) -> int:
    from sdxlc.pipeline import compile_recipe

    compiled = compile_recipe(path, profile="cpu")
    if compiled.plan is None:
        raise SystemExit(f"{path}: does not compile: {[str(d) for d in compiled.errors]}")
    terms = compiled.plan["estimate"]["vram_breakdown"]
    return int(sum(v for k, v in terms.items() if k not in mvr.NOT_SEEN))


def run(path: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of `sdxlc run RECIPE` in a fresh process."""
    env = {**os.environ, **mvr.ENV, "OMP_NUM_THREADS": "2"}
    started = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "sdxlc"), "run", str(path)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sdxlc run {path} failed ({os.waitstatus_to_exitcode(status)})")
    return time.perf_counter() - started, int(usage.ru_maxrss) * 1024


def reload_lora(model: Path, lora: Path) -> str:
    """Load the LoRA into the full-size pipeline; every module in the file must become a peft layer."""
    from diffusers import StableDiffusionXLPipeline
    from peft.tuners.lora import LoraLayer
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    pipe = StableDiffusionXLPipeline.from_pretrained(model, local_files_only=True)
    pipe.load_lora_weights(str(lora))
    counts = []
    for part, prefix in ((pipe.unet, "lora_unet_"), (pipe.text_encoder, "lora_te1_"),
                         (pipe.text_encoder_2, "lora_te2_")):
        in_file = {k.split(".")[0] for k in keys if k.startswith(prefix) and k.endswith("lora_down.weight")}
        layers = sum(isinstance(m, LoraLayer) for m in part.modules())
        if layers != len(in_file):
            raise SystemExit(f"{prefix}: {len(in_file)} modules in the file, {layers} loaded")
        counts.append(f"{prefix[5:-1]} {layers}")
    return ", ".join(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "full_size_cpu.md")
    parser.add_argument("--need-gb", type=int, default=20)
    args = parser.parse_args()
    head = ["# Full-size SDXL on the CPU through `sdxlc run`\n",
            f"Date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; command `python "
            f"{' '.join(sys.argv)}`; load average {' '.join(open('/proc/loadavg').read().split()[:3])}.\n"]
    if (free := available_gb()) < args.need_gb:
        note = f"Not run: memory ({free} GB available, {args.need_gb} needed).\n"
        args.out.write_text("\n".join([*head, note]), encoding="utf-8")
        print(f"not run: {free} GB available")
        return
    model = mvr.WORK / "sdxl"
    if not (model / "model_index.json").is_file():
        mvr.build_full_folder(model)
    baseline = mvr.spawn(["--baseline"], 2, 600)["VmRSS"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, line in JOBS.items():
            folder = Path(tempfile.mkdtemp(dir=tmp))
            path = recipe(folder, model, line)
            seconds, peak = run(path)
            final = [p for p in (folder / "out").glob("*.safetensors") if "-step" not in p.name]
            loaded = reload_lora(model, final[0]) if name.startswith("lora") else ""
            rows.append({"job": name, "seconds": seconds, "peak": peak - baseline, "estimate": estimate(path),
                         "loaded": loaded})
    lines = [*head, f"Peak RSS above the {baseline / GiB:.2f} GiB empty-process baseline.\n",
             "| job | wall s | peak RSS GiB | estimate GiB | error | reloaded LoRA layers |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        err = (r["estimate"] - r["peak"]) / r["peak"] * 100
        lines.append(f"| {r['job']} | {r['seconds']:.0f} | {r['peak'] / GiB:.2f} | "
                     f"{r['estimate'] / GiB:.2f} | {err:+.1f}% | {r['loaded']} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
