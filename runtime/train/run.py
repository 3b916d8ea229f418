"""Execute a plan: setup_model → setup_data → train → finish.

The plan is the whole truth: every setting used here is read from it, none is decided here.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import set_seed

from runtime import RunError, saving, timestamp
from runtime.gen import compare, sample
from runtime.methods import lora
from runtime.methods import registry as methods
from runtime.model import load as models
from runtime.model.fp8 import apply_base_fp8
from runtime.model.offload import apply_offload
from runtime.train import checkpoint, loop, validate
from runtime.train import data as datamod
from runtime.train import ema as emamod
from runtime.train.compiling import check_compiler
from runtime.train.inputs import check_model
from runtime.train.progress import Progress
from runtime.train.tblog import TensorBoardLog, open_log
from runtime.train.trackers import Trackers, check_trackers, open_trackers
from sdxlc.plan import contract as plans
from sdxlc.plan import layout, lock
from sdxlc.plan.files import write_atomic
from sdxlc.plan.manifest import Manifest
from sdxlc.plan.sums import write_artifact_sum


@dataclass
class RunResult:
    """What a run produced, and how its loss ended."""

    lora_path: Path  # the trained artifact: a LoRA, a single-file checkpoint or an embedding
    plan_path: Path
    diffusers_path: Path | None = None  # a fine-tune's diffusers folder, when the plan asks for one
    samples: list[Path] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)  # one per sampling step: all prompts side by side
    before_after: Path | None = None  # the step-0 grid above the final one, when the plan samples before
    logs: Path | None = None  # the TensorBoard folder, when the plan turns it on
    checkpoints: list[Path] = field(default_factory=list)
    ema_path: Path | None = None  # the final EMA artifact, with `training.ema`
    final_loss: float = float("nan")
    average_loss: float = float("nan")
    steps: int = 0
    seconds: float = 0.0


def check_plan(plan: dict[str, Any]) -> None:
    """The plan must satisfy schema/plan.schema.json and carry its own hash."""
    try:
        plans.check(plan)
    except plans.PlanError as exc:
        raise RunError(str(exc)) from exc


def check_device(plan: dict[str, Any]) -> None:
    """A plan for a CUDA profile needs CUDA here (8-bit and paged optimizers, bf16, the memory budget)."""
    import torch

    if plan["hardware"]["device"] == "cuda" and not torch.cuda.is_available():
        raise RunError(
            f"this plan is for {plan['hardware']['name']} (CUDA) but this machine has no CUDA device "
            f"(torch {torch.__version__}): plan it with `--profile cpu` or `profile auto`, or install a CUDA "
            "build of torch"
        )


def write_plan(plan: dict[str, Any], manifest: Manifest, resuming: bool = False) -> Path:
    """The plan that runs with its sample manifest (`plan.json`; a resumed segment's plan goes to
    `plans/resume-N.json`, the original is never replaced), and (in `recipe/`) the recipe files it was
    compiled from, where they are still the bytes the plan recorded."""
    out = Path(plan["output"]["dir"])
    path = plans.write(layout.plan_file_for(out, plan["plan_hash"], resuming), plan, manifest)
    for source in plan["sources"]:
        file = Path(source["file"])
        git = source.get("git")
        name = Path(git["path"]) if git else Path(file.name)
        if file.is_file():
            data = file.read_bytes()
            if hashlib.sha256(data).hexdigest() == source["sha256"]:
                write_atomic(out / "recipe" / name, data)
    return path


def lineage_after(lineage: list[str], old: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """The plans that trained a resumed run's weights: the checkpoint's, then this one if it differs."""
    chain = list(lineage) or [old["plan_hash"]]  # a checkpoint of an older sdxlc records none
    return chain if chain[-1] == plan["plan_hash"] else [*chain, plan["plan_hash"]]


def claim_output(plan: dict[str, Any], resuming: bool) -> None:
    """A fresh run never replaces another run's results (`sdxlc run --overwrite` moves them aside first)."""
    if resuming:
        return
    try:
        layout.claim(Path(plan["output"]["dir"]), plan["plan_hash"], overwrite=False)
    except layout.OutputInUse as exc:
        raise RunError(str(exc)) from exc


def hold_output(plan: dict[str, Any], main: bool) -> lock.OutputLock:
    """One running run per output folder (sdxlc/plan/lock.py): held until the run returns or fails (the
    `sdxlc run` that started it already holds it). A launched process that is not the main one holds it
    shared with its launcher (lock.join), so a new run is refused while it lives, even after its launcher
    is killed."""
    out = Path(plan["output"]["dir"])
    try:
        return lock.acquire(out) if main else lock.join(out)
    except layout.OutputInUse as exc:
        raise RunError(str(exc)) from exc
    except OSError as exc:
        raise RunError(f"cannot lock the output folder {plan['output']['dir']}: {exc}") from exc


