"""Start, pause, stop and resume runs; drain each run's events into the views.

One run at a time, on a worker thread (gui/worker.py). The run gets a copy of the project;
freeze edits made in the tree during the run travel to it as commands, and the run reports
the plan in effect back (PlanApplied), which is what the tree, the summary line, the status
bar and the live columns then show; and whether it caches the frozen layers' output
(FeatureCacheEvent), which the line under the plots shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar

from freezer_app.core import events as ev
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.progress import RunProgress, duration
from freezer_app.core.project import Project
from freezer_app.gui.freeze_controller import FreezeController
from freezer_app.gui.plots import GradientFlowPlot, LossPlot, UpdateHeatmap
from freezer_app.gui.run_views import FeatureCacheView, FrozenCheckView, RunLog
from freezer_app.gui.taskbar import TaskbarProgress
from freezer_app.gui.tree_model import FreezeTreeModel
from freezer_app.gui.worker import TrainingSession


@dataclass
class RunViews:
    """What a run draws into (owned by the window)."""

    loss: LossPlot
    gradients: GradientFlowPlot
    updates: UpdateHeatmap
    frozen: FrozenCheckView
    cache: FeatureCacheView
    log: RunLog
    tree: FreezeTreeModel
    status: QStatusBar
    state: QLabel
    speed: QLabel
    device: QLabel
    progress_text: QLabel  # epoch k/n · step · elapsed · ETA
    progress_bar: QProgressBar


class RunController(QObject):
    started = Signal()
    finished = Signal(object)  # core.events.Finished
    failed = Signal(str, str, str)  # message, hint, details (the run could not start)
    ended = Signal()  # the worker thread has stopped, whatever the outcome

    def __init__(
        self, views: RunViews, freeze: FreezeController, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.views = views
        self.freeze = freeze
        self.session: TrainingSession | None = None
        self.run_dir: Path | None = None
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.epochs = 0
        self._speed = 0.0
        self._step = 0
        self.paused = False
        self._last_mask = None
        # What the run trained last, and how many freeze edits sent from the tree it applied
        # (they are in its folder, not in the project: the window says so at the end).
        self.model = ""
        self.last_plan: FreezePlan | None = None
        self.edits_sent = 0
        self.edits_applied = 0
        # Plots are redrawn from a timer, and only the one on screen: drawing is what costs,
        # so ~10 redraws a second keep the window responsive however fast steps arrive.
        self.redraw_timer = QTimer(self)
        self.redraw_timer.setInterval(100)
        # Where the run stands (core/progress.py); elapsed and ETA move between steps too.
        self.progress = RunProgress()
        self.taskbar = TaskbarProgress()
        self.progress_timer = QTimer(self)
        self.progress_timer.setInterval(1000)
        self.progress_timer.timeout.connect(self._show_progress)
        freeze.editForRun.connect(self._send_plan)

    # ------------------------------------------------------------------ commands
    @property
    def running(self) -> bool:
        return self.session is not None

    def start(self, project: Project, run_dir: Path, resume: bool = False) -> None:
        assert self.session is None
        self.run_dir = run_dir
        self._step, self.paused = 0, False
        self.model, self.last_plan = project.model, project.plan.selection()
        self.edits_sent = self.edits_applied = 0
        self.views.log.add(f"starting {'resumed ' if resume else ''}run in {run_dir}")
        session = TrainingSession(project, run_dir, resume=resume, parent=self)
        session.events.connect(self._on_events)
        session.finished.connect(self._on_finished)
        session.failed.connect(self._on_failed)
        session.ended.connect(self._on_ended)
        self.session = session
        self.freeze.run_started(project.plan.selection())
        self.redraw_timer.start()
        self.views.progress_text.setText("starting…")
        self.views.progress_bar.setRange(0, 0)  # busy until the run reports its length
        self.views.progress_bar.show()
        self.started.emit()
        session.start()

    def toggle_pause(self) -> None:
        if self.session is None:
            return
        worker = self.session.worker
        if worker.control.paused:
            worker.resume_run()
        else:
            worker.pause()

    def stop(self) -> None:
        if self.session is not None:
            self.session.worker.stop()
            self.views.state.setText("stopping…")
            self.views.status.showMessage(
                "Stopping after this step; a checkpoint will be saved.", 5000
            )

    def _send_plan(self, plan: FreezePlan) -> None:
        if self.session is not None:
            self.edits_sent += 1
            self.session.worker.set_plan(plan)
            self.views.status.showMessage(
                "Freeze edit sent: takes effect at the next training step", 4000
            )

    def clear_views(self) -> None:
        v = self.views
        v.loss.clear()
        v.frozen.clear()
        v.cache.clear()
        v.tree.clear_telemetry()
        v.gradients.clear_values()
        # The previous run's layers go too (a run that starts sets its own).
        v.gradients.set_layers([])
        v.updates.set_layers([])

    # ------------------------------------------------------------------ events
    def _on_events(self, batch: list) -> None:
        v = self.views
        steps: list[int] = []
        losses: list[float] = []
        lrs: list[float] = []
        last_telemetry = None
        for event in batch:
            if isinstance(event, ev.StepEvent):
                steps.append(event.step)
                losses.append(event.loss)
                lrs.append(event.lr)
                self._speed = event.images_per_s
                self.progress.on_step(event.step, event.images_per_s)
            elif isinstance(event, ev.TelemetryEvent):
                r = event.record
                v.updates.add(r.step, r.update_ratio, r.trainable)
                last_telemetry = r
            elif isinstance(event, ev.RunStarted):
                self._run_started(event)
            elif isinstance(event, ev.EpochEvent):
                v.loss.add_epoch(event.step, event.val_loss, event.val_acc)
                acc = f", val_acc {event.val_acc:.3f}" if event.val_acc is not None else ""
                v.log.add(
                    f"epoch {event.epoch}: train_loss {event.train_loss:.4f}{acc}, "
                    f"{event.images_per_s:.0f} img/s"
                )
            elif isinstance(event, ev.FrozenCheckEvent):
                v.frozen.add(event.check)
                v.log.add(f"frozen check: {event.check.summary()}")
            elif isinstance(event, ev.PlanApplied):
                # Telemetry measured under the previous plan must not be drawn under this one.
                self._flush_telemetry(last_telemetry)
                last_telemetry = None
                self._plan_applied(event)
            elif isinstance(event, ev.FeatureCacheEvent):
                # Its message is also a LogEvent (the log shows it); a plan change that moves
                # or drops the cut mid-run is worth the status bar too.
                if v.cache.add(event):
                    v.status.showMessage(event.message, 8000)
            elif isinstance(event, ev.PausedEvent):
                self.paused = event.paused
                self.progress.set_paused(event.paused)
            elif isinstance(event, ev.ErrorEvent):
                v.log.add(f"error at step {event.step}: {event.message}")
            elif isinstance(event, ev.LogEvent):
                v.log.add(event.message)
                if event.level in ("warning", "notice"):
                    v.status.showMessage(event.message, 8000)
        if steps:
            v.loss.add_steps(steps, losses, lrs)
            v.speed.setText(f"{self._speed:,.0f} images/s")
            self._step = steps[-1]
        if v.state.text() != "stopping…":
            v.state.setText("paused" if self.paused else "training")
        if steps or not self.progress_timer.isActive():
            self._show_progress()
        self._flush_telemetry(last_telemetry)

    def _flush_telemetry(self, record) -> None:
        if record is None:
            return
        v = self.views
        v.gradients.update_values(record.grad_mean_abs, record.grad_max, record.trainable)
        v.tree.update_telemetry(
            record.grad_norm,
            record.update_norm,
            record.weight_norm,
            record.trainable,
            self._last_mask,
        )

    def _show_progress(self) -> None:
        if self.session is None or not self.progress.total_steps:
            return
        now = self.progress.snapshot()
        v = self.views
        v.progress_text.setText(now.text(speed=False) if now.step else "starting…")
        if v.progress_bar.maximum() != 1000:
            v.progress_bar.setRange(0, 1000)
        v.progress_bar.setValue(round(now.fraction * 1000))
        # Long runs start below 1 %: a decimal shows that it moves.
        v.progress_bar.setFormat(
            f"{now.fraction:.1%}" if now.fraction < 0.1 else f"{now.fraction:.0%}"
        )
        v.progress_bar.setToolTip(now.text())
        self.taskbar.set_fraction(now.fraction)

    def _run_started(self, event: ev.RunStarted) -> None:
        # Only now: a run that cannot start leaves the previous run's plots on screen.
        self.clear_views()
        v = self.views
        self.steps_per_epoch, self.epochs = event.steps_per_epoch, event.epochs
        self.total_steps = event.total_steps
        self.progress.start(
            event.total_steps, event.steps_per_epoch, event.epochs, event.start_step
        )
        self.progress_timer.start()
        v.gradients.set_layers(event.layer_names)
        v.updates.set_layers(event.layer_names)
        v.tree.set_layer_names(event.layer_names)
        where = event.device if event.processes == 1 else f"{event.processes}× {event.device}"
        v.device.setText(f"device: {where} ({event.precision})")
        v.log.add(
            f"training {event.model} on {where} ({event.precision}): "
            f"{event.trainable_params:,} of {event.total_params:,} parameters train; "
            f"{event.steps_per_epoch} steps per epoch"
        )

    def _plan_applied(self, event: ev.PlanApplied) -> None:
        v = self.views
        self._last_mask = event.mask
        self.last_plan = event.plan.selection()
        if event.reason == "edit" and self.edits_sent:
            self.edits_applied += 1
        self.freeze.follow_run(event.plan, event.mask, event.reason)
        if event.reason in ("schedule", "edit"):
            label = f"{event.reason}: {event.plan.describe()}"
            v.loss.mark_plan_change(event.step, label)
            v.log.add(f"step {event.step}: {label} ({event.trainable_params:,} parameters train)")
            v.gradients.clear_values()
        elif event.reason == "refused":
            v.status.showMessage(event.message, 10000)

    def _on_finished(self, result: ev.Finished) -> None:
        self.finished.emit(result)

    def _on_failed(self, message: str, hint: str, details: str) -> None:
        self.views.log.add(f"error: {message}")
        self.failed.emit(message, hint, details)

    def _on_ended(self) -> None:
        self.session = None
        self.redraw_timer.stop()
        self.progress_timer.stop()
        self.freeze.run_ended()
        v = self.views
        v.state.setText("idle")
        v.progress_bar.hide()
        if self.progress.total_steps:
            last = self.progress.snapshot()
            v.progress_text.setText(
                f"last run: step {last.step}/{last.total_steps}, took {duration(last.elapsed_s)}"
            )
        else:
            v.progress_text.setText("")
        self.progress.total_steps = 0
        self.taskbar.set_fraction(None)
        self.ended.emit()
