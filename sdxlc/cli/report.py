"""Human-readable rendering of a plan for `sdxlc plan`.

The default view shows what the recipe set (grouped by the line that set it), what the profile, the fit
solver and the optimizer's defaults chose for it, then the step arithmetic, the buckets, the memory,
time and disk estimates, the warnings and the plan hash. `--all` lists every resolved value with its
provenance instead, and the whole arithmetic. Values are written as recipe text (sdxlc/cli/recipe_text.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdxlc.cli.recipe_text import value_text
from sdxlc.cli.report_validation import validation_lines
from sdxlc.estimate.analytic import sample_passes
from sdxlc.resolve import companions
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

RECIPE_LAYERS = ("use", "recipe", "set")  # lowest first
# Values derived from the recipe that say what the run does beyond what it wrote.
SHOWN_DERIVED = ("optimizer.class", "method.unet_modules", "method.te_modules", "model.architecture")
WIDTH = 120  # the default view's rows are wrapped past this many characters
BUCKET_ROWS = 8  # buckets listed in the default view; `--all` lists every one


def render_plan(plan: dict[str, Any], everything: bool = False) -> str:
    settings = _every_setting(plan) if everything else _chosen_settings(plan)
    parts = [settings, _steps(plan), _buckets(plan, everything), _estimate(plan, everything)]
    if plan["warnings"]:
        parts.append("warnings:\n" + "\n".join(f"  - {w}" for w in plan["warnings"]))
    parts.append(f"plan {plan['plan_hash']}")
    return "\n\n".join(parts) + "\n"


# --- settings ------------------------------------------------------------------------------------


def _rows(plan: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any] | None]]:
    """Every resolved setting as (plan path, value, provenance), section by section; fields of sections
    this list does not know are appended from the provenance."""
    rows: list[tuple[str, Any, dict[str, Any] | None]] = []
    provenance = plan["provenance"]
    for section in _SECTIONS:
        rows += [(f"{section}.{k}", v, provenance.get(f"{section}.{k}")) for k, v in plan[section].items()]
    for index, dataset in enumerate(plan["data"]["datasets"]):
        rows += [(f"data.datasets.{index}.{k}", v, provenance.get(f"data.datasets.{index}.{k}"))
                 for k, v in dataset.items()]
    rows.append(("data.resolution", plan["data"]["resolution"], provenance.get("data.resolution")))
    cache = plan["data"]["cache"]
    rows += [(f"data.cache.{k}", v, provenance.get(f"data.cache.{k}")) for k, v in cache.items()]
    seen = {path for path, _, _ in rows}
    rows += [(path, _lookup(plan, path), origin) for path, origin in provenance.items() if path not in seen]
    return rows


def _lookup(plan: dict[str, Any], path: str) -> Any:
    node: Any = plan
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def _every_setting(plan: dict[str, Any]) -> str:
    """`--all`: one line per resolved value, with where it came from."""
    rows = [(path, value_text(path, value), _origin(origin)) for path, value, origin in _rows(plan)]
    width = max(len(r[0]) for r in rows)
    vwidth = min(48, max(len(r[1]) for r in rows))
    return "\n".join(["settings:"] + [f"  {p:<{width}}  {v:<{vwidth}}  {o}" for p, v, o in rows])


def _chosen_settings(plan: dict[str, Any]) -> str:
    """The default view: the values a recipe layer set, one row per line that set them; then what the
    profile, the fit solver and the defaults with a reason chose, and the derived values that matter."""
    given: dict[str, dict[str, list[str]]] = {}
    chosen: dict[str, dict[str, list[str]]] = {}
    order: dict[str, tuple[int, str, int]] = {}
    recipe = _recipe_name(plan)
    for path, value, origin in _rows(plan):
        section, _, key = path.rpartition(".")
        source = (origin or {}).get("source")
        if source in RECIPE_LAYERS:
            label, rank = _line_of(origin or {}, recipe)
            order.setdefault(label, rank)
            given.setdefault(label, {}).setdefault(section, []).append(f"{key} {value_text(path, value)}")
        elif _worth_showing(path, value, origin) and section != "hardware":  # the estimate names it
            parts = chosen.setdefault(_origin(origin), {}).setdefault(section, [])
            parts.append(f"{key} {value_text(path, value)}")
    lines = [f"set by {recipe} (`sdxlc plan --all` lists every resolved value):"]
    # the column fits the recipe's own labels; a longer chosen label (a default's reason) runs past it
    width = min(34, max((len(label) for label in given or chosen), default=0))
    lines += _grouped(sorted(given.items(), key=lambda item: order[item[0]]), width)
    if chosen:
        lines += ["chosen for it (hardware profile, fit solver, defaults with a reason, derived):"]
        lines += _grouped(list(chosen.items()), width)
    return "\n".join(lines)


def _worth_showing(path: str, value: Any, origin: dict[str, Any] | None) -> bool:
    source = (origin or {}).get("source")
    if source in ("profile", "solver"):
        return True
    if source == "default":
        return bool((origin or {}).get("at"))  # a default picked for a reason, which `at` gives
    return source == "derived" and path in SHOWN_DERIVED and value not in (None, [], {})


def _grouped(groups: list[tuple[str, dict[str, list[str]]]], width: int) -> list[str]:
    """One row per label, `section: key value, …; section: …`, wrapped between values past WIDTH."""
    lines = []
    for label, sections in groups:
        chunks = []
        for section, given in sections.items():
            parts = _sized(given)
            parts = [f"{section}: {parts[0]}", *parts[1:]]
            chunks += [part + "," for part in parts[:-1]] + [parts[-1] + ";"]
        chunks[-1] = chunks[-1].removesuffix(";")
        lines += _wrapped(f"  {label:<{width}}  ", chunks)
    return lines


def _sized(parts: list[str]) -> list[str]:
    """`width 1024` and `height 1024` as the recipe's `size 1024` (`size 832x1216` when they differ)."""
    width = next((p for p in parts if p.startswith("width ")), None)
    height = next((p for p in parts if p.startswith("height ")), None)
    if width is None or height is None:
        return parts
    w, h = width.removeprefix("width "), height.removeprefix("height ")
    size = f"size {w}" if w == h else f"size {w}x{h}"
    return [size if p == width else p for p in parts if p != height]