def setup_model(plan: dict[str, Any]) -> models.Models:
    """Load and place the base model, then make the method's parameters trainable (runtime/methods/)."""
    loaded = models.setup_model(plan)
    methods.for_plan(plan).attach(loaded.pipe)
    apply_base_fp8(loaded.pipe, plan)  # after the method: peft casts new layers to the base layer's dtype
    apply_offload(loaded.pipe, plan)
    return loaded


def setup_data(plan: dict[str, Any], manifest: Manifest | None = None) -> datamod.TrainData:
    return datamod.setup_data(plan, manifest)


class Run:
    """The state shared by the step hooks: where to save, when to sample, what was written."""

    def __init__(
        self,
        plan: dict[str, Any],
        loaded: models.Models,
        progress: Progress,
        log: TensorBoardLog | None = None,
        trackers: Trackers | None = None,
    ) -> None:
        self.plan, self.models, self.progress, self.log = plan, loaded, progress, log
        self.scalars = [sink for sink in (log, trackers) if sink is not None]  # where loss and lr go
        self.method = methods.for_plan(plan)
        self.stats = loop.TrainStats()  # filled in by the loop; what a checkpoint saves
        self.validator: validate.Validator | None = None  # with `validate` (runtime/train/validate.py)
        self.started = timestamp()
        self.clock = time.monotonic()
        self.out = Path(plan["output"]["dir"])
        self.result = RunResult(
            lora_path=self.out / f"{plan['output']['name']}.safetensors",
            plan_path=self.out / "plan.json",
            logs=log.folder if log is not None else None,
        )

    def save(self, path: Path, step: int, epoch: int) -> Path:
        """The method's artifact, then its `.sha256` beside it (what `sdxlc runs verify` checks)."""
        with saving(path):
            written = self.method.save(path, self.models.pipe, step, epoch, self.started)
            write_artifact_sum(written)
        if self.stats.ema is not None:
            self.save_ema(path, step, epoch)
        return written

    def save_ema(self, path: Path, step: int, epoch: int) -> Path:
        """The EMA weights as the method's artifact, `<name>-ema…` beside `path` (runtime/train/ema.py)."""
        ema = self.stats.ema
        file = emamod.ema_path(path, self.plan["output"]["name"])
        with saving(file), ema.swapped(), emamod.marked(ema):
            write_artifact_sum(self.method.save(file, self.models.pipe, step, epoch, self.started))
        if path == self.result.lora_path:
            self.result.ema_path = file
        return file

    @property
    def main(self) -> bool:
        """Only the main process writes files (every process trains)."""
        return bool(self.models.accelerator.is_main_process)

    def on_step(self, step: int, epoch: int) -> None:
        self.progress.advance(step)
        if not self.main:
            return
        if self.validator is not None and validate.due(self.plan, step):
            self.validate(step)
        total, name = self.plan["training"]["total_steps"], self.plan["output"]["name"]
        every = self.plan["save"]["every_steps"]
        if every and step % every == 0 and step < total:
            path = self.save(self.out / f"{name}-step{step:06d}.safetensors", step, epoch)
            state = self.save_state()
            lora.prune_checkpoints(self.out, name, self.plan["save"]["keep"])
            if self.stats.ema is not None:
                lora.prune_checkpoints(self.out, f"{name}-ema", self.plan["save"]["keep"])
            self.result.checkpoints = [p for p in [*self.result.checkpoints, path] if p.exists()]
            self.progress.message(f"saved {path} and the training state {state.name}")
        every = self.plan["sample"]["every_steps"]
        if every and step % every == 0 and step < total:
            self.write_samples(step)

    def save_state(self) -> Path:
        """The whole training state at the current step, atomically; older states pruned after."""
        stats = self.stats
        position = checkpoint.Position(stats.steps, stats.next_epoch, stats.next_batch, list(stats.losses),
                                       list(self.method.lineage))
        with saving(checkpoint.folder_for(self.out, stats.steps)):
            folder = checkpoint.save_state(
                self.out, position, self.plan, self.method.trainable_state(self.models.pipe), stats.optimizer,
                stats.schedule,
                self.models.accelerator.scaler,
                stats.ema.state() if stats.ema is not None else None,
            )
        checkpoint.prune(self.out, self.plan["save"]["keep"])
        return folder

    def write_samples(self, step: int) -> None:
        with saving(self.out / "samples", "the samples written before are intact"), \
                emamod.weights(self.stats.ema):  # samples show the EMA weights with `training.ema`
            files = sample.write_samples(self.models, self.plan, step, self.quiet, self.log)
        self.result.samples += files.images
        self.result.grids += [files.grid] if files.grid is not None else []

    def validate(self, step: int) -> None:
        """The validation loss after `step`: to the progress line, TensorBoard and the trackers."""
        assert self.validator is not None
        values = self.validator.losses(self.stats.ema)
        self.progress.validation = values
        self.progress.message(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        for sink in self.scalars:
            sink.values(step, values)

    def on_loss(self, step: int, loss: float, lr: float) -> None:
        self.progress.step(step, loss, lr)
        for sink in self.scalars:
            sink.loss(step, loss, self.progress.average)

    def on_metrics(self, step: int, grad_norm: float | None, groups: list[dict[str, Any]]) -> None:
        for sink in self.scalars:
            sink.optimizer(step, grad_norm, groups)

    @property
    def quiet(self) -> bool:
        return not self.progress.interactive


def train(
    plan: dict[str, Any],
    loaded: models.Models,
    data: datamod.TrainData,
    run: Run,
    resume: loop.Resume | None = None,
) -> loop.TrainStats:
    try:
        return loop.train(
            plan,
            loaded,
            data,
            on_step=run.on_step,
            on_loss=run.on_loss,
            resume=resume,
            stats=run.stats,
            on_message=run.progress.message,
            # on every process alike: measuring the norm may be a collective operation
            on_metrics=run.on_metrics if plan["log"]["tensorboard"] or plan["log"]["trackers"] else None,
        )
    finally:
        run.progress.close()


def finish(run: Run, stats: loop.TrainStats) -> RunResult:
    """Save the final LoRA, render the final samples and fill in the result."""
    result = run.result
    run.models.accelerator.wait_for_everyone()
    if run.main:
        run.save(result.lora_path, stats.steps, stats.epoch)
        run.save_state()
        run.progress.message(f"saved {result.lora_path}")
        with saving(result.lora_path.with_suffix("")):
            result.diffusers_path = run.method.save_final(result.lora_path, run.models.pipe)
        if result.diffusers_path is not None:
            run.progress.message(f"saved {result.diffusers_path}")
        run.write_samples(stats.steps)
        if run.plan["sample"]["before"]:
            result.before_after = compare.write_before_after(run.plan, stats.steps)
    result.final_loss, result.average_loss, result.steps = stats.final_loss, stats.average_loss, stats.steps
    result.seconds = time.monotonic() - run.clock
    return result


def execute(
    plan: dict[str, Any], *, plan_file: Path | None = None, progress: bool = True, resume: Path | None = None,
    rebuild_schedule: bool = False,
) -> RunResult:
    """Run the plan and write its artifacts under output.dir.

    `plan_file`: where the plan was read from; its sample manifest is looked for beside it first, then
    in the cache folder's store.
    `resume`: a checkpoint folder (`<output.dir>/checkpoints/step-NNNNNN`) to continue from exactly;
    `rebuild_schedule` builds the plan's lr schedule anew from the checkpoint's step instead of
    restoring the old one (for a resume whose schedule changed).
    """
    return run_plan(plan, plan_file=plan_file, progress=progress, resume=resume,
                    rebuild_schedule=rebuild_schedule)[0]


def run_plan(
    plan: dict[str, Any], *, plan_file: Path | None = None, progress: bool = True, resume: Path | None = None,
    rebuild_schedule: bool = False,
) -> tuple[RunResult, models.Models]:
    """`execute`, also handing back the trained in-memory model (for checks against the saved file)."""
    check_plan(plan)
    check_device(plan)
    check_compiler(plan["training"].get("compile"), plan["hardware"]["device"])
    check_trackers(plan)  # a missing tracker package fails before anything is written
    manifest = datamod.load_manifest(plan, plan_file)
    check_model(plan)
    main = PartialState(cpu=plan["hardware"]["device"] == "cpu").is_main_process
    data = setup_data(plan, manifest)  # every input checked before anything is written
    held = hold_output(plan, main)  # before the folder is read, claimed or written
    log: TensorBoardLog | None = None
    trackers = None
    try:
        restart = loop.Resume(checkpoint.load_state(resume), rebuild_schedule) if resume is not None else None
        if main:
            claim_output(plan, resuming=resume is not None)
            with saving(Path(plan["output"]["dir"]), "nothing was trained yet"):
                write_plan(plan, manifest, resuming=resume is not None)
        log = open_log(plan, main)  # before the model: a missing tensorboard package fails fast
        set_seed(plan["training"]["seed"])
        trackers = open_trackers(plan, main)
        loaded = setup_model(plan)
        training = plan["training"]
        reporter = Progress(
            training["total_steps"],
            plan["log"]["every_steps"],
            enabled=progress and main,
            device=loaded.device.type,
            history=restart.saved.position.losses if restart is not None else (),
        )
        run = Run(plan, loaded, reporter, log, trackers)
        run.validator = validate.for_plan(plan, loaded, run.method, reporter.message)
        if restart is not None:
            run.method.lineage = lineage_after(restart.saved.position.lineage, restart.saved.plan, plan)
        if restart is None and plan["sample"]["before"] and run.main:
            run.write_samples(0)  # step 0: what the base model draws before any training
        stats = train(plan, loaded, data, run, restart)
        return finish(run, stats), loaded
    finally:
        for sink in (log, trackers):
            if sink is not None:
                sink.close()
        held.release()


__all__ = ["RunError", "RunResult", "execute", "finish", "run_plan", "setup_data", "setup_model", "train"]
