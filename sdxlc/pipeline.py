"""The compiler's stages in order: lower → structural check → resolve → semantic checks → estimate → seal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxlc.check.paths import dangerous_paths
from sdxlc.check.semantic import run_checks
from sdxlc.check.structure import structural as structure
from sdxlc.estimate.analytic import estimate
from sdxlc.estimate.cache_warning import cache_ram_warning
from sdxlc.estimate.disk import disk_bytes
from sdxlc.estimate.fit import Applied, mark, next_lever, supersede
from sdxlc.estimate.levers import enough, levers
from sdxlc.estimate.lowvram import MOOT
from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.lang.layers import Layers
from sdxlc.lang.lower import load_recipe
from sdxlc.lang.migrate import migrate
from sdxlc.plan.contract import seal
from sdxlc.plan.manifest import Manifest, store
from sdxlc.resolve.core import resolve
from sdxlc.resolve.profiles import Profile


@dataclass
class Compiled:
    plan: dict[str, Any] | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    profile: Profile | None = None
    manifest: Manifest | None = None  # the sample manifest the sealed plan names (`data.manifest`)

    def ordered(self) -> list[Diagnostic]:
        """Diagnostics in source order (those without a place last), as editors and readers expect."""

        def key(d: Diagnostic) -> tuple[int, str, int, int]:
            if d.span is None:
                return (1, "", 0, 0)
            return (0, d.span.file, d.span.line, d.span.column)

        return sorted(self.diagnostics, key=key)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def compile_recipe(
    path: Path,
    sets: tuple[str, ...] = (),
    profile: str | None = None,
    unsaved: Mapping[Path, str] | None = None,
) -> Compiled:
    """Compile a recipe file into a sealed plan; on any error the plan is None and every error is listed.
    `unsaved` holds an editor's texts of recipe files by resolved path, read instead of those files.

    With `fit auto`, memory levers the recipe left open are applied one by one (cheapest first)
    until the run fits; with `fit strict` an over-budget plan is an error that lists them.
    """
    applied: list[Applied] = []
    rejected: list[Applied] = []  # levers whose settings the recipe cannot take (a compile error)
    pinned: set[str] | None = None
    result, plan, layers = _compile_once(path, sets, profile, unsaved)
    while True:
        hardware = result.profile
        if plan is None or layers is None or hardware is None:
            return result
        auto = layers.doc.get("fit") == "auto"
        if pinned is None:  # what the recipe layers set, before the solver added anything
            pinned = set(layers.origins)
        if not plan["estimate"]["fits"] and auto:
            lever = next_lever(levers(plan, hardware), pinned, applied + rejected)
            if lever is not None:
                solved = sets + tuple(s for a in (*applied, lever) for s in a.sets())
                trial = _compile_once(path, solved, profile, unsaved)
                if trial[1] is not None and not trial[0].errors:
                    applied = supersede(applied, lever)
                    result, plan, layers = trial
                else:
                    rejected.append(lever)
                continue
        mark(plan, applied)
        result.diagnostics.extend(_fit(plan, hardware, layers, auto))
        if not result.errors:
            result.plan = seal(plan)
            if result.manifest is not None:
                store(result.manifest, plan["data"]["cache"]["dir"])
        return result


def _compile_once(
    path: Path, sets: tuple[str, ...], profile: str | None, unsaved: Mapping[Path, str] | None = None
) -> tuple[Compiled, dict[str, Any] | None, Layers | None]:
    """One pass through the stages; the plan comes back estimated but not sealed (None on errors)."""
    lowered = load_recipe(path, sets, unsaved)
    lowered.doc, migrated = migrate(lowered.doc)
    result = Compiled(None, list(lowered.diagnostics), dict(lowered.sources))
    if lowered.top not in lowered.sources:  # the recipe itself cannot be read: nothing else to say
        return result, None, None
    structural = structure(lowered, result.diagnostics) + dangerous_paths(lowered, path)
    result.diagnostics.extend(structural)
    if any(d.severity == "error" for d in structural):
        return result, None, None
    # Statements the lowering rejected were dropped: resolve and check the rest, so that every
    # error of the file is reported in one run, but never emit a plan.
    resolution = resolve(lowered, path, profile)
    result.diagnostics.extend(resolution.diagnostics)
    result.profile = resolution.profile
    result.manifest = resolution.manifest
    plan = resolution.plan
    if plan is None or resolution.profile is None:
        return result, None, None
    plan["warnings"] += migrated
    family = "tiny" if plan["model"]["kind"] == "tiny" else "sdxl"
    layers = Layers(lowered, family)
    result.diagnostics.extend(run_checks(plan, layers))
    if result.errors:
        return result, None, None
    plan["estimate"] = estimate(plan, resolution.profile)
    plan["estimate"]["disk_bytes"] = disk_bytes(plan)
    result.diagnostics.extend(cache_ram_warning(plan, resolution.profile, layers))  # GPU: host RAM (SDX0617)
    return result, plan, layers


def _fit(plan: dict[str, Any], profile: Profile, layers: Layers, auto: bool) -> list[Diagnostic]:
    est = plan["estimate"]
    if est["fits"]:
        return []
    need, have = _gib(est["vram_bytes"]), _gib(est["budget_bytes"])
    tried = " even after `fit auto` used every lever the recipe left open" if auto else ""
    spills = (" (this card's driver would not stop it: it would spill into system RAM and run 10-100x "
              "slower)") if est.get("spills") else ""
    return [
        make(
            "SDX0610",
            f"the run needs about {need} but {profile.title} has {have}{tried}{spills}",
            layers.place("profile", "model.source"),
            help=_fit_help(plan, profile),
        )
    ]


def _fit_help(plan: dict[str, Any], profile: Profile) -> str:
    """Which levers would make an over-budget plan fit, with what each saves. Settings `fit auto` already
    moved are not moved again."""
    solved = {path for path, origin in plan["provenance"].items() if origin.get("source") == "solver"}
    options = [lever for lever in levers(plan, profile) if not solved & set(lever["changes"])]
    if not options:
        return "pick a larger profile"
    chosen, peak = enough(plan, profile, None, frozenset(solved))
    if chosen:
        names = {lever["name"] for lever, _ in chosen}
        rest = [_lever_text(lever, lever["saves_bytes"]) for lever in options
                if lever["name"] not in names and MOOT.get(lever["name"]) not in names]
        return (f"these together bring it to about {_gib(peak)}: "
                + "; ".join(_lever_text(lever, saves) for lever, saves in chosen)
                + (". Other levers: " + "; ".join(rest[:3]) if rest else ""))
    return (f"even every lever together leaves about {_gib(peak)}, so pick a larger profile; the levers: "
            + "; ".join(_lever_text(lever, lever["saves_bytes"]) for lever in options[:4]))


def _lever_text(lever: dict[str, Any], saves: int) -> str:
    amount = f"{saves / 2**30:.2f} GiB" if saves < 2**30 // 10 else _gib(saves)
    return f"{lever['description']} (−{amount})"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
