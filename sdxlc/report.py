"""Human-readable rendering of a plan for `sdxlc plan`: settings with provenance, step arithmetic,
buckets, the memory estimate and its verdict."""

from __future__ import annotations

from typing import Any

from sdxlc.resolve_data import bucket_details

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
    for d in data["datasets"]:
        kind = "regularization" if d["regularization"] else "train"
        lines.append(
            f"  {d['images']} images × {d['repeat']} repeats = {d['images'] * d['repeat']} samples "
            f"({kind}, {d['path']})"
        )
    lines.append(
        f"  {data['samples_per_epoch']} samples per epoch in {len(data['buckets']['table'])} bucket(s), "
        f"batch {t['batch_size']} → {t['batches_per_epoch']} batches per epoch"
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
    for name, size in sorted(est["vram_breakdown"].items(), key=lambda kv: -kv[1]):
        if size:
            lines.append(f"  {name:<28} {_gib(size):>10}")
    lines.append(
        f"time estimate: {est['seconds_per_step']:.3f} s/step × {plan['training']['total_steps']} steps "
        f"≈ {_duration(est['total_seconds'])} ({est['step_flops'] / 1e12:.2f} TFLOP per step)"
    )
    return "\n".join(lines)


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


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
