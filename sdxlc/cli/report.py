"""Human-readable rendering of a plan for `sdxlc plan`: settings with provenance, step arithmetic,
buckets, the memory estimate and its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdxlc.resolve.data import bucket_details

_SECTIONS = (
    "model",
    "hardware",
    "method",
    "precision",
    "optimizer",
    "schedule",
    "training",
    "save",
    "sample",
    "output",
    "log",
    "launch",
)


def render_plan(plan: dict[str, Any]) -> str:
    parts = [_settings(plan), _steps(plan), _buckets(plan), _estimate(plan)]
    if plan["warnings"]:
        parts.append("warnings:\n" + "\n".join(f"  - {w}" for w in plan["warnings"]))
    parts.append(f"plan {plan['plan_hash']}")
    return "\n\n".join(parts) + "\n"


def _settings(plan: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    for section in _SECTIONS:
        for key, value in plan[section].items():
            path = f"{section}.{key}"
            rows.append((path, _value(value), _origin(plan["provenance"].get(path))))
    for index, dataset in enumerate(plan["data"]["datasets"]):
        for key, value in dataset.items():
            path = f"data.datasets.{index}.{key}"
            rows.append((path, _value(value), _origin(plan["provenance"].get(path))))
    for key in ("resolution",):
        rows.append(
            (f"data.{key}", _value(plan["data"][key]), _origin(plan["provenance"].get(f"data.{key}")))
        )
    for key, value in plan["data"]["cache"].items():
        rows.append(
            (f"data.cache.{key}", _value(value), _origin(plan["provenance"].get(f"data.cache.{key}")))
        )
    width = max(len(r[0]) for r in rows)
    vwidth = min(48, max(len(r[1]) for r in rows))
    lines = ["settings:"] + [f"  {p:<{width}}  {v:<{vwidth}}  {o}" for p, v, o in rows]
    return "\n".join(lines)


def _steps(plan: dict[str, Any]) -> str:
    data, t = plan["data"], plan["training"]
    lines = ["steps:"]
    train = sum(d["samples"] for d in data["datasets"] if not d["regularization"])
    for d in data["datasets"]:
        weight = f", loss weight {d['loss_weight']:g}" if d["loss_weight"] != 1.0 else ""
        if d["regularization"]:
            lines.append(
                f"  {d['images']} regularization images balanced to the {train} training samples → "
                f"{d['samples']} samples ({d['path']}{weight})"
            )
            continue
        repeats = f"{d['repeat']} repeats" if d["samples"] == d["images"] * d["repeat"] else (
            f"{d['repeat']} repeats × folder repeats")
        lines.append(
            f"  {d['images']} images × {repeats} = {d['samples']} samples (train, {d['path']}{weight})"
        )
    table = data["buckets"]["table"]
    per_bucket = ""
    if len(table) > 1:  # a batch never mixes buckets: each bucket rounds its batch count up
        shown = " + ".join(str(row["batches"]) for row in table[:8]) + (" + …" if len(table) > 8 else "")
        per_bucket = f" (per bucket: {shown})"
    lines.append(
        f"  {data['samples_per_epoch']} samples per epoch in {len(table)} bucket(s), "
        f"batch {t['batch_size']} → {t['batches_per_epoch']} batches per epoch{per_bucket}"
    )
    launch = plan["launch"]
    if launch["world_size"] > 1:
        lines.append(
            f"  {t['batches_per_epoch']} batches ÷ (accumulate {t['accumulate']} × {launch['world_size']} "
            f"processes) → {t['steps_per_epoch']} optimizer steps per epoch (batch {t['batch_size']} per "
            f"process, global batch {launch['global_batch']}; "
            f"rank r takes batches r, r+{launch['world_size']}, …)"
        )
    else:
        lines.append(
            f"  {t['batches_per_epoch']} batches ÷ accumulate {t['accumulate']} → "
            f"{t['steps_per_epoch']} optimizer steps per epoch (effective batch {t['effective_batch']})"
        )
    lines.append(
        f"  {t['total_steps']} steps = {t['total_steps'] / t['steps_per_epoch']:.2f} epochs "
        f"(training runs {t['epochs']} epoch pass(es)); warmup {plan['schedule']['warmup_steps']} steps"
    )
    return "\n".join(lines)


def _buckets(plan: dict[str, Any]) -> str:
    lines = ["buckets:", "  bucket        images  batches  aspect error  cropped"]
    for row in bucket_details(plan):
        lines.append(
            f"  {row['width']:>5}×{row['height']:<6} {row['images']:>6}  {row['batches']:>7}  "
            f"{row['aspect_error'] * 100:>11.1f}%  {row['cropped'] * 100:>6.1f}%"
        )
    return "\n".join(lines)


def _estimate(plan: dict[str, Any]) -> str:
    est, hw = plan["estimate"], plan["hardware"]
    verdict = {
        "fits": "fits",
        "tight": "fits, but tight (under 10% headroom)",
        "does_not_fit": "does NOT fit",
    }
    memory = "VRAM" if hw["device"] == "cuda" else "memory"
    world = plan["launch"]["world_size"]
    each = f" per process ({world} × {plan['launch']['strategy']})" if world > 1 else ""
    lines = [
        f"{memory} estimate{each} on {hw['name']} ({hw['profile']}): {_gib(est['vram_bytes'])} of "
        f"{_gib(est['budget_bytes'])} usable → {verdict[est['verdict']]}"
    ]
    terms = {k: v for k, v in est["vram_breakdown"].items() if k != "sample_peak" and v}
    sample = est["vram_breakdown"].get("sample_peak", 0)
    lines.append(f"  training peak {_gib(sum(terms.values()))}" + (
        f"; sampling peak {_gib(sample)} (every component back on the device, gradients freed)" if sample
        else ""))
    for name, size in sorted(terms.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<28} {_gib(size):>10}")
    if est.get("spills"):
        lines.append("  this card's driver spills to system RAM when VRAM runs out: the run would not stop, "
                     "it would crawl (10-100x slower steps)")
    return "\n".join(lines + _time(plan) + _disk(plan))


def _disk(plan: dict[str, Any]) -> list[str]:
    """What the run writes to disk at most, by kind, and whether the disks have the room."""
    from sdxlc.estimate.disk import room

    disk = plan["estimate"].get("disk_bytes")
    if not disk:
        return []
    parts = ", ".join(f"{kind} {_mib(size)}" for kind, size in disk.items() if kind != "total" and size)
    lines = [f"disk: writes up to {_mib(disk['total'])}" + (f" ({parts})" if parts else "")]
    entries, size = _cache_usage(Path(plan["data"]["cache"]["dir"]))
    if entries:
        lines.append(f"  cache {plan['data']['cache']['dir']}: {entries} entries, {_mib(size)} "
                     "(`sdxlc cache --verify`, `--prune`)")
    return lines + [f"  warning: {warning}" for warning in room(plan)]


def _cache_usage(root: Path) -> tuple[int, int]:
    """Entries of the latent and text-encoder disk caches, and their bytes."""
    count = size = 0
    for kind in ("latents", "text"):
        for entry in (root / kind).glob("*/*.safetensors"):
            try:
                size += entry.stat().st_size
            except OSError:
                continue
            count += 1
    return count, size


def _mib(n: int) -> str:
    return _gib(n) if n >= 1 << 30 else f"{n / 2**20:.1f} MiB"


def _time(plan: dict[str, Any]) -> list[str]:
    """The time estimate with its arithmetic: FLOPs over the effective rate, then the parts of the run."""
    est, steps = plan["estimate"], plan["training"]["total_steps"]
    lines = [f"time estimate: {est['seconds_per_step']:.3f} s/step × {steps} steps "
             f"≈ {_duration(est['total_seconds'])} ({_flops(est['step_flops'])} per step)"]
    t = est.get("time_breakdown")
    if not t:
        return lines
    dtype = plan["precision"]["mixed"]
    per_step = (f"  per step: {_flops(est['step_flops'])} ÷ ({t['dense_tflops']:g} TFLOP/s {dtype} "
                f"× efficiency {t['efficiency']:g} = {t['effective_tflops']:.2f} TFLOP/s) = "
                f"{t['compute_per_step']:.3f} s"
                f" + {t['overhead_per_step']:.3f} s dispatch")
    if t["communication_per_step"]:
        per_step += f" + {t['communication_per_step']:.3f} s gradient all-reduce"
    lines.append(per_step)
    lines.append(f"  training {_duration(t['training'])}, sampling {_duration(t['sampling'])}, "
                 f"caching {_duration(t['caching'])}")
    return lines


def _value(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"[{', '.join(_value(v) for v in value[:3])}, … {len(value)} values]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict) and len(value) > 3:
        return f"{{{len(value)} settings}}"
    if value is None:
        return "—"
    return str(value)


def _origin(origin: dict[str, Any] | None) -> str:
    if not origin:
        return ""
    return f"{origin['source']} {origin['at']}" if origin.get("at") else str(origin["source"])


def _flops(n: float) -> str:
    return f"{n / 1e12:.2f} TFLOP" if n >= 1e11 else f"{n / 1e9:.2f} GFLOP"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_plan_warnings(plan: dict[str, Any]) -> None:
    """The plan's warnings (bad input files skipped with path and reason, upscaled images…) and the
    disks' room for what the run writes, on stderr: `run` and `cache` say what `plan` says."""
    import click

    from sdxlc.estimate.disk import room

    for warning in [*plan["warnings"], *room(plan)]:
        click.echo(f"warning: {warning}", err=True)
