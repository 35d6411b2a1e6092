"""The training loop: events out, commands in. No Qt here; the GUI runs this on a QThread.

trainer = Trainer(project, "runs/first", on_event=print)
result = trainer.run()          # a Finished event

Setup is in setup.py, the checkpoint format in checkpoint.py, the line logs in logbook.py.
The freeze plan follows the project's timeline (core/timeline.py); edits sent through
`control` join that timeline at the step they take effect and are written into the run's
project.json, so `freezer-app train RUN/project.json` repeats the run exactly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import re
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from freezer_app.core import timeline
from freezer_app.core.catalog import META_LABELS, META_MODEL, META_NUM_CLASSES, TORCHVISION
from freezer_app.core.data import Batch, DataReport
from freezer_app.core.errors import FreezerError
from freezer_app.core.events import (
    EpochEvent,
    ErrorEvent,
    EventSink,
    Finished,
    FrozenCheckEvent,
    LogEvent,
    PausedEvent,
    PlanApplied,
    RunControl,
    RunStarted,
    StepEvent,
    TelemetryEvent,
)
from freezer_app.core.files import (
    WriteError,
    link_or_copy,
    remove_stale_temp_files,
    save_safetensors,
)
from freezer_app.core.freeze import Edit, FreezePlan, apply_mask, resolve
from freezer_app.core.optim import inner_optimizer, restrict_to_trainable
from freezer_app.core.project import Project, ResumeRecord, apply_resume_changes
from freezer_app.core.run_folder import RunFolder, RunLock
from freezer_app.core.telemetry import FrozenCheck, PendingRecord
from freezer_app.core.torchvision_compat import transform_input_of
from freezer_app.core.train import checkpoint
from freezer_app.core.train.distributed import Distributed, is_collective_error
from freezer_app.core.train.logbook import Logbook, NullLogbook
from freezer_app.core.train.setup import RunParts, is_oom, prepare, total_steps
from freezer_app.core.train.trackers import Trackers
from freezer_app.core.train.writer import BackgroundWriter
from freezer_app.core.trust import CodeTrust


class _StopRequested(Exception):
    """Stop at this step boundary, keeping a mid-epoch checkpoint to resume from."""

    def __init__(self, reason: str = "stopped") -> None:
        super().__init__(reason)
        self.reason = reason


class _NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss {value} at step {step}")
        self.step = step
        self.value = value


def logits_of(output: Any) -> torch.Tensor:
    """The class scores of a model's output: some return a named tuple (e.g. `.logits`)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}, not a tensor of class scores")


