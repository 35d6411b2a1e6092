"""The training loop: events out, commands in. No Qt here; the GUI runs this on a QThread.

trainer = Trainer(project, "runs/first", on_event=print)
result = trainer.run()          # a Finished event
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from freezer_app.core.catalog import META_LABELS, META_MODEL, META_NUM_CLASSES, load_model
from freezer_app.core.data import (
    DataReport,
    build_transforms,
    default_workers,
    make_loaders,
    scan_folder,
)
from freezer_app.core.errors import FreezerError, ProjectError
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
from freezer_app.core.files import save_safetensors, torch_save
from freezer_app.core.freeze import FreezePlan, apply_mask, resolve
from freezer_app.core.optim import (
    build_optimizer,
    lr_factor,
    param_groups,
    restrict_to_trainable,
    select_device,
    select_precision,
    wants_channels_last,
)
from freezer_app.core.project import Project
from freezer_app.core.run_folder import RunFolder
from freezer_app.core.telemetry import FrozenCheck, FrozenVerifier, LayerIndex, TelemetryProbe
from freezer_app.core.tree import ModelTree

CHECKPOINT_VERSION = 1


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


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def logits_of(output: Any) -> torch.Tensor:
    """The class scores of a model's output: some return a named tuple (e.g. `.logits`)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}, not a tensor of class scores")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """One training run of a project into a run folder.

    Commands (stop, pause/resume, a new freeze plan) arrive through `control` and take effect
    at the next step boundary. Setup problems (bad data, unknown model, offline weights) raise
    FreezerError before training starts; problems during training (NaN loss, out of memory)
    end the run with a Finished event whose reason is "error".
    """

    def __init__(
        self,
        project: Project,
        run_dir: str | Path,
        on_event: EventSink | None = None,
        control: RunControl | None = None,
        resume: bool = False,
        report: DataReport | None = None,
    ) -> None:
        self.project = project
        self.folder = RunFolder(run_dir)
        self.emit: EventSink = on_event or (lambda event: None)
        self.control = control or RunControl()
        self.resume = resume
        self.report = report
        self.model: nn.Module | None = None
        self.tree: ModelTree | None = None
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
        self._pending_losses: list[torch.Tensor] = []
        self._pending_lrs: list[float] = []
        self._pending_steps: list[tuple[int, int]] = []
        self._scheduled_phase: FreezePlan | None = None

    # ================================================================== setup
    def _setup(self) -> None:
        project, t = self.project, self.project.train
        project.validate()
        if self.resume:
            self.folder.check_resumable()
        else:
            # Checked now, created only once everything is ready: a run that cannot start
            # leaves no half-made folder behind.
            self.folder.check_new()
        seed_everything(t.seed)
        self.device = select_device(t.device)
        self.precision = select_precision(self.device, t.amp)

        if self.report is None:
            self.report = scan_folder(project.data.path, project.data.val_split, t.seed)
        report = self.report
        if self.resume and project.data.classes and project.data.classes != report.classes:
            raise ProjectError(
                "The dataset's classes changed since this run started "
                f"({', '.join(project.data.classes)} then, {', '.join(report.classes)} now).",
                "Resume with the same data, or start a new run.",
            )
        project.data.classes = list(report.classes)
        project.num_classes = report.num_classes

        # On resume the weights come from the checkpoint, so nothing is downloaded again.
        loaded = load_model(
            project.model,
            num_classes=report.num_classes,
            pretrained=project.pretrained and not self.resume,
            weights=None if self.resume else project.weights,
        )
        self.loaded = loaded
        model = loaded.module
        self.tree = ModelTree(model, project.model)
        self.channels_last = wants_channels_last(model, self.device, t.channels_last)
        try:
            model.to(self.device)
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
        except Exception as e:
            if not _is_oom(e):
                raise
            model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise ProjectError(
                f"The model does not fit in the memory of {self.device}.",
                "Pick a smaller model, or train on another device (--device cpu).",
            ) from None
        self.model = model

        train_tf, eval_tf = build_transforms(
            loaded.data_config, project.data.image_size, project.data.augmentation
        )
        workers = project.data.workers if project.data.workers is not None else default_workers()
        self.loaders = make_loaders(
            report,
            train_tf,
            eval_tf,
            t.batch_size,
            workers,
            t.seed,
            pin_memory=self.device.type == "cuda",
        )
        self.steps_per_epoch = len(self.loaders.train_sampler)
        self.total_steps = t.epochs * self.steps_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.warmup_steps = min(int(t.warmup_epochs * self.steps_per_epoch), self.total_steps // 5)

        self.groups = param_groups(model, self.tree, t)
        self.optimizer = build_optimizer(self.groups, t)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, self.warmup_steps, t.schedule)
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.use_scaler else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.layers = LayerIndex(model, self.tree)
        self.probe = TelemetryProbe(self.layers, self.device, t.telemetry_every)
        self.verifier = FrozenVerifier(model)
        self.log_every = 1 if self.device.type == "cpu" else 10

        if self.resume:
            self._load_checkpoint()
        else:
            self.current_plan = project.plan.phase_for_epoch(0)
            self._scheduled_phase = self.current_plan
            self._apply_plan(self.current_plan, "start", announce=False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ProjectError(
                "The freeze plan freezes every parameter, so there is nothing to train.",
                "Unfreeze at least the head (e.g. --preset head-only).",
            )
        if not self.resume:
            self.folder.create()
            self.folder.write_json(self.folder.project, project.to_dict())
            self.folder.write_json(self.folder.data_report, report.to_dict())
            self.folder.write_json(self.folder.layers, {"layers": self.layers.names})

    def _apply_plan(self, plan: FreezePlan, reason: str, announce: bool = True) -> None:
        """Set requires_grad, the BatchNorm guard, the optimizer's parameters and the frozen
        check's reference for a (new) plan. Runs only at a step boundary."""
        assert self.model is not None and self.tree is not None
        mask = resolve(plan, self.tree)
        applied = apply_mask(self.model, self.tree, mask, plan.bn_policy)
        restrict_to_trainable(self.optimizer, self.groups)
        self.verifier.sync(self.step, self.tree.frozen_norm_paths(), plan.bn_policy)
        self.current_plan = plan
        event = PlanApplied(
            self.step, plan, applied.trainable, applied.total, self.layers.layer_trainable(), reason
        )
        if announce:
            self.emit(event)
            self.emit(
                LogEvent(
                    f"step {self.step}: freeze plan now '{plan.describe()}' "
                    f"({applied.trainable:,} of {applied.total:,} parameters train)"
                )
            )
        self._plan_event = event

    # ================================================================== checkpoints
    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save_checkpoint(self) -> None:
        assert self.model is not None
        ckpt = {
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_count],
            "plan": self.current_plan.to_dict(),
            "scheduled_phase": self._scheduled_phase.to_dict() if self._scheduled_phase else None,
            "frozen": self.verifier.state_dict(),
            "best": dict(self.best),
            "stale_epochs": self.stale_epochs,
            "rng": self._rng_state(),
            "classes": list(self.report.classes) if self.report else [],
        }
        torch_save(ckpt, self.folder.last_checkpoint)
        if self.batch_in_epoch == 0:
            self.last_good_checkpoint_epoch = self.epoch

    def _load_checkpoint(self) -> None:
        assert self.model is not None
        try:
            ckpt = torch.load(self.folder.last_checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ProjectError(
                f"Cannot read {self.folder.last_checkpoint}: {e}", "The checkpoint may be damaged."
            ) from None
        self.model.load_state_dict(ckpt["model"])
        self.step = int(ckpt["step"])
        self.epoch = int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.epoch_loss_sum, self.epoch_loss_count = ckpt["epoch_loss"]
        self.best = dict(ckpt["best"])
        self.stale_epochs = int(ckpt["stale_epochs"])
        phase = ckpt.get("scheduled_phase")
        self._scheduled_phase = FreezePlan.from_dict(phase) if phase else None
        # The plan in force at the checkpoint decides which parameters the optimizer state
        # belongs to, so apply it before loading that state.
        self._apply_plan(FreezePlan.from_dict(ckpt["plan"]), "start", announce=False)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.verifier.load_state_dict(ckpt["frozen"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.folder.truncate_after(self.step, self.epoch)
        self.last_good_checkpoint_epoch = self.epoch
        self.emit(
            LogEvent(
                f"resumed at step {self.step} (epoch {self.epoch + 1}, batch {self.batch_in_epoch})"
            )
        )

    def _save_weights(self, path: Path) -> None:
        assert self.model is not None and self.report is not None
        metadata = {
            # The architecture, even when the run started from a bundle or weights file.
            META_MODEL: str(self.loaded.spec),
            META_NUM_CLASSES: str(self.report.num_classes),
            META_LABELS: json.dumps(self.report.classes),
        }
        save_safetensors(self.model.state_dict(), path, metadata)

    # ================================================================== the loop
    def run(self) -> Finished:
        started = time.monotonic()
        try:
            self._setup()
        except FreezerError:
            self.folder.close()
            raise
        assert self.model is not None and self.report is not None
        self.emit(
            RunStarted(
                run_dir=str(self.folder.path),
                model=self.project.model,
                device=str(self.device),
                precision=self.precision.name,
                classes=list(self.report.classes),
                total_params=self.tree.total_params,
                trainable_params=self.tree.trainable_params,
                layer_names=list(self.layers.names),
                layer_trainable=self.layers.layer_trainable(),
                epochs=self.project.train.epochs,
                steps_per_epoch=self.steps_per_epoch,
                start_step=self.step,
                data_report=self.report.to_dict(),
            )
        )
        self.emit(self._plan_event)
        reason, kind, message, hint, details = "completed", "", "", "", ""
        try:
            reason = self._train()
        except _StopRequested as stop:
            try:
                # A NaN among the last unflushed steps must not be saved as a clean stop.
                self._flush_losses()
            except _NonFiniteLoss as e:
                reason, kind, message, hint = self._non_finite(e)
            else:
                reason = stop.reason
                self._write_frozen_check(self.verifier.check(self.epoch, self.step))
                self._save_checkpoint()
                self._save_weights(self.folder.weights)
                what = "stopped" if reason == "stopped" else "reached the step limit"
                self.emit(
                    LogEvent(
                        f"{what} at step {self.step}; checkpoint saved, resume with --resume {self.folder.path}"
                    )
                )
        except _NonFiniteLoss as e:
            reason, kind, message, hint = self._non_finite(e)
        except Exception as e:
            reason = "error"
            self._recover_after_failure()
            if _is_oom(e):
                kind = "out-of-memory"
                bs = self.project.train.batch_size
                message = f"Out of GPU memory at step {self.step + 1} (batch size {bs}, {self.precision.name})."
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
        finally:
            self.folder.flush()
        if reason in ("completed", "early-stopped"):
            self._save_weights(self.folder.weights)
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
        )
        self._release()
        self.emit(result)
        return result

    def _non_finite(self, e: _NonFiniteLoss) -> tuple[str, str, str, str]:
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

    def _release(self) -> None:
        """Free the accelerator: the process stays usable for the next run."""
        self.folder.close()
        self.probe.release()
        self.optimizer.state.clear()
        self._pending_losses.clear()
        if self.model is not None and self.device.type != "cpu":
            self.model.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _recover_after_failure(self) -> None:
        self._pending_losses.clear()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _boundary(self) -> None:
        """Between steps: honour stop, pause and a new freeze plan."""
        control = self.control
        if control.stop_requested:
            raise _StopRequested
        if control.paused:
            self._flush_losses()
            self.folder.flush()
            self.emit(PausedEvent(True, self.step))
            while control.paused and not control.stop_requested:
                control.wait_while_paused(0.1)
            if control.stop_requested:
                raise _StopRequested
            self.emit(PausedEvent(False, self.step))
        plan = control.take_plan()
        if plan is not None:
            self._apply_plan(plan, "edit")

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loaders.train_sampler.set_epoch(self.epoch, self.batch_in_epoch)
        yield from self.loaders.train

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.autocast_dtype)

    def _train(self) -> str:
        t = self.project.train
        assert self.model is not None
        model = self.model
        non_blocking = self.device.type == "cuda"
        trainable_params = lambda: [p for g in self.optimizer.param_groups for p in g["params"]]
        while self.epoch < t.epochs:
            if self.batch_in_epoch == 0:
                phase = self.project.plan.phase_for_epoch(self.epoch)
                if (
                    self._scheduled_phase is None
                    or phase.to_dict() != self._scheduled_phase.to_dict()
                ):
                    self._scheduled_phase = phase
                    self._apply_plan(phase, "schedule")
                self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
            model.train()
            epoch_start = time.monotonic()
            images = 0
            for x, y in self._batches():
                self._boundary()
                x = x.to(self.device, non_blocking=non_blocking)
                y = y.to(self.device, non_blocking=non_blocking)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                self.optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    loss = self.criterion(logits_of(model(x)), y)
                if self.scaler:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                else:
                    loss.backward()
                self.step += 1
                self.probe.begin(self.step, self.epoch + 1)
                if t.grad_clip:
                    nn.utils.clip_grad_norm_(trainable_params(), t.grad_clip)
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.scheduler.step()
                self.batch_in_epoch += 1
                images += y.shape[0]
                record = self.probe.end()
                if record is not None:
                    self.folder.append("telemetry.jsonl", record.to_json())
                    self.emit(TelemetryEvent(record))
                self._pending_losses.append(loss.detach())
                self._pending_lrs.append(
                    t.lr * lr_factor(self.step - 1, self.total_steps, self.warmup_steps, t.schedule)
                )
                self._pending_steps.append((self.step, self.epoch + 1))
                if len(self._pending_losses) >= self.log_every:
                    self._flush_losses(rate=images / max(1e-9, time.monotonic() - epoch_start))
                if (
                    t.max_steps
                    and self.step >= t.max_steps
                    and self.batch_in_epoch < self.steps_per_epoch
                ):
                    raise _StopRequested("step-limit")
            self._flush_losses(rate=images / max(1e-9, time.monotonic() - epoch_start))
            seconds = time.monotonic() - epoch_start
            stop = self._end_epoch(images / max(1e-9, seconds), seconds)
            if stop:
                return "early-stopped"
            if t.max_steps and self.step >= t.max_steps:
                return "completed"
        return "completed"

    def _flush_losses(self, rate: float = 0.0, check: bool = True) -> None:
        """One device-to-host copy for the losses of several steps (no sync every step on GPU)."""
        if not self._pending_losses:
            return
        values = torch.stack(self._pending_losses).float().tolist()
        for value, lr, (step, epoch) in zip(values, self._pending_lrs, self._pending_steps):
            if check and not math.isfinite(value):
                self._pending_losses.clear()
                self._pending_lrs.clear()
                self._pending_steps.clear()
                raise _NonFiniteLoss(step, value)
            self.epoch_loss_sum += value
            self.epoch_loss_count += 1
            self.folder.append(
                "metrics.jsonl",
                {"type": "step", "step": step, "epoch": epoch, "loss": value, "lr": lr},
            )
            self.emit(StepEvent(step, epoch, value, lr, rate))
        self._pending_losses.clear()
        self._pending_lrs.clear()
        self._pending_steps.clear()

    @torch.no_grad()
    def _validate(self) -> tuple[float | None, float | None]:
        if self.loaders.val is None:
            return None, None
        assert self.model is not None
        model = self.model
        model.eval()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        for x, y in self.loaders.val:
            if self.control.stop_requested:
                # All batches are done, so a resumed run goes straight to this validation.
                raise _StopRequested
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = logits_of(model(x))
            total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            count += y.shape[0]
        model.train()
        if count == 0:
            return None, None
        return float(total_loss) / count, float(correct) / count

    def _end_epoch(self, images_per_s: float, seconds: float) -> bool:
        t = self.project.train
        val_loss, val_acc = self._validate()
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
            self._save_weights(self.folder.best_weights)
        else:
            self.stale_epochs += 1
        record = {
            "type": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "images_per_s": images_per_s,
            "seconds": seconds,
        }
        self.folder.append("metrics.jsonl", record)
        self.emit(
            EpochEvent(
                self.epoch, self.step, train_loss, val_loss, val_acc, images_per_s, seconds, is_best
            )
        )
        self._write_frozen_check(self.verifier.check(self.epoch, self.step))
        self._save_checkpoint()
        self.folder.flush()
        if (
            t.early_stop_patience
            and self.stale_epochs >= t.early_stop_patience
            and self.epoch < t.epochs
        ):
            self.emit(
                LogEvent(
                    f"early stop: no better {t.early_stop_metric} for {self.stale_epochs} epochs"
                )
            )
            return True
        return False

    def _write_frozen_check(self, check: FrozenCheck) -> None:
        self.last_check = check
        self.folder.append("frozen_check.jsonl", check.to_json())
        self.emit(FrozenCheckEvent(check))
        if not check.passed:
            self.emit(
                LogEvent(f"frozen check after epoch {check.epoch}: {check.summary()}", "warning")
            )