def _wrapped(head: str, chunks: list[str]) -> list[str]:
    """`head` and the chunks joined by spaces, a new line (indented under the first) before a chunk that
    would pass WIDTH."""
    lines, line = [], head + chunks[0]
    for chunk in chunks[1:]:
        if len(line) + 1 + len(chunk) > WIDTH:
            lines.append(line)
            line = " " * len(head) + chunk
        else:
            line += " " + chunk
    return [*lines, line]


def _line_of(origin: dict[str, Any], recipe: str) -> tuple[str, tuple[int, str, int]]:
    """Where a recipe layer set a value, shortly: `line 7` of the recipe, `use base/sdxl.sdx:3` (relative to
    the recipe), `--set:1`; and a sort key: used files first, then the recipe, then `--set`, by line."""
    source, at = str(origin.get("source")), origin.get("at")
    if not at:
        return source, (RECIPE_LAYERS.index(source), "", 0)
    file, _, line = str(at).rpartition(":")[0].rpartition(":")  # `file:line:column`, the column dropped
    if source == "recipe" and file == recipe:
        label = f"line {line}"
    elif source == "use":
        label = f"use {_relative(file, recipe)}:{line}"
    else:
        label = f"{file}:{line}"
    return label, (RECIPE_LAYERS.index(source), file, int(line) if line.isdigit() else 0)


def _relative(file: str, recipe: str) -> str:
    """A used file's path from the recipe's folder, as the recipe's `use` names it."""
    if os.path.isabs(file) != os.path.isabs(recipe):
        return file
    return os.path.relpath(file, os.path.dirname(recipe) or ".")


def _recipe_name(plan: dict[str, Any]) -> str:
    sources = plan.get("sources") or []
    return str(sources[0]["file"]) if sources else "the recipe"


def _origin(origin: dict[str, Any] | None) -> str:
    if not origin:
        return ""
    if origin["source"] == "solver":
        return f"fit auto: {origin['at']}"
    return f"{origin['source']} {origin['at']}" if origin.get("at") else str(origin["source"])


# --- steps and buckets ---------------------------------------------------------------------------


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
        lines += companions.report_lines(d)  # masks and control images (sdxlc/resolve/companions.py)
    lines += validation_lines(plan)  # sdxlc/cli/report_validation.py
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


