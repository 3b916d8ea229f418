"""`sdxlc plan --exact`: the plan's training step and sampling pass measured on fake tensors, printed
against the analytic estimate. Loads the training runtime, so it is imported only when asked for."""

from __future__ import annotations

import sys
from typing import Any

import click

from sdxlc.cli.exits import EXIT_RUN


def print_exact(plan_: dict[str, Any]) -> None:
    """Measure the plan's training step on fake tensors and print it against the analytic estimate."""
    try:
        from runtime.exact.step import measure
    except ImportError as exc:  # the training stack is not installed
        click.echo(f"error: --exact needs the training runtime: {exc}", err=True)
        sys.exit(EXIT_RUN)
    from runtime import RunError

    try:
        result = measure(plan_)
    except RunError as exc:
        click.echo(f"error: --exact: {exc}", err=True)
        sys.exit(EXIT_RUN)
    est = plan_["estimate"]
    skip = {"allocator_overhead", "cuda_context", "sample_peak"}
    analytic = sum(v for k, v in est["vram_breakdown"].items() if k not in skip)
    peak = result["peak_bytes"]
    unit, scale = ("GiB", float(1 << 30)) if peak >= 1 << 30 else ("MiB", float(1 << 20))
    click.echo(
        f"\nexact training-step peak (fake tensors, {result['seconds']:.1f} s, "
        f"peak in {result['peak_phase']}):"
    )
    click.echo(f"  measured  {peak / scale:8.2f} {unit}")
    click.echo(
        f"  estimate  {analytic / scale:8.2f} {unit}  ({(analytic - peak) / peak * 100:+.1f}%; "
        "without allocator overhead and CUDA context, which fake tensors cannot see)"
    )
    terms = {k: v for k, v in est["vram_breakdown"].items() if k not in skip}
    click.echo(f"    {'':<24} {'measured':>12} {'estimate':>12}")
    for name in sorted(set(result["breakdown"]) | set(terms), key=lambda k: -result["breakdown"].get(k, 0)):
        cells = [f"{d[name] / scale:8.2f} {unit}" if name in d else "" for d in (result["breakdown"], terms)]
        click.echo(f"    {name:<24} {cells[0]:>12} {cells[1]:>12}")
    flops, want = result["step_flops"], est["step_flops"]
    fu, fs = ("TFLOP", 1e12) if flops >= 1e12 else ("GFLOP", 1e9)
    click.echo(
        f"  FLOPs per step: measured {flops / fs:.2f} {fu}, estimate {want / fs:.2f} {fu} "
        f"({(want - flops) / flops * 100:+.1f}%)"
    )
    for note in result.get("notes", []):
        click.echo(f"  note: {note}")
    _print_sampling(plan_)


def _print_sampling(plan_: dict[str, Any]) -> None:
    """The sampling peak on fake tensors against the estimate's `sample_peak`, when the plan samples."""
    from runtime.exact.sample import measure_sampling
    from sdxlc.estimate.analytic import sample_peak_seen
    from sdxlc.resolve.profiles import load_profile

    result = measure_sampling(plan_)
    if result is None:
        return
    analytic = sample_peak_seen(plan_, load_profile(plan_["hardware"]["profile"]))
    peak = result["peak_bytes"]
    unit, scale = ("GiB", float(1 << 30)) if peak >= 1 << 30 else ("MiB", float(1 << 20))
    passes = ", ".join(f"{name} +{size / scale:.2f} {unit}" for name, size in result["phase_bytes"].items())
    click.echo(
        f"\nexact sampling peak (fake tensors, {result['seconds']:.1f} s, peak in {result['peak_phase']}):"
    )
    click.echo(f"  measured  {peak / scale:8.2f} {unit}  (resident {result['resident_bytes'] / scale:.2f} "
               f"{unit}; {passes})")
    click.echo(f"  estimate  {analytic / scale:8.2f} {unit}  ({(analytic - peak) / peak * 100:+.1f}%; "
               "without allocator overhead and CUDA context)")