class Trainer:
    """One training run of a project into a run folder.

    Commands (stop, pause/resume, a new freeze plan) arrive through `control` and take effect
    at the next step boundary. Setup problems (bad data, unknown model, a timeline selector
    that matches nothing, offline weights) raise FreezerError before anything is written;
    problems during training (NaN loss, out of memory) end the run with a Finished event
    whose reason is "error".

    resume_changes: settings given with `--resume` ({"train.epochs": 10}); only those the
    schema marks resumable are accepted.
    trust: whether a factory .py the project's model names may run (core/trust.py; by default
    one the model string names itself does, one named by a file, or by the checkpoint being
    resumed, does not).
    dist: this process's rank of a torch.distributed run (distributed.py). Every rank runs
    this same loop on its share of each global batch; rank 0 alone writes the run folder and
    emits events, and commands given to rank 0's `control` (a stop to any rank's) reach every
    rank at the same step boundary. A resume reads the checkpoint on every rank, so the run
    folder must be visible to all of them (a shared filesystem across machines).
    """

    def __init__(
        self,
        project: Project,
        run_dir: str | Path,
        on_event: EventSink | None = None,
        control: RunControl | None = None,
        resume: bool = False,
        report: DataReport | None = None,
        resume_changes: dict[str, Any] | None = None,
        trust: CodeTrust | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.project = project
        self.trust = trust
        self.dist = dist
        self.main = dist is None or dist.main  # the process that writes and reports
        self.folder = RunFolder(run_dir)
        self.lock = RunLock(self.folder.path)
        self.writer = BackgroundWriter()
        self.log = Logbook(self.folder, self.writer) if self.main else NullLogbook()
        self.emit: EventSink = (on_event if self.main else None) or (lambda event: None)
        self.control = control or RunControl()
        self.resume = resume
        self.resume_changes = dict(resume_changes or {})
        self.report = report
        self.parts: RunParts | None = None
        self.model: nn.Module | None = None
        self.step = 0
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0
        self.best: dict[str, Any] = {"metric": None, "epoch": None, "val_acc": None}
        self.stale_epochs = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_count = 0
        self.last_val_acc: float | None = None
        self.last_check: FrozenCheck | None = None
        self.last_good_checkpoint_epoch: int | None = None
        self.last_checkpoint_step = 0  # of the last checkpoint on disk (set by the writer)
        # The weights file of the last checkpoint submitted, and the step it holds.
        self._checkpoint_weights: tuple[int, Path] | None = None
        self.paused_seconds = 0.0  # in the current epoch: not counted as training time
        self._pending_losses: list[torch.Tensor] = []
        # Each step's (scheduled base rate, {group name: rate}) as it trained.
        self._pending_lrs: list[tuple[float, dict[str, float]]] = []
        self._pending_steps: list[tuple[int, int]] = []
        self.current_plan = FreezePlan()
        self._entry_key: tuple[str, int] | None = None
        self._trainable: list[nn.Parameter] = []  # what the optimizer steps (per plan)
        self._forward: Any = None  # the model, or its torch.compile (and DDP) wrapper
        self._eval_forward: Any = None  # for validation: never DDP's (no collectives)
        self._rest_forward: Any = None  # the part after the feature cache's cut, likewise
        self._ddp: Any = None  # the DistributedDataParallel wrapper of the plan in effect
        # Events of setup (the feature cache's), sent once RunStarted is out.
        self._held_events: list[Any] | None = []
        self._compile_failed = False
        self._cache_announced = False
        self._checkpoint_written = threading.Event()
        self._checkpoint_written.set()
        # Whether every rank reached the end of the run with this one (the caller then closes
        # the process group with a barrier); False when a rank failed on its own or was lost.
        self.together = True

    # ================================================================== setup
    def _setup(self) -> None:
        if self.dist is None:
            self._setup_parts()
            self._setup_run()
            return
        # Each rank sets up on its own; all of them must be ready before the first collective
        # (DDP's wrapper), and all learn of one that is not, so none waits for it.
        error = None
        try:
            self._setup_parts()
        except Exception as e:
            error = e
        self.dist.agree(error)
        try:
            self._setup_run()
        except Exception as e:
            error = e
        self.dist.agree(error)
        self._say_distributed()

    def _say_distributed(self) -> None:
        parts = self.parts
        dist = self.dist
        assert parts is not None and dist is not None
        per = parts.global_batch / dist.world
        share = f"{per:g}" if per == int(per) else f"{int(per)}-{int(per) + 1}"
        accum = parts.accum_steps
        step = (
            f"; {accum} batches per step: {parts.global_batch * accum} images" if accum > 1 else ""
        )
        self._emit_after_start(
            LogEvent(
                f"{dist.world} processes ({parts.device.type}, "
                f"{'nccl' if parts.device.type == 'cuda' else 'gloo'}): global batch "
                f"{parts.global_batch} ({share} images per process){step}"
            )
        )
        if self.project.train.sync_bn and parts.device.type != "cuda":
            self._emit_after_start(
                LogEvent(
                    "Sync BatchNorm needs CUDA GPUs: on the CPU each process keeps its own "
                    "BatchNorm statistics",
                    "warning",
                )
            )

    def _setup_parts(self) -> None:
        changes: list[str] = []
        saved = None
        if self.resume:
            if self.main:
                # Before anything is read: a second trainer of this folder is refused here.
                self.folder.check_resumable()
                self.lock.acquire()
                # The last ending no longer describes the run once it goes on.
                with contextlib.suppress(OSError):
                    self.folder.outcome.unlink(missing_ok=True)
                # Half-written files of a killed run (its temporary names) go now.
                for folder in (self.folder.path, self.folder.checkpoints):
                    remove_stale_temp_files(folder)
            saved = checkpoint.load(self.folder.last_checkpoint)
            if self.main:
                # A weights file of a checkpoint the run was killed while writing goes too.
                checkpoint.remove_unused_weights(self.folder.checkpoints, saved.get("weights"))
            if saved.get("weights"):
                self._checkpoint_weights = (
                    int(saved["step"]),
                    self.folder.checkpoints / str(saved["weights"]),
                )
            changes = apply_resume_changes(
                self.project, self.resume_changes, int(saved["step"]), int(saved["epoch"])
            )
        else:
            self.project.resumes = []  # a new run of a run's project.json has no resumes yet
        parts = prepare(self.project, self.folder, self.report, self.trust, saved, self.dist)
        self.parts = parts
        self._changes = changes
        if parts.loaded.dropped_head_keys and not self.resume:
            self.emit(
                LogEvent(
                    f"the classifier head ({', '.join(parts.loaded.dropped_head_keys)}) was "
                    f"re-initialised for {parts.report.num_classes} classes: the starting weights "
                    "had another class count",
                    "notice",
                )
            )
        self.model, self.tree, self.report = parts.model, parts.tree, parts.report
        if self.main:
            # Before a resume truncates the logs: the CSV and events follow them.
            self.log.trackers = Trackers(
                self.folder,
                parts.layers.names,
                self.project,
                warn=lambda message: self._emit_after_start(LogEvent(message, "warning")),
            )
        parts.features.emit = self._emit_after_start
        self.timeline = timeline.entries(self.project.plan, parts.steps_per_epoch)

    def _setup_run(self) -> None:
        parts = self.parts
        assert parts is not None
        if parts.saved is not None:
            self._restore(parts.saved)
            parts.saved = None  # its tensors are in the model and optimizer now
            self.project.resumes.append(ResumeRecord(self.step, self._changes))
            self._write_project()
        else:
            entry = timeline.entry_at(self.timeline, 1)
            self._entry_key = entry.key
            self._apply_plan(entry.plan, "start", announce=False)
            if not self.main:
                return
            self.folder.create()
            self.lock.acquire()  # another process's folder: refused, and nothing removed
            try:
                self._write_project()
                self.folder.write_json(self.folder.data_report, parts.report.to_dict())
                self.folder.write_json(self.folder.layers, {"layers": parts.layers.names})
                self.log.plan(self._plan_record(self._plan_event))
                self.log.flush(wait=True)
            except (FreezerError, OSError):
                # The folder is new and ours: a run that cannot start leaves nothing behind.
                self.log.close()
                self.lock.release()
                shutil.rmtree(self.folder.path, ignore_errors=True)
                raise

    def _write_project(self) -> None:
        if not self.main:
            return
        self.folder.write_json(self.folder.project, self.project.to_dict())

    # ================================================================== the freeze plan
    def _apply_plan(self, plan: FreezePlan, reason: str, announce: bool = True) -> bool:
        """Make `plan`'s selection the plan in effect, at a step boundary: requires_grad, the
        BatchNorm guard, the optimizer's parameters and the frozen check's references.

        A selection that would leave nothing to train is refused: the run goes on with the
        plan in effect, and says so. Returns whether the plan was applied.
        """
        parts = self.parts
        assert parts is not None
        plan = FreezePlan(plan.preset, list(plan.freeze), list(plan.unfreeze), plan.bn_policy)
        mask = resolve(plan, parts.tree)
        step = self.step + 1
        if not mask.any():
            message = (
                f"step {step}: the {reason} '{plan.describe()}' would leave nothing to train, "
                f"so it was refused; training goes on with '{self.current_plan.describe()}'"
            )
            event = PlanApplied(
                step,
                self.current_plan,
                parts.tree.trainable_params,
                parts.tree.total_params,
                parts.layers.layer_trainable(),
                "refused",
                parts.tree.trainable.copy(),
                message,
            )
            self.emit(LogEvent(message, "warning"))
            self.emit(event)
            self.log.plan({**self._plan_record(event), "refused": plan.to_dict()})
            return False
        applied = apply_mask(parts.model, parts.tree, mask, plan.bn_policy)
        restrict_to_trainable(parts.optimizer, parts.groups)
        self._trainable = [p for g in parts.optimizer.param_groups for p in g["params"]]
        parts.verifier.sync(self.step, parts.tree.frozen_norm_paths(), plan.bn_policy)
        parts.features.follow_plan(step)  # the cache key reuses the frozen check's digests
        self._set_forward()
        self.current_plan = plan
        event = PlanApplied(
            step,
            plan,
            applied.trainable,
            applied.total,
            parts.layers.layer_trainable(),
            reason,
            mask.copy(),
        )
        self._plan_event = event
        if announce:
            self.emit(event)
            self.emit(
                LogEvent(
                    f"step {step}: freeze plan now '{plan.describe()}' "
                    f"({applied.trainable:,} of {applied.total:,} parameters train; {reason})"
                )
            )
            self.log.plan(self._plan_record(event))
        return True

    def _set_forward(self) -> None:
        """The forward for training and validation (the model's, and the part after the
        feature cache's cut): with `compile`, torch.compile wrappers made anew for each plan
        (requires_grad, the frozen norms' mode and the cut changed)."""
        features = self.parts.features
        rest = features.rest
        # The whole model's forward is not called while the cache serves both splits.
        whole = not (features.serves("train") and features.serves("val"))
        self._forward = self._compiled(self.parts.model) if whole else self.parts.model
        self._eval_forward = self._forward
        self._rest_forward = self._compiled(rest) if rest is not None else None
        if self.dist is not None:
            # A new wrapper for every plan: DDP registers only the parameters that train when
            # it is built, so one kept from the last plan would never all-reduce a layer
            # unfrozen since. Validation uses the model itself: DDP's forward joins
            # collectives, and the ranks' validation shares may have unequal batch counts.
            self._forward = self._ddp = None  # the old wrapper (and its reducer) goes first
            self._ddp = self.dist.wrap(self.parts.model)
            self._forward = self._compiled(self._ddp)

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        """DDP's no_sync for a batch whose gradients only accumulate (no optimizer step)."""
        if skip and self._ddp is not None:
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    def _mix(self, x: torch.Tensor, y: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Mixup/CutMix a training batch in place (timm's Mixup, one draw per batch), adding
        its soft targets to `targets`. timm needs an even batch: an odd one (an epoch's last,
        or a process's share) mixes all but its last image, which keeps its own (smoothed)
        label. timm draws from NumPy's global generator: it is seeded per batch, as ImageItems
        seeds each image, so a resumed run mixes as the uninterrupted one did."""
        from timm.data.mixup import mixup_target

        mixup = self.parts.mixup
        assert mixup is not None
        even = x.shape[0] - x.shape[0] % 2
        rank, world = (self.dist.rank, self.dist.world) if self.dist else (0, 1)
        key = self.project.train.seed * 1_000_003 + self.epoch * 7_919 + self.batch_in_epoch
        state = np.random.get_state()
        np.random.seed((key * world + rank) % 2**32)
        try:
            pieces = [mixup(x[:even], y[:even])[1]] if even else []  # x[:even] mixes in place
        finally:
            np.random.set_state(state)
        if even < x.shape[0]:
            pieces.append(mixup_target(y[even:], mixup.num_classes, 1.0, mixup.label_smoothing))
        targets.append(torch.cat(pieces) if len(pieces) > 1 else pieces[0])
        return x

    def _compiled(self, module: nn.Module) -> Any:
        if not self.project.train.compile or self._compile_failed:
            return module
        compiled = torch.compile(module)

        def forward(x: torch.Tensor) -> Any:
            if self._compile_failed:
                return module(x)
            try:
                return compiled(x)
            except Exception as e:
                if is_oom(e):
                    raise
                # No C++ compiler, an unsupported operation...: eager still trains.
                self._compile_failed = True
                if self.dist is None:  # under DDP the ranks must rebuild together: keep it
                    self._set_forward()
                first = str(e).splitlines()[0] if str(e) else ""
                self.emit(
                    LogEvent(
                        f"torch.compile failed ({type(e).__name__}: {first[:200]}); "
                        "training goes on without it",
                        "warning",
                    )
                )
                return module(x)

        return forward

    def _plan_record(self, event: PlanApplied) -> dict[str, Any]:
        return {
            "step": event.step,
            "epoch": self.epoch + 1,
            "reason": event.reason,
            "plan": event.plan.to_dict(),
            "trainable_params": event.trainable_params,
            "total_params": event.total_params,
            "feature_cache": self.parts.features.record(),
        }

    def _follow_timeline(self) -> None:
        """Before each step: the schedule phase or recorded edit whose time has come."""
        entry = timeline.entry_at(self.timeline, self.step + 1)
        if entry.key == self._entry_key:
            return
        # Every entry that starts at this step, in order (a phase, then an edit made at that
        # same step), so a repeat of the run passes through the same plans as the original.
        for e in self.timeline:
            if e.start_step == entry.start_step and e.kind != "start":
                self._entry_key = e.key
                self._apply_plan(e.plan, e.kind)
        self._entry_key = entry.key

    def _take_edit(self, plan: FreezePlan | None) -> None:
        """A plan sent from outside (the window's tree): applied now and recorded as an edit
        of the run's timeline, in project.json and plans.jsonl."""
        if plan is None or plan.same_selection(self.current_plan):
            return
        if not self._apply_plan(plan, "edit"):
            return
        edit = Edit(self.step + 1, plan.preset, list(plan.freeze), list(plan.unfreeze))
        edits = [e for e in self.project.plan.edits if e.step != edit.step] + [edit]
        self.project.plan.edits = sorted(edits, key=lambda e: e.step)
        self.timeline = timeline.entries(self.project.plan, self.parts.steps_per_epoch)
        self._entry_key = timeline.entry_at(self.timeline, self.step + 1).key
        self._write_project()

    # ================================================================== checkpoints
    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.parts.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.parts.device)
        return state

    def _save_checkpoint(self, best: bool = False) -> None:
        """Snapshot the training state to the CPU now; write it on the writer thread, after
        every record it counts (flushed to disk first), so the checkpoint is always the last
        thing to change and a kill at any moment leaves logs that a resume can continue."""
        parts = self.parts
        assert parts is not None
        if not self.main:
            return
        # One checkpoint in flight at most: a slow disk must not stack up copies of the model.
        while not self._checkpoint_written.wait(0.1):
            self.writer.raise_error()  # a failed writer skips the job that would set it
        state = checkpoint.snapshot(
            {
                "model": parts.model.state_dict(),
                "optimizer": checkpoint.named_optimizer_state(parts.optimizer, parts.model),
                "optimizer_groups": checkpoint.named_group_counters(parts.optimizer, parts.model),
                "scheduler": parts.scheduler.state_dict(),
                "scaler": parts.scaler.state_dict() if parts.scaler else None,
                "rng": self._rng_state(),
                "ema": parts.ema.module.state_dict() if parts.ema else None,
            }
        )
        weights = state.pop("model")
        ema_weights = state["ema"]  # kept in last.pt too, for a resume
        record = {
            **state,
            "architecture": str(parts.loaded.spec),
            "num_classes": parts.report.num_classes,
            "data_config": dict(parts.loaded.data_config),
            # Not in the state dict, and not implied by the architecture's name.
            "transform_input": transform_input_of(parts.loaded.spec.name, parts.model)
            if parts.loaded.spec.kind == TORCHVISION
            else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_count],
            "plan": self.current_plan.to_dict(),
            "timeline_entry": list(self._entry_key) if self._entry_key else None,
            "frozen": parts.verifier.state_dict(),
            "best": dict(self.best),
            "stale_epochs": self.stale_epochs,
            "classes": list(parts.report.classes),
            # A resume under another number of processes keeps the same global batches.
            "global_batch": parts.global_batch,
            "world_size": parts.world,
        }
        step, epoch, whole_epoch = self.step, self.epoch, self.batch_in_epoch == 0
        path = self.folder.last_checkpoint
        metadata = self._weights_metadata()
        self._checkpoint_weights = (step, path.parent / checkpoint.weights_name(step))
        links = (self.folder.best_weights,) if best else ()
        written = self._checkpoint_written = threading.Event()

        def write() -> None:
            try:
                self.log.flush_now(durable=True)
                if ema_weights is not None:
                    checkpoint.save_ema(self.folder.path, ema_weights, metadata)
                checkpoint.save(path, record, weights, metadata, links)
                self.last_checkpoint_step = step
                if whole_epoch:
                    self.last_good_checkpoint_epoch = epoch
            finally:
                written.set()

        self.writer.submit(write)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        parts = self.parts
        assert parts is not None
        parts.model.load_state_dict(ckpt["model"])
        if parts.ema is not None:
            checkpoint.restore_ema(parts.ema, parts.model, ckpt.get("ema"))
        self.step = int(ckpt["step"])
        self.epoch = int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.epoch_loss_sum, self.epoch_loss_count = ckpt["epoch_loss"]
        self.best = dict(ckpt["best"])
        self.stale_epochs = int(ckpt["stale_epochs"])
        entry = ckpt.get("timeline_entry")
        self._entry_key = (str(entry[0]), int(entry[1])) if entry else None
        # The plan in force at the checkpoint decides which parameters the optimizer steps,
        # so apply it before putting their state back (by name).
        self._apply_plan(FreezePlan.from_dict(ckpt["plan"]), "resume", announce=False)
        checkpoint.load_named_optimizer_state(parts.optimizer, parts.model, ckpt["optimizer"])
        counters = ckpt.get("optimizer_groups") or {}
        checkpoint.load_group_counters(parts.optimizer, parts.model, counters)
        for group in parts.optimizer.param_groups:
            if "lookahead_step" in group:
                # Lookahead syncs its slow weights every k optimizer steps, counted from the
                # run's start (the optimizer lives as long as the run): count on from here.
                group["lookahead_step"] = self.step
        # Most schedules are a function of the step, rebuilt from the settings (a new epoch
        # count, which a resume may change, stretches the rest); plateau's state is saved.
        parts.scheduler.load_state_dict(ckpt.get("scheduler"), self.step)
        if parts.scaler and ckpt.get("scaler"):
            parts.scaler.load_state_dict(ckpt["scaler"])
        parts.verifier.load_state_dict(ckpt["frozen"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and parts.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], parts.device)
        self.log.truncate_after(self.step, self.epoch)
        self.last_good_checkpoint_epoch = self.epoch
        self.last_checkpoint_step = self.step
        self.log.plan(self._plan_record(self._plan_event))
        self.emit(
            LogEvent(
                f"resumed at step {self.step} (epoch {self.epoch + 1}, batch {self.batch_in_epoch})"
            )
        )

    def _weights_metadata(self) -> dict[str, str]:
        parts = self.parts
        return {
            # The architecture, even when the run started from a bundle or weights file.
            META_MODEL: str(parts.loaded.spec),
            META_NUM_CLASSES: str(parts.report.num_classes),
            META_LABELS: json.dumps(parts.report.classes),
        }

    def _save_weights(self, path: Path) -> None:
        """The model's weights now, as safetensors: a hard link of the checkpoint's weights
        file when a checkpoint was just taken (no second serialisation), else a snapshot
        written on the writer thread."""
        parts = self.parts
        assert parts is not None
        if not self.main:
            return
        if self._checkpoint_weights is not None and self._checkpoint_weights[0] == self.step:
            source = self._checkpoint_weights[1]
            self.writer.submit(lambda: link_or_copy(source, path))
            return
        weights = checkpoint.snapshot(parts.model.state_dict())
        metadata = self._weights_metadata()
        self.writer.submit(lambda: save_safetensors(weights, path, metadata))

    # ================================================================== the loop
    def run(self) -> Finished:
        started = time.monotonic()
        try:
            self._setup()
        except FreezerError:
            self._release()
            if not self.resume and self.main:
                # An empty folder claimed for this run (new_run_dir) is not worth keeping.
                with contextlib.suppress(OSError):
                    self.folder.path.rmdir()
            raise
        parts = self.parts
        assert parts is not None
        if parts.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(parts.device)
        self.emit(
            RunStarted(
                run_dir=str(self.folder.path),
                model=self.project.model,
                device=str(parts.device),
                precision=parts.precision.name,
                classes=list(parts.report.classes),
                total_params=parts.tree.total_params,
                trainable_params=parts.tree.trainable_params,
                layer_names=list(parts.layers.names),
                layer_trainable=parts.layers.layer_trainable(),
                epochs=self.project.train.epochs,
                steps_per_epoch=parts.steps_per_epoch,
                start_step=self.step,
                data_report=parts.report.to_dict(),
                total_steps=parts.total_steps,
                processes=parts.world,
                global_batch=parts.global_batch,
            )
        )
        self.emit(self._plan_event)
        held, self._held_events = self._held_events or [], None
        for event in held:
            self.emit(event)
        reason, kind, message, hint, details = "completed", "", "", "", ""
        try:
            try:
                reason = self._train()
                self._save_weights(self.folder.weights)
                self.writer.wait()  # every file is on disk before the run says it is done
                if reason == "step-limit":  # at an epoch's end: its checkpoint is saved
                    self._say_resumable(reason)
            except _StopRequested as stop:
                try:
                    # A NaN among the last unflushed steps must not be saved as a clean stop.
                    self._flush_losses()
                except _NonFiniteLoss as e:
                    reason, kind, message, hint = self._non_finite(e)
                else:
                    reason = stop.reason
                    self._write_frozen_check(self._frozen_check())
                    self._save_checkpoint()
                    self._save_weights(self.folder.weights)
                    self.writer.wait()
                    self._say_resumable(reason)
        except _NonFiniteLoss as e:
            reason, kind, message, hint = self._non_finite(e)
        except WriteError as e:
            # Disk full or no permission while saving: say what is kept, and keep the process.
            reason, kind = "error", "write"
            # Only rank 0 writes: the other ranks learn of it when it leaves the job.
            self.together = self.dist is None
            with contextlib.suppress(WriteError):
                self.writer.wait()  # what it had been given: last_checkpoint_step is current
            self._recover_after_failure()
            kept = (
                f"the last complete checkpoint (step {self.last_checkpoint_step}) and every "
                "record up to it are kept"
                if self.last_checkpoint_step
                else "no checkpoint had been written yet"
            )
            message = f"{e.message} Training stopped at step {self.step}; {kept}."
            hint = (
                e.hint or ""
                if self.last_checkpoint_step
                else "Free some space on that disk, then start the run again: "
                f"freezer-app train {self.folder.project} --out NEW_FOLDER"
            )
        except Exception as e:
            reason = "error"
            self._recover_after_failure()
            if self.dist is not None:
                self.together = False
            if self.dist is not None and is_collective_error(e):
                # A collective broke: another rank failed (its reason is in the store) or its
                # process is gone. Every rank ends here; checkpoints on disk stay usable.
                kind = "rank-lost"
                message, hint = self._lost_rank(e)
            elif is_oom(e):
                kind = "out-of-memory"
                bs = self.project.train.batch_size
                message = f"Out of GPU memory at step {self.step + 1} (batch size {bs}, {parts.precision.name})."
                hint = (
                    f"Try a smaller batch size (e.g. {max(1, bs // 2)}), mixed precision (--amp bf16 or fp16), "
                    "a smaller image size, or freeze more layers (frozen layers need no gradients or optimizer state)."
                )
            else:
                # Nearly always the model and the data disagreeing (input size, output shape);
                # reported like any other failure, and the process stays usable.
                kind = "exception"
                first = str(e).splitlines()[0] if str(e) else ""
                message = f"Training failed at step {self.step + 1}: {type(e).__name__}: {first}"
                hint = (
                    "Check that the model accepts this image size (--image-size) and returns one "
                    "score per class. Checkpoints written so far are kept."
                )
                details = traceback.format_exc()
            if self.dist is not None and kind != "rank-lost":
                self.dist.report_failure(message)
        finally:
            with contextlib.suppress(WriteError):  # a failed write is reported above
                self.log.flush(wait=True)
        if reason == "error":
            self.emit(ErrorEvent(kind, self.step, message, hint))
        check = self.last_check
        result = Finished(
            reason=reason,
            run_dir=str(self.folder.path),
            steps=self.step,
            epochs_completed=self.epoch,
            best_val_acc=self.best.get("val_acc"),
            best_epoch=self.best.get("epoch"),
            last_val_acc=self.last_val_acc,
            frozen_check_passed=check.passed if check else None,
            frozen_check_summary=check.summary() if check else "not run",
            seconds=time.monotonic() - started,
            message=message,
            hint=hint,
            details=details,
            peak_device_memory=torch.cuda.max_memory_allocated(parts.device)
            if parts.device.type == "cuda"
            else None,
            feature_cache=parts.features.record(),
        )
        if self.log.trackers is not None:
            self.log.trackers.outcome = reason  # MLflow/W&B run status
        self._write_outcome(result)
        self._release()
        self.emit(result)
        return result

    def _say_resumable(self, reason: str) -> None:
        """Tell how to continue a run that stopped short ("stopped" or "step-limit")."""
        what = "stopped" if reason == "stopped" else "reached the step limit"
        self.emit(
            LogEvent(
                f"{what} at step {self.step}; checkpoint saved. Continue with: "
                f"freezer-app train --resume {self.folder.path}"
            )
        )

    def _non_finite(self, e: _NonFiniteLoss) -> tuple[str, str, str, str]:
        with contextlib.suppress(WriteError):
            self.writer.wait()  # the checkpoints submitted so far are the ones on disk
        where = (
            f"the last good checkpoint (end of epoch {self.last_good_checkpoint_epoch}) is kept in {self.folder.last_checkpoint}"
            if self.last_good_checkpoint_epoch
            else "no checkpoint had been written yet"
        )
        message = f"The loss became {e.value} at step {e.step}; training stopped and {where}."
        hint = (
            f"Lower the learning rate (now {self.project.train.lr:g}), keep gradient clipping on, "
            "or turn mixed precision off."
        )
        return "error", "non-finite-loss", message, hint

    def _lost_rank(self, e: Exception) -> tuple[str, str]:
        dist = self.dist
        assert dist is not None
        step = self.step + 1
        failed = dist.failures()
        if failed:
            rank, why = min(failed.items())
            message = (
                f"Process {rank} of {dist.world} failed: {why} The run stopped on every process."
            )
        else:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            # gloo's text starts with its source file and ends with advice for its developers.
            first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]
            message = (
                f"Another process of this {dist.world}-process run ended or stopped answering "
                f"near step {step} ({first[:200]}); the run stopped on every process."
            )
        with contextlib.suppress(WriteError):
            self.writer.wait()  # what it had been given: last_checkpoint_step is current
        if self.last_checkpoint_step:
            hint = (
                f"The last checkpoint (step {self.last_checkpoint_step}) is kept; continue "
                f"with: freezer-app train --resume {self.folder.path}"
            )
        else:
            hint = "No checkpoint had been written yet; start the run again."
        return message, hint

    def _write_outcome(self, result: Finished) -> None:
        """outcome.json: how the run ended, for `freezer-app runs` and the Runs tab (a killed
        process writes none, which is how a crash reads)."""
        if not self.main or not self.folder.project.exists():
            return  # a run that could not start left no folder
        outcome = {
            "reason": result.reason,
            "step": result.steps,
            "epoch": result.epochs_completed,
            "message": result.message,
            "hint": result.hint,
            "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with contextlib.suppress(WriteError, OSError):  # the run's other files say enough
            self.folder.write_json(self.folder.outcome, outcome)

    def _release(self) -> None:
        """End the data-loader workers and free the accelerator: the process stays usable for
        the next run, and no worker process outlives its run."""
        self.log.close()
        self.lock.release()
        self._pending_losses.clear()
        parts = self.parts
        if parts is None:
            return
        parts.features.close()
        parts.loaders.close()
        parts.probe.release()
        inner_optimizer(parts.optimizer).state.clear()  # Lookahead keeps its moments inside
        if parts.device.type != "cpu":
            parts.model.to("cpu")
            if parts.ema is not None:
                parts.ema.module.to("cpu")  # the average holds as much memory as the model
        if parts.device.type == "cuda":
            torch.cuda.empty_cache()

    def _recover_after_failure(self) -> None:
        self._pending_losses.clear()
        self.parts.optimizer.zero_grad(set_to_none=True)
        if self.parts.device.type == "cuda":
            torch.cuda.empty_cache()

    def _commands(self) -> tuple[bool, bool, FreezePlan | None]:
        """Stop, pause and a new plan for this boundary; under torch.distributed the same on
        every rank (one all_reduce): a stop from any rank, pause and plans from rank 0."""
        control = self.control
        if self.dist is None:
            return control.stop_requested, control.paused, None
        # A plan sent while paused is taken once the run goes on, as in one process.
        plan = control.take_plan() if self.main and not control.paused else None
        return self.dist.commands(control.stop_requested, control.paused, plan)

    def _boundary(self) -> None:
        """Between steps: honour stop and pause, then the timeline and edits for the next step."""
        control = self.control
        stop, paused, plan = self._commands()
        if stop:
            raise _StopRequested
        if paused:
            self._flush_losses()
            self.log.flush(wait=True)  # the files are complete while the run is paused
            self.emit(PausedEvent(True, self.step))
            paused_at = time.monotonic()
            while paused and not stop:
                # Under torch.distributed the other ranks wait in the next exchange: rank 0
                # calls it at least every half second, far inside the collectives' timeout.
                if self.main:
                    control.wait_while_paused(0.5 if self.dist else 0.1)
                stop, paused, newer = self._commands()
                plan = newer or plan  # one taken before the pause is kept
            self.paused_seconds += time.monotonic() - paused_at
            if stop:
                raise _StopRequested
            self.emit(PausedEvent(False, self.step))
        self._follow_timeline()
        self._take_edit(plan if self.dist is not None else control.take_plan())

    def _emit_after_start(self, event: Any) -> None:
        if self._held_events is not None:
            self._held_events.append(event)
        else:
            self.emit(event)

    def _set_mode(self, training: bool) -> None:
        """The model's mode, and that of the part after the feature cache's cut (its own
        graphs for training and eval)."""
        self.parts.model.train(training)
        rest = self.parts.features.rest
        if rest is not None:
            rest.train(training)

    def _scores(
        self,
        split: str,
        batch: Batch,
        finish: Any,
        mix: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The class scores of a batch: the model's forward, or, where the feature cache
        serves this split, the rest of it from the cached (or just computed) features.
        mix: applied to the images first (mixup; the cache never serves mixed batches)."""
        features = self.parts.features
        if features.serves(split):
            assert mix is None, "mixed batches are not served by the feature cache"
            f = features.features(
                split, batch.indices, lambda: self._images(split, batch, finish), batch.y
            )
            with self._autocast():
                return logits_of(self._rest_forward(f))
        x = self._images(split, batch, finish)
        if mix is not None:
            x = mix(x)
        forward = self._forward if split == "train" else self._eval_forward
        with self._autocast():
            return logits_of(forward(x))

    def _images(self, split: str, batch: Batch, finish: Any) -> torch.Tensor:
        """A batch's images on the device, normalised there when the loader handed over uint8
        images (loaded now when the batch came without: the cut moved mid-epoch)."""
        parts = self.parts
        x = batch.x
        if x is None:
            x = parts.loaders.load(split, batch.indices, self.epoch)[0]
        x = x.to(parts.device, non_blocking=parts.device.type == "cuda")
        if finish is not None:
            x = finish(x)
        if parts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.parts.precision.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.parts.device.type, dtype=dtype)

    def _train(self) -> str:
        t = self.project.train
        parts = self.parts
        assert parts is not None
        optimizer = parts.optimizer
        # Steps that report (losses, and telemetry every telemetry_every steps): every step on
        # the CPU; on an accelerator every 10th at most, each with one device-to-host copy,
        # and no synchronisation at all on the steps between.
        every = 1 if parts.device.type == "cpu" else min(10, parts.probe.every)
        features = parts.features
        while self.epoch < t.epochs:
            if self.batch_in_epoch == 0:
                self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
            self._set_mode(True)
            epoch_start = time.monotonic()
            self.paused_seconds = 0.0
            images = 0
            # Batches whose features are cached come without images (nothing decoded).
            batches = parts.loaders.train_batches(
                self.epoch, self.batch_in_epoch, lambda b: features.holds("train", b)
            )
            # Gradient accumulation: a step is one optimizer step over `accum` batches (the
            # epoch's last step over what is left). Stop, pause, plan edits, the step limit
            # and checkpoints all fall between steps, never inside one.
            accum = parts.accum_steps
            sizes = parts.loaders.train_batch_sizes(self.epoch) if accum > 1 else []
            step_loss: Any = 0.0  # with accumulation: the sum of the step's losses × images
            for batch in batches:
                at = self.batch_in_epoch % accum
                if at == 0:
                    self._boundary()
                    optimizer.zero_grad(set_to_none=True)
                    step_loss = 0.0
                stepping = at == accum - 1 or self.batch_in_epoch + 1 >= parts.batches_per_epoch
                y = batch.y.to(parts.device, non_blocking=parts.device.type == "cuda")
                local, total = y.shape[0], batch.total or y.shape[0]
                start = self.batch_in_epoch - at
                step_images = sum(sizes[start : start + accum]) if accum > 1 else total
                # DDP averages the ranks' gradients and the accumulated batches add up: each
                # rank's mean loss weighted by its share of the step's images makes the sum
                # the mean over all of them, as one process computes it for one batch (shares
                # may differ by an image; 1/N for N equal batches).
                weight = local * (self.dist.world if self.dist else 1) / step_images
                # Batches that do not step skip DDP's all-reduce: gradients add up locally.
                with self._no_sync(not stepping):
                    mixed: list[torch.Tensor] = []
                    mix = functools.partial(self._mix, y=y, targets=mixed) if parts.mixup else None
                    scores = self._scores("train", batch, parts.loaders.train_finish, mix)
                    with self._autocast():
                        loss = parts.criterion(scores, mixed[0] if mixed else y)
                    backward = loss * weight if weight != 1 else loss
                    if parts.scaler:
                        parts.scaler.scale(backward).backward()
                    else:
                        backward.backward()
                if accum > 1:
                    step_loss = step_loss + loss.detach().float() * local
                images += total
                if not stepping:
                    self.batch_in_epoch += 1
                    continue
                if parts.scaler:
                    parts.scaler.unscale_(optimizer)
                self.step += 1
                parts.probe.begin(self.step, self.epoch + 1)
                if t.grad_clip:
                    nn.utils.clip_grad_norm_(self._trainable, t.grad_clip)
                if parts.scaler:
                    parts.scaler.step(optimizer)
                    parts.scaler.update()
                else:
                    optimizer.step()
                lrs = (parts.scheduler.base_lr(), parts.scheduler.group_lrs())  # this step's
                parts.scheduler.step_update(self.step)
                if parts.ema is not None:
                    # By optimizer step: timm's first update copies the weights, then averages.
                    parts.ema.update(parts.model, step=self.step)
                self.batch_in_epoch += 1
                telemetry = parts.probe.end()
                # The step's mean loss over all its images (every batch, every process).
                if accum > 1:
                    loss, local, total = step_loss, 1, step_images
                    if not self.dist:
                        loss = loss / step_images
                self._pending_losses.append(
                    self.dist.mean_loss(loss, local, total) if self.dist else loss.detach()
                )
                self._pending_lrs.append(lrs)
                self._pending_steps.append((self.step, self.epoch + 1))
                if telemetry is not None or (self.step - 1) % every == 0:
                    rate = images / self._training_seconds(epoch_start)
                    self._flush_losses(rate=rate, telemetry=telemetry)
                if (
                    t.max_steps
                    and self.step >= t.max_steps
                    and self.batch_in_epoch < parts.batches_per_epoch
                ):
                    batches.close()
                    raise _StopRequested("step-limit")
            seconds = self._training_seconds(epoch_start)
            self._flush_losses(rate=images / seconds)
            stop = self._end_epoch(images / seconds, seconds)
            if stop:
                return "early-stopped"
            if t.max_steps and self.step >= t.max_steps and self.epoch < t.epochs:
                # The step limit fell on an epoch boundary with epochs still to train: the
                # run stopped short, as one stopped mid-epoch (its checkpoint was just saved;
                # --resume continues it). A limit that falls on the last step of the last
                # epoch ends the run it would have been anyway: "completed".
                return "step-limit"
        return "completed"

    def _training_seconds(self, epoch_start: float) -> float:
        """Time spent training in this epoch: paused time does not count."""
        return max(1e-9, time.monotonic() - epoch_start - self.paused_seconds)

    def _flush_losses(self, rate: float = 0.0, telemetry: PendingRecord | None = None) -> None:
        """Report the losses of the steps since the last report, and `telemetry` if given:
        one device-to-host copy for all of it (the only synchronisation of a step)."""
        if not self._pending_losses and telemetry is None:
            return
        n = len(self._pending_losses)
        rows = [torch.stack(self._pending_losses).float().reshape(-1)] if n else []
        if telemetry is not None:
            rows.append(telemetry.values.float().reshape(-1))
        host = torch.cat(rows).cpu().numpy()
        pending = list(zip(host[:n].tolist(), self._pending_lrs, self._pending_steps))
        self._pending_losses.clear()
        self._pending_lrs.clear()
        self._pending_steps.clear()
        if telemetry is not None:
            record = telemetry.to_record(host[n:])
            self.log.telemetry(record.to_json)  # formatted on the writer thread
            self.emit(TelemetryEvent(record))
        for value, (lr, group_lrs), (step, epoch) in pending:
            if not math.isfinite(value):
                raise _NonFiniteLoss(step, value)
            self.epoch_loss_sum += value
            self.epoch_loss_count += 1
            # Each group's rate (head, body, layer-decay groups), by its multiplier.
            lrs = group_lrs if len(group_lrs) > 1 else None
            self.log.step(step, epoch, value, lr, lrs)
            self.emit(StepEvent(step, epoch, value, lr, rate))

    @torch.no_grad()
    def _validate(self, module: nn.Module | None = None) -> tuple[float | None, float | None]:
        """(loss, accuracy) on the validation images of the model, or of `module` (the EMA
        copy: always in eval mode, run on the images, not on the feature cache's features)."""
        parts = self.parts
        if parts.loaders.val is None:
            return None, None
        features = parts.features
        skip = (lambda b: features.holds("val", b)) if module is None else None
        if module is None:
            self._set_mode(False)
        total_loss = torch.zeros((), device=parts.device)
        correct = torch.zeros((), device=parts.device, dtype=torch.long)
        count = 0
        for batch in parts.loaders.val_batches(skip):
            # Under torch.distributed a stop waits for the epoch's end (the ranks agree there).
            if self.dist is None and self.control.stop_requested:
                # All batches are done, so a resumed run goes straight to this validation.
                raise _StopRequested
            y = batch.y.to(parts.device, non_blocking=parts.device.type == "cuda")
            if module is None:
                logits = self._scores("val", batch, parts.loaders.val_finish)
            else:
                x = self._images("val", batch, parts.loaders.val_finish)
                with self._autocast():
                    logits = logits_of(module(x))
            total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            count += y.shape[0]
        if module is None:
            self._set_mode(True)
        loss_sum, correct_sum = float(total_loss), float(correct)
        if self.dist is not None:
            # Each rank scored its own share of the validation images: sum them exactly.
            loss_sum, correct_sum, total = self.dist.all_sum([loss_sum, correct_sum, count])
            count = int(total)
        if count == 0:
            return None, None
        return loss_sum / count, correct_sum / count

    def _frozen_check(self) -> FrozenCheck:
        """The frozen check; under torch.distributed over every rank's tensors (gathered),
        naming a rank whose frozen tensors moved."""
        verifier = self.parts.verifier
        if self.dist is None:
            return verifier.check(self.epoch, self.step)
        return verifier.check_ranks(self.epoch, self.step, self.dist.gather(verifier.current()))

    def _end_epoch(self, images_per_s: float, seconds: float) -> bool:
        t = self.project.train
        val_loss, val_acc = self._validate()
        ema: dict[str, Any] = {}
        if self.parts.ema is not None:
            ema_loss, ema_acc = self._validate(self.parts.ema.module)
            ema = {"ema_val_loss": ema_loss, "ema_val_acc": ema_acc}
        self.parts.features.epoch_done(self.step)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.last_val_acc = val_acc
        train_loss = self.epoch_loss_sum / max(1, self.epoch_loss_count)
        metric = (
            val_acc
            if t.early_stop_metric == "val_acc"
            else (-val_loss if val_loss is not None else None)
        )
        if metric is None:
            metric = -train_loss
        is_best = self.best["metric"] is None or metric > self.best["metric"]
        if is_best:
            self.best = {"metric": metric, "epoch": self.epoch, "val_acc": val_acc}
            self.stale_epochs = 0
        else:
            self.stale_epochs += 1
        self.parts.scheduler.epoch_end(self.step, metric)  # plateau: may decay the rate
        in_sync: dict[str, Any] = {}
        if self.dist is not None:
            apart = self.dist.ranks_out_of_sync(self.parts.model)
            in_sync = {"replicas_in_sync": not apart}
            if apart:
                self.emit(
                    LogEvent(
                        f"after epoch {self.epoch} the weights of process(es) "
                        f"{', '.join(map(str, apart))} differ from process 0's",
                        "warning",
                    )
                )
        early_stop = bool(
            t.early_stop_patience
            and self.stale_epochs >= t.early_stop_patience
            and self.epoch < t.epochs
        )
        self.log.epoch(
            {
                "epoch": self.epoch,
                "step": self.step,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "images_per_s": images_per_s,
                "seconds": seconds,
                **ema,
                **in_sync,
                **(
                    {"feature_cache": cache}
                    if (cache := self.parts.features.epoch_record())
                    else {}
                ),
            }
        )
        self.emit(
            EpochEvent(
                self.epoch, self.step, train_loss, val_loss, val_acc, images_per_s, seconds, is_best
            )
        )
        self._write_frozen_check(self._frozen_check())
        self._announce_image_cache()
        last = (
            early_stop or self.epoch >= t.epochs or bool(t.max_steps and self.step >= t.max_steps)
        )
        if last or self.epoch % t.checkpoint_every == 0:
            # The best weights become a link of the checkpoint's weights file.
            self._save_checkpoint(best=is_best)
        elif is_best:
            self._save_weights(self.folder.best_weights)
        if early_stop:
            self.emit(
                LogEvent(
                    f"early stop: no better {t.early_stop_metric} for {self.stale_epochs} epochs"
                )
            )
            return True
        return False

    def _announce_image_cache(self) -> None:
        """Once, after the first epoch: what the image cache holds (later epochs skip decoding)."""
        if self._cache_announced:
            return
        self._cache_announced = True
        held, nbytes = self.parts.loaders.cached_images()
        total = len(self.parts.report.train) + len(self.parts.report.val)
        if held:
            self.emit(
                LogEvent(
                    f"image cache: {held:,} of {total:,} images ({nbytes / 2**20:,.1f} MB) "
                    "kept in memory; later epochs skip decoding them"
                )
            )

    def _write_frozen_check(self, check: FrozenCheck) -> None:
        self.last_check = check
        self.log.frozen_check(check.to_json())
        self.emit(FrozenCheckEvent(check))
        if not check.passed:
            self.emit(
                LogEvent(f"frozen check after epoch {check.epoch}: {check.summary()}", "warning")
            )


__all__ = ["Trainer", "logits_of", "total_steps"]