def _buckets(plan: dict[str, Any], everything: bool) -> str:
    lines = ["buckets:", "  bucket        images  batches  aspect error  cropped"]
    rows = bucket_details(plan)
    for row in rows if everything else rows[:BUCKET_ROWS]:
        lines.append(
            f"  {row['width']:>5}×{row['height']:<6} {row['images']:>6}  {row['batches']:>7}  "
            f"{row['aspect_error'] * 100:>11.1f}%  {row['cropped'] * 100:>6.1f}%"
        )
    if len(rows) > len(lines) - 2:
        lines.append(f"  … {len(rows) - (len(lines) - 2)} more (`sdxlc plan --all` lists them)")
    return "\n".join(lines)


# --- estimates -----------------------------------------------------------------------------------


def _estimate(plan: dict[str, Any], everything: bool) -> str:
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
    ranked = sorted(terms.items(), key=lambda kv: -kv[1])
    if everything:
        lines.append(f"  training peak {_gib(sum(terms.values()))}")
        lines += [f"    {name:<28} {_gib(size):>10}" for name, size in ranked]
    else:
        lines.append(f"  training peak {_gib(sum(terms.values()))}: {_top_terms(ranked)}")
    sample = est["vram_breakdown"].get("sample_peak", 0)
    if sample:
        lines.append(f"  sampling peak {_gib(sample)} (every component back on the device, gradients freed)")
    if est.get("spills"):
        lines.append("  this card's driver spills to system RAM when VRAM runs out: the run would not stop, "
                     "it would crawl (10-100x slower steps)")
    return "\n".join(lines + _time(plan, everything) + _disk(plan))


def _top_terms(ranked: list[tuple[str, int]], shown: int = 3) -> str:
    parts = [f"{name} {size / 2**30:.2f}" for name, size in ranked[:shown]]
    rest = ranked[shown:]
    if rest:
        parts.append(f"{len(rest)} more {sum(size for _, size in rest) / 2**30:.2f}")
    return ", ".join(parts) + " GiB"


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


def _compile_text(t: dict[str, Any]) -> str:
    """` + compile …` of the time estimate: a first run's compile, and what a later run still spends."""
    if not t.get("compile"):
        return ""
    cached = _duration(t.get("compile_cached", 0.0))
    return f" + compile {_duration(t['compile'])} (a first run; about {cached} once cached on disk)"


def _time(plan: dict[str, Any], everything: bool) -> list[str]:
    """The time estimate and its parts; with `everything`, the per-step arithmetic (FLOPs over the
    effective rate) too."""
    est, steps = plan["estimate"], plan["training"]["total_steps"]
    t = est.get("time_breakdown")
    if not t:
        return [f"time estimate: about {_duration(est['total_seconds'])} "
                f"({est['seconds_per_step']:.3f} s/step × {steps} steps)"]
    lines = [f"time estimate: about {_duration(est['total_seconds'])} = training {_duration(t['training'])}"
             f" + sampling {_duration(t['sampling'])} + caching {_duration(t['caching'])}"
             + (f" + validation {_duration(t['validation'])}" if t.get("validation") else "")
             + _compile_text(t),
             f"  training: {est['seconds_per_step']:.3f} s/step × {steps} steps "
             f"({_flops(est['step_flops'])} per step)"]
    if everything:
        dtype = plan["precision"]["mixed"]
        per_step = (f"  per step: {_flops(est['step_flops'])} ÷ ({t['dense_tflops']:g} TFLOP/s {dtype} "
                    f"× efficiency {t['efficiency']:g} = {t['effective_tflops']:.2f} TFLOP/s) = "
                    f"{t['compute_per_step']:.3f} s + {t['overhead_per_step']:.3f} s dispatch")
        if t["communication_per_step"]:
            per_step += f" + {t['communication_per_step']:.3f} s gradient all-reduce"
        lines.append(per_step)
    return lines + _sampling_passes(plan)


def _sampling_passes(plan: dict[str, Any]) -> list[str]:
    """`  sampling: 3 passes × 2 prompts (every 100 steps, and after the final save)`; nothing when the
    run does not sample."""
    passes, prompts = sample_passes(plan), len(plan["sample"]["prompts"])
    if not passes:
        return []
    every, before = plan["sample"]["every_steps"], plan["sample"].get("before")
    when = "after the final save"
    if every and every < plan["training"]["total_steps"]:
        when = f"every {every} steps, and {when}"
    when = f"before the first step, {when}" if before else when
    return [f"  sampling: {passes} pass{'es' if passes > 1 else ''} × {prompts} "
            f"prompt{'s' if prompts > 1 else ''} at {plan['sample']['steps']} steps ({when})"]


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
