"""The `sdxlc` command line.

Exit codes: 0 success, 1 recipe errors, 2 usage errors, 3 the run failed, 70 an internal error.
Only `run` imports the training runtime (torch and friends), and only after the plan is resolved.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from sdxlc import __version__
from sdxlc.cli.exits import EXIT_INTERNAL, EXIT_OK, EXIT_RECIPE, EXIT_RUN, EXIT_USAGE
from sdxlc.cli.launch import main_process
from sdxlc.cli.quick_exit import leave
from sdxlc.cli.report import print_plan_warnings
from sdxlc.lang.diagnostics import render_text, to_json
from sdxlc.pipeline import Compiled, compile_recipe
from sdxlc.plan.contract import to_text
from sdxlc.plan.contract import write as write_plan_file

_recipe_arg = click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
_set_opt = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="PATH=VALUE",
    help="Override a recipe setting, e.g. --set optimizer.lr=5e-5 (repeatable).",
)
_profile_opt = click.option("--profile", default=None, metavar="NAME", help="Plan for this hardware profile.")
_format_opt = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="How to print diagnostics.",
)


# The commands defined outside this module, by the `sdxlc.cli` module that holds them: each module is
# imported the first time one of its commands is named (or help lists them), so `sdxlc plan` loads none.
_LAZY = {"fmt": "lang", "explain": "lang", "diff": "lang", "cache": "data", "gen": "gen", "runs": "runs",
         "lsp": "editor", "import": "kohya", "export": "kohya", "lora": "lora"}


def _load_commands(module: str) -> list[click.Command]:
    if module == "lang":
        from sdxlc.cli.lang import diff_command, explain_command, fmt_command

        return [fmt_command, explain_command, diff_command]
    if module == "data":
        from sdxlc.cli.data import cache_command

        return [cache_command]
    if module == "gen":
        from sdxlc.cli.gen import gen_command

        return [gen_command]
    if module == "runs":
        from sdxlc.cli.runs import runs_command

        return [runs_command]
    if module == "editor":
        from sdxlc.cli.editor import lsp_command

        return [lsp_command]
    if module == "kohya":
        from sdxlc.cli.kohya import export_group, import_group

        return [import_group, export_group]
    from sdxlc.cli.lora import lora_group

    return [lora_group]


class _LazyGroup(click.Group):
    """A group whose commands from other modules are imported when first named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(_LAZY))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            # An unknown name loads everything, so that click's "did you mean" sees every command.
            wanted = [_LAZY[cmd_name]] if cmd_name in _LAZY else sorted(set(_LAZY.values()))
            for module in wanted:
                for command in _load_commands(module):
                    self.commands.setdefault(str(command.name), command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sdxlc")
def main() -> None:
    """Compile SDXL training recipes into checked plans, and run them."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_set_opt
@_profile_opt
@_format_opt
def check(files: tuple[Path, ...], sets: tuple[str, ...], profile: str | None, fmt: str) -> None:
    """Report every problem in the recipe FILES; exit 1 if any is an error."""
    failed, everything = False, []
    for file in files:
        compiled = _compile(file, sets, profile)
        everything.extend(to_json(compiled.ordered()))
        if fmt == "text":
            _print_diagnostics(compiled)
            if not compiled.errors:
                click.echo(f"{file}: ok", err=True)
        failed = failed or bool(compiled.errors)
    if fmt == "json":
        click.echo(json.dumps(everything, indent=2))
    sys.exit(EXIT_RECIPE if failed else EXIT_OK)


@main.command()
@_recipe_arg
@_set_opt
@_profile_opt
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (the runtime's contract).")
@click.option("--all", "everything", is_flag=True,
              help="List every resolved value with its provenance, and the whole arithmetic.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    help="How to print diagnostics (json: a list on stdout, instead of the plan).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the plan JSON to this file.",
)
@click.option(
    "--exact",
    is_flag=True,
    help="Also simulate one training step on fake tensors (torch, no GPU) and compare with the estimate.",
)
def plan(
    recipe: Path,
    sets: tuple[str, ...],
    profile: str | None,
    as_json: bool,
    everything: bool,
    fmt: str,
    output: Path | None,
    exact: bool,
) -> None:
    """Resolve RECIPE: what the recipe set and what was chosen for it, step arithmetic, buckets, the
    memory, time and disk estimates (`--all`: every resolved value with its provenance)."""
    from sdxlc.cli.report import render_plan

    compiled = _compile(recipe, sets, profile)
    if fmt == "json":
        click.echo(json.dumps(to_json(compiled.ordered()), indent=2))
        sys.exit(EXIT_RECIPE if compiled.errors else EXIT_OK)
    _print_diagnostics(compiled)
    if compiled.plan is None:
        sys.exit(EXIT_RECIPE)
    if output is not None and compiled.manifest is not None:
        _refuse_a_runs_plan(output, compiled.plan["plan_hash"])
        try:
            write_plan_file(output, compiled.plan, compiled.manifest)
        except OSError as exc:
            click.echo(f"error: cannot write {output}: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_RUN)
    click.echo(to_text(compiled.plan) if as_json else render_plan(compiled.plan, everything), nl=False)
    if exact:
        from sdxlc.cli.exact import print_exact

        print_exact(compiled.plan)


def _refuse_a_runs_plan(path: Path, plan_hash: str) -> None:
    """`plan -o` never replaces the plan of a run that has results beside it (another plan's)."""
    from sdxlc.plan import layout

    old = layout.plan_hash_in(path) if path.is_file() else None
    if old is not None and old != plan_hash and layout.results(path.parent, old):
        click.echo(f"error: {path} is the plan of the run in {path.parent}; write this plan elsewhere "
                   "(`sdxlc run` writes it into the output folder itself)", err=True)
        sys.exit(EXIT_USAGE)


@main.command()
@click.argument("target", metavar="RECIPE|PLAN.json", type=click.Path(dir_okay=False, path_type=Path))
@_set_opt
@_profile_opt
@click.option(
    "--resume",
    "resume_from",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[latest|DIR]",
    help="Continue from the newest checkpoint under the output folder, or from DIR.",
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    type=click.Choice(["schedule", "numerics", "data"]),
    help="Accept these kinds of recipe changes when resuming (repeatable).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start afresh in an output folder that holds another run's results, moving them into "
    "<output>/previous/ first (nothing is deleted).",
)
def run(
    target: Path, sets: tuple[str, ...], profile: str | None, resume_from: str | None, allow: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Train a plan: a recipe is compiled and its plan.json written first; a plan file runs as it is.

    Every process of a run executes the written plan file: nothing is compiled again, and the images and
    model are checked against the hashes the plan recorded.
    """
    from sdxlc.cli.streams import tolerate_closed_output

    tolerate_closed_output()  # `sdxlc run … | head` must not stop the training halfway
    if resume_from is not None and not resume_from.strip():
        raise click.UsageError("--resume takes `latest` or a checkpoint folder, not an empty value")
    if resume_from is not None and overwrite:
        raise click.UsageError("--resume continues the run in the output folder; --overwrite moves it aside")
    from sdxlc.cli.launch import inside_launch

    if resume_from not in (None, "latest") and not Path(str(resume_from)).is_dir():
        raise click.UsageError(f"--resume {resume_from}: no such checkpoint folder (or `latest`)")
    plan_, plan_file, manifest = _plan_to_run(target, sets, profile)
    _check_trackers(plan_)
    _lock_output(plan_)  # before the folder is read, moved aside or written; held until this command ends
    # judged (resume) or claimed (fresh) before anything is written: a refusal changes nothing
    folder, rebuild = _resume(plan_, resume_from, frozenset(allow)) if resume_from else (None, False)
    if resume_from is None and not inside_launch():  # the launching process claimed the folder
        _claim(plan_, overwrite)
    if manifest is not None:
        plan_file = _write_plan(plan_, manifest, resuming=resume_from is not None)
        click.echo(f"compiled {target} → {plan_file}", err=True)
    from sdxlc.cli.launch import relaunch

    forwarded = [*(["--resume", resume_from] if resume_from else []),
                 *(arg for word in allow for arg in ("--allow", word))]
    launched = relaunch(plan_, ["run", str(plan_file), *forwarded])  # several processes: run the plan file
    if launched is not None:
        sys.exit(launched)
    _print_run_header(plan_)
    started = time.monotonic()
    try:
        from runtime.train.run import RunError, execute
    except ImportError as exc:  # the training stack is not installed
        click.echo(f"error: cannot start the runtime: {exc}", err=True)
        sys.exit(EXIT_RUN)
    try:
        result = execute(plan_, plan_file=plan_file, resume=folder, rebuild_schedule=rebuild)
    except RunError as exc:
        click.echo(f"error: the run failed: {exc}", err=True)
        sys.exit(EXIT_RUN)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the last completed save is intact", err=True)
        sys.exit(EXIT_RUN)
    _print_result(plan_, result, time.monotonic() - started)


def _check_trackers(plan: dict[str, Any]) -> None:
    """A tracker the plan names must import here, before the run writes anything (exit 3)."""
    if not plan["log"].get("trackers"):
        return
    from runtime import RunError
    from runtime.train.trackers import check_trackers

    try:
        check_trackers(plan)
    except RunError as exc:
        click.echo(f"error: the run failed: {exc}", err=True)
        sys.exit(EXIT_RUN)


def _plan_to_run(
    target: Path, sets: tuple[str, ...], profile: str | None
) -> tuple[dict[str, Any], Path, Any]:
    """The sealed plan to execute: a plan file as it is (checked against the plan schema and its own
    hash; no manifest to write), or a recipe compiled (its manifest returned, to be written with it)."""
    from sdxlc.plan import contract

    if contract.is_plan_file(target):
        if sets or profile:
            raise click.UsageError("--set and --profile change a recipe; a plan file runs as it is")
        try:
            plan_ = contract.read(target)
        except contract.PlanError as exc:
            click.echo(f"error: {target}: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        if main_process():  # every process of a launched run reads the plan file; one says so
            click.echo(f"running plan {target} ({plan_['plan_hash'][:12]})", err=True)
        return plan_, target, None
    compiled = _compile(target, sets, profile)
    _print_diagnostics(compiled)
    if compiled.plan is None or compiled.manifest is None:
        sys.exit(EXIT_RECIPE)
    return compiled.plan, target, compiled.manifest


def _write_plan(plan_: dict[str, Any], manifest: Any, resuming: bool) -> Path:
    """`<output>/plan.json` (`plans/resume-N.json` for a resumed segment) and its manifest."""
    from sdxlc.plan import contract, layout

    plan_file = layout.plan_file_for(Path(plan_["output"]["dir"]), plan_["plan_hash"], resuming)
    try:
        contract.write(plan_file, plan_, manifest)
    except OSError as exc:
        click.echo(f"error: cannot write {plan_file}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_RUN)
    return plan_file


def _lock_output(plan_: dict[str, Any]) -> None:
    """One running run per output folder (sdxlc/plan/lock.py): a second run, fresh, `--overwrite` or
    `--resume`, stops here while another one holds it. The main process takes it; the processes a
    launched run starts share their launcher's."""
    if not main_process():
        return
    from sdxlc.plan import lock

    out = Path(plan_["output"]["dir"])
    with _output_refusals(lambda exc: f"cannot lock the output folder {out}: {exc.strerror or exc}"):
        held = lock.acquire(out)
    click.get_current_context().call_on_close(held.release)


@contextmanager
def _output_refusals(failed: Callable[[OSError], str]) -> Iterator[None]:
    """An output folder in use (another run's results, a running run) is exit 2 with its message; an
    OSError is exit 3 with `failed(exc)`."""
    from sdxlc.plan import layout

    try:
        yield
    except layout.OutputInUse as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        click.echo(f"error: {failed(exc)}", err=True)
        sys.exit(EXIT_RUN)


def _claim(plan_: dict[str, Any], overwrite: bool) -> None:
    """Another run's results in the output folder stop a fresh run, unless --overwrite moves them aside."""
    from sdxlc.plan import layout

    with _output_refusals(lambda exc: f"cannot move the earlier results aside: {exc}"):
        read = (plan_["method"].get("init_from"), plan_["model"].get("source"))
        inputs = tuple(Path(given) for given in read if isinstance(given, str) and Path(given).is_absolute())
        aside = layout.claim(Path(plan_["output"]["dir"]), plan_["plan_hash"], overwrite, inputs)
    if aside is not None:
        click.echo(f"moved the earlier run's results to {aside}", err=True)


def _print_result(plan_: dict[str, Any], result: Any, seconds: float) -> None:
    if not main_process():
        return
    click.echo(f"done in {seconds:.1f} s")
    label = {"lora": "LoRA:", "finetune": "model:", "embedding": "embedding:",
             "lllite": "LLLite:"}[plan_["method"]["kind"]]
    click.echo(f"  {label:<8} {result.lora_path}")
    if getattr(result, "ema_path", None) is not None:
        click.echo(f"  EMA:     {result.ema_path}")
    if result.diffusers_path is not None:
        click.echo(f"  folder:  {result.diffusers_path}")
    click.echo(f"  plan:    {result.plan_path}")
    for sample in result.samples:
        click.echo(f"  sample:  {sample}")
    for grid in result.grids:
        click.echo(f"  grid:    {grid}")
    if result.before_after is not None:
        click.echo(f"  before/after: {result.before_after}")
    if result.logs is not None:
        click.echo(f"  logs:    {result.logs}  (tensorboard --logdir {result.logs})")


def _resume(plan_: dict[str, Any], which: str, allow: frozenset[str]) -> tuple[Path, bool]:
    """The checkpoint to continue from, after judging what changed since it was written."""
    from sdxlc.plan import layout
    from sdxlc.tools import resume

    skipped: list[str] = []
    try:
        folder = layout.find(Path(plan_["output"]["dir"]), which, skipped)
        old = layout.checkpoint_plan(folder)
    except layout.ResumeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_RUN)
    for line in skipped if main_process() else ():
        click.echo(line, err=True)
    if old["output"]["name"] != plan_["output"]["name"]:
        click.echo(f"error: {folder} is a checkpoint of `{old['output']['name']}`, not of "
                   f"`{plan_['output']['name']}`: another recipe's run shares this output folder; "
                   "give each recipe its own `output \"…\"`", err=True)
        sys.exit(EXIT_RECIPE)
    done = _steps_done(folder)
    if done >= plan_["training"]["total_steps"]:
        click.echo(f"error: {folder} is at step {done} of {plan_['training']['total_steps']}: nothing left "
                   "to train (to train longer, raise `steps` and add `--allow schedule`)", err=True)
        sys.exit(EXIT_RUN)
    verdict = resume.judge(old, plan_, allow)
    if not verdict.ok:
        click.echo(
            f"error: cannot resume from {folder}\n{verdict.explain(layout.last_artifact(folder, old))}",
            err=True,
        )
        sys.exit(EXIT_RECIPE)
    if not main_process():
        return folder, verdict.rebuild_schedule
    click.echo(
        f"resuming from {folder}"
        + (" with the schedule rebuilt from its step" if verdict.rebuild_schedule else "")
    )
    for change in verdict.accepted + verdict.allowed:
        if change.kind not in ("cosmetic", "estimate"):
            click.echo(f"  accepted change: {change.path}: {change.old!r} → {change.new!r} ({change.kind})")
    return folder, verdict.rebuild_schedule


@main.command()
@click.argument("name", type=click.Choice(["recipe", "plan", "profile"]), default="recipe")
def schema(name: str) -> None:
    """Print a JSON Schema (recipe, plan or profile), for editors and tools."""
    from sdxlc.plan.schemas import load_schema

    click.echo(json.dumps(load_schema(name), indent=2))


@main.command()
def profiles() -> None:
    """List the hardware profiles."""
    from sdxlc.resolve.profiles import list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        click.echo(f"{name:<18} {p.usable_vram_bytes / 2**30:>6.1f} GiB  {p.title}")


def _compile(recipe: Path, sets: tuple[str, ...], profile: str | None) -> Compiled:
    if not recipe.is_file():
        raise click.BadParameter(f"no such recipe file: {recipe}", param_hint="RECIPE")
    return compile_recipe(recipe, sets, profile)


def _print_diagnostics(compiled: Compiled) -> None:
    if compiled.diagnostics:
        click.echo(render_text(compiled.ordered(), compiled.sources, color=sys.stderr.isatty()), err=True)


def _method_text(method: dict[str, Any]) -> str:
    targets = "+".join(method["targets"])
    if method["kind"] == "finetune":
        return f"full fine-tune of {targets}"
    if method["kind"] == "embedding":
        return f"embedding {method['token']} ({method['vectors']} vectors)"
    if method["kind"] == "lllite":
        return f"ControlNet-LLLite cond_dim {method['cond_dim']} mlp_dim {method['mlp_dim']}"
    adapter = {"loha": "LoHa", "lokr": "LoKr"}.get(str(method.get("adapter")), "LoRA")
    if method.get("dora"):
        adapter = "DoRA"
    factor = f" factor {method['factor']}" if method.get("factor") is not None else ""
    return f"{adapter} rank {method['rank']}{factor} ({targets})"


def _steps_done(folder: Path) -> int:
    from sdxlc.plan import layout

    try:
        return int(json.loads((folder / layout.STATE_FILE).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # the checkpoint is verified; the runtime reports what it cannot read


def _print_run_header(plan_: dict[str, Any]) -> None:
    """The plan's warnings and a two-line summary, once per run: by the main process of a launched one."""
    if not main_process():
        return
    print_plan_warnings(plan_)
    est, t = plan_["estimate"], plan_["training"]
    click.echo(
        f"plan {plan_['plan_hash'][:12]}: {_method_text(plan_['method'])} on {plan_['model']['source']}, "
        f"{t['total_steps']} steps × batch {t['batch_size']}, {plan_['data']['images']} images"
    )
    click.echo(
        f"estimate: {est['vram_bytes'] / 2**30:.2f} GiB of {est['budget_bytes'] / 2**30:.1f} GiB "
        f"on {plan_['hardware']['name']} ({est['verdict'].replace('_', ' ')}), "
        f"about {est['total_seconds']:.0f} s"
    )


def entry() -> None:
    """The console script: `main`, with any internal error turned into a one-line bug report."""
    try:
        main(standalone_mode=True)
    except SystemExit as done:
        leave(done.code)  # after a run: no interpreter teardown of the training stack
    except Exception as exc:  # a bug in sdxlc, never a recipe problem: those are diagnostics
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        place = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where is not None else ""
        click.echo(f"sdxlc {__version__}: internal error: {type(exc).__name__}: {exc}{place} — "
                   "please report it with the recipe", err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    entry()
