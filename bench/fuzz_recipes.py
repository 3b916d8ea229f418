"""Fuzz the compiler with over ten thousand generated recipes and record what happened.

Every family of tests/fuzzing.py (mutated recipes, vocabulary statements, arbitrary text, extreme
numbers, control characters, long inputs, `use` chains, junk `--set`, filesystem-shaped paths, method
× launch strategy) is driven through hypothesis (generate phase only, a fixed seed) and each case is
compiled in-process with a timer. Outcomes are classed as the command line would end: exit 70 (an
exception escaped), exit 1 (recipe errors), exit 0 (a plan); a case over 5 s is slow; an error without
a usable `file:line:col` is unlocated. A sample of cases also goes through the real `sdxlc check`.

Run from the repository root: `python bench/fuzz_recipes.py` (about 10 minutes on 2 cores). Writes
bench/results/fuzz_recipes.md; `--save DIR` keeps every exit-70, slow or unlocated case as a
regression-corpus entry (tests/fuzz_corpus/ format).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import FAMILIES, Case, Outcome, run_case, sandbox  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

SLOW_SECONDS = 5.0


class _Overrun(BaseException):
    """Raised by the alarm when a case runs past the hard limit (the bench must finish); not an
    Exception, so that nothing the case runs can take it for an error of its own."""


@dataclass
class Tally:
    exits: collections.Counter[int] = field(default_factory=collections.Counter)
    slow: int = 0
    unlocated: int = 0
    unlocated_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: int = 0  # cases with at least one error
    diagnostics: int = 0  # error diagnostics in all
    diagnostics_unlocated: int = 0
    crashes: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    cases: int = 0


def _describe(case: Case) -> str:
    text = case.recipe[:90].decode("utf-8", "backslashreplace").replace("\n", "⏎")
    sets = f" --set {' --set '.join(s[:40] for s in case.sets)}" if case.sets else ""
    return f"{text}{'…' if len(case.recipe) > 90 else ''}{sets}"[:160]


def _run(case: Case, folder: Path, limit: int) -> Outcome:
    signal.alarm(limit)
    try:
        return run_case(case, folder)
    except _Overrun:
        return Outcome(-1, float(limit), crash=f"over the {limit} s limit")
    finally:
        signal.alarm(0)


def drive(family: str, count: int, folder: Path, tally: Tally, keep: list[tuple[str, Case]],
          args: Any) -> None:
    """Run `count` cases of one family and add them to the tally."""

    @seed(args.seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(FAMILIES[family])
    def one(case: Case) -> None:
        outcome = _run(case, folder, args.limit)
        tally.cases += 1
        tally.exits[outcome.exit] += 1
        tally.errors += outcome.exit == 1
        tally.diagnostics += outcome.errors
        tally.diagnostics_unlocated += len(outcome.unlocated)
        if outcome.seconds > tally.slowest[0]:
            tally.slowest = (outcome.seconds, f"{family}: {_describe(case)}")
        why = ""
        if outcome.exit in (70, -1):
            tally.crashes.append(f"{family}: {outcome.crash} — {_describe(case)}")
            why = outcome.crash
        if outcome.seconds > SLOW_SECONDS:
            tally.slow += 1
            why = why or f"{outcome.seconds:.1f} s"
        if outcome.unlocated:
            tally.unlocated += 1
            tally.unlocated_codes.update(outcome.unlocated)
            why = why or "unlocated " + ",".join(outcome.unlocated)
        if why:
            keep.append((why, case))

    one()


def cli_sample(cases: list[Case], folder: Path) -> list[str]:
    """Run cases through `python -m sdxlc.cli check` and return those whose exit differs from in-process."""
    from fuzzing import _clean, _materialise

    mismatches = []
    for case in cases:
        expected = run_case(case, folder).exit
        made = _materialise(case, folder)
        try:
            argv = [sys.executable, "-m", "sdxlc.cli", "check", "--format", "json", "fuzz.sdx"]
            argv += [f"--set={s}" for s in case.sets]
            try:
                done = subprocess.run(argv, cwd=folder, capture_output=True, timeout=60,
                                      stdin=subprocess.DEVNULL)
                code = done.returncode
            except ValueError:  # an argument the OS cannot take (a NUL): no CLI run can get it either
                continue
        finally:
            _clean(made)
        if code != expected:
            mismatches.append(f"{_describe(case)}: in-process {expected}, CLI {code}")
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases in all, shared by the families")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cli", type=int, default=40, help="cases also run through the real CLI")
    parser.add_argument("--limit", type=int, default=60, help="hard limit per case in seconds")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--save", type=Path, default=None, help="folder for the failing cases (JSON)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz_recipes.md")
    args = parser.parse_args()

    def overrun(signum: int, frame: Any) -> None:
        signal.alarm(1)  # again in a second, should this one land where it is swallowed
        raise _Overrun()

    signal.signal(signal.SIGALRM, overrun)
    families = args.families.split(",")
    per_family = -(-args.cases // len(families))
    tallies: dict[str, Tally] = {}
    keep: list[tuple[str, Case]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdxlc-fuzz-") as temp:
        folder = sandbox(Path(temp) / "case")
        for family in families:
            tallies[family] = Tally()
            t0 = time.perf_counter()
            drive(family, per_family, folder, tallies[family], keep, args)
            seconds = time.perf_counter() - t0
            print(f"{family}: {tallies[family].cases} cases in {seconds:.0f} s", file=sys.stderr)
        sample = _cli_cases(args.cli, args.seed)
        mismatches = cli_sample(sample, folder)
    wall = time.perf_counter() - started
    if args.save is not None:
        _save(args.save, keep)
    args.out.write_text(_report(tallies, mismatches, len(sample), wall, args), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


def _cli_cases(count: int, number: int) -> list[Case]:
    """A few cases of every family, for the real command line."""
    cases: list[Case] = []
    each = max(1, count // len(FAMILIES))
    for family, strategy in FAMILIES.items():

        @seed(number)
        @settings(max_examples=each, database=None, phases=[Phase.generate], deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(case: Case) -> None:
            cases.append(case)

        del family
        collect()
    return cases[:count]


def _save(folder: Path, keep: list[tuple[str, Case]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, (why, case) in enumerate(keep):
        entry = {"why": why, "expect": None, **case.to_json()}  # `expect`: the exit once it is fixed
        (folder / f"{case.family}-{number:04d}.json").write_text(json.dumps(entry, indent=1) + "\n")


def _report(tallies: dict[str, Tally], mismatches: list[str], sampled: int, wall: float, args: Any) -> str:
    total = Tally()
    for t in tallies.values():
        total.cases += t.cases
        total.exits.update(t.exits)
        total.slow += t.slow
        total.unlocated += t.unlocated
        total.unlocated_codes.update(t.unlocated_codes)
        total.errors += t.errors
        total.diagnostics += t.diagnostics
        total.diagnostics_unlocated += t.diagnostics_unlocated
        total.crashes += t.crashes
        total.slowest = max(total.slowest, t.slowest)
    located = 100.0 * (total.errors - total.unlocated) / total.errors if total.errors else 100.0
    each = total.diagnostics - total.diagnostics_unlocated
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    machine = f"{os.cpu_count()} CPUs, {cpu}, Python {platform.python_version()}"
    lines = [
        "# fuzzing the compiler",
        "",
        f"{when}, {machine}. Command: `python bench/fuzz_recipes.py --cases {args.cases} --seed {args.seed}` "
        f"({wall / 60:.1f} min).",
        "",
        "| | must hold | measured |",
        "|---|---|---|",
        f"| cases | ≥ 10,000 | {total.cases} |",
        f"| exit 70 (an exception escaped) | 0 | {total.exits[70]} |",
        f"| cases over {SLOW_SECONDS:g} s | 0 | {total.slow} |",
        f"| errors located (`file:line:col`) | 100% | {located:.2f}% of {total.errors} cases with errors "
        f"({each} of {total.diagnostics} error diagnostics) |",
        f"| slowest case | | {total.slowest[0]:.2f} s — {total.slowest[1]} |",
        f"| CLI sample (`sdxlc check`, same exit as in-process) | all | {sampled - len(mismatches)} of "
        f"{sampled} |",
        "",
        "| family | cases | exit 0 | exit 1 | exit 70 | over 5 s | unlocated | slowest (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in tallies.items():
        lines.append(f"| {name} | {t.cases} | {t.exits[0]} | {t.exits[1]} | {t.exits[70] + t.exits[-1]} | "
                     f"{t.slow} | {t.unlocated} | {t.slowest[0]:.2f} |")
    if total.unlocated_codes:
        counts = ", ".join(f"{code} ×{n}" for code, n in total.unlocated_codes.items())
        lines += ["", "Unlocated errors by code: " + counts]
    if total.crashes:
        lines += ["", "Exit 70:", *[f"- {crash}" for crash in total.crashes[:30]]]
    if mismatches:
        lines += ["", "CLI mismatches:", *[f"- {m}" for m in mismatches[:20]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
