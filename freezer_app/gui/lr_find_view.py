"""The learning-rate finder's dialog: runs core/lr_find.py's range test on a background thread,
plots the loss against the learning rate as it comes, marks the suggestions (steepest descent
and valley) and sets the project's learning rate to the suggestion in one undoable edit.

Opened by the Training form's "Find learning rate…" button (`open_lr_finder`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.errors import FreezerError
from freezer_app.core.lr_find import (
    CANCELLED,
    DIVERGED,
    NON_FINITE,
    STEPS,
    LrFindResult,
    LrPoint,
    find_lr,
)
from freezer_app.core.project import Project
from freezer_app.gui import tasks
from freezer_app.gui.plots import Series
from freezer_app.gui.project_controller import ProjectController

RAW_RGB = "#b0bec5"
SMOOTH_RGB = "#1565c0"
STEEPEST_RGB = "#ef6c00"
VALLEY_RGB = "#2e7d32"


def short_lr(lr: float) -> str:
    """A rate as people write it: 3.2e-4, 0.01, 1e-3."""
    text = f"{lr:.1e}"  # 3.2e-04
    mantissa, exponent = text.split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    exp = int(exponent)
    if -3 <= exp <= 3:
        return f"{float(f'{lr:.2g}'):g}"
    return f"{mantissa}e{exp}"


def rounded_lr(lr: float) -> float:
    """The suggestion to two significant digits: what the button says is what is set."""
    return float(f"{lr:.2g}")


class LrAxis(pg.AxisItem):
    """The log axis's labels in one style (1e-6, 1e-4, 0.01, 1) rather than pyqtgraph's mix."""

    def logTickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        return [short_lr(10 ** float(v) * scale) for v in values]


class LrFindPlot(QWidget):
    """Loss (raw and smoothed) against the learning rate on a log axis, and the suggestions.

    Items are made once; points arrive with `add` and are drawn by `redraw` (a timer)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.view = pg.PlotWidget(axisItems={"bottom": LrAxis("bottom")})
        layout.addWidget(self.view)
        plot = self.plot = self.view.getPlotItem()
        plot.setLogMode(x=True, y=False)
        plot.setLabel("bottom", "learning rate")
        plot.setLabel("left", "training loss")
        plot.showGrid(x=True, y=True, alpha=0.2)
        plot.setMenuEnabled(False)
        # Bottom left: a range test's curve starts high on the left and blows up on the right.
        self.legend = plot.addLegend(
            offset=(10, -10), brush=pg.mkBrush(255, 255, 255, 230), pen=pg.mkPen("#cfd8dc")
        )
        self.raw = plot.plot(pen=pg.mkPen(RAW_RGB, width=1), name="loss (step)")
        self.smooth = plot.plot(pen=pg.mkPen(SMOOTH_RGB, width=2.5), name="loss (smoothed)")
        # A marker per suggestion (a point on the smoothed curve, legend entry with its
        # value) and a dashed vertical line through it.
        self.steepest = plot.plot(
            pen=None,
            symbol="t",
            symbolSize=13,
            symbolBrush=STEEPEST_RGB,
            symbolPen=pg.mkPen("w", width=1),
            name="steepest descent",
        )
        self.valley = plot.plot(
            pen=None,
            symbol="o",
            symbolSize=13,
            symbolBrush=VALLEY_RGB,
            symbolPen=pg.mkPen("w", width=1),
            name="valley (suggested)",
        )
        self.steepest_line = pg.InfiniteLine(
            angle=90, pen=pg.mkPen(STEEPEST_RGB, width=1.5, style=Qt.PenStyle.DashLine)
        )
        self.valley_line = pg.InfiniteLine(
            angle=90, pen=pg.mkPen(VALLEY_RGB, width=1.5, style=Qt.PenStyle.DashLine)
        )
        for line in (self.steepest_line, self.valley_line):
            line.setVisible(False)
            plot.addItem(line, ignoreBounds=True)
        self.lrs, self.losses, self.smoothed = Series(256), Series(256), Series(256)
        self._pending: list[LrPoint] = []
        self.span = (1e-7, 10.0)

    # ------------------------------------------------------------------ data
    def start(self, start_lr: float, end_lr: float) -> None:
        """An empty plot spanning the rates the test will sweep."""
        self.span = (start_lr, end_lr)
        for series in (self.lrs, self.losses, self.smoothed):
            series.clear()
        self._pending.clear()
        for item in (self.raw, self.smooth, self.steepest, self.valley):
            item.setData([], [])
        self._name(self.steepest, "steepest descent")
        self._name(self.valley, "valley (suggested)")
        for line in (self.steepest_line, self.valley_line):
            line.setVisible(False)
        # In log mode the view's x coordinates are log10(lr).
        self.plot.setXRange(math.log10(start_lr), math.log10(end_lr), padding=0.02)
        self.plot.enableAutoRange(y=True)

    def add(self, point: LrPoint) -> None:
        self._pending.append(point)

    @property
    def count(self) -> int:
        return self.lrs.n + len(self._pending)

    def redraw(self) -> None:
        if not self._pending:
            return
        points, self._pending = self._pending, []
        self.lrs.extend([p.lr for p in points])
        self.losses.extend([p.loss for p in points])
        self.smoothed.extend([p.smoothed for p in points])
        self.raw.setData(self.lrs.values, self.losses.values)
        self.smooth.setData(self.lrs.values, self.smoothed.values)
        self._fit_y()

    def _fit_y(self) -> None:
        """The falling part readable: the final blow-up (up to 4× the best loss, and the raw
        steps far above it) runs off the top instead of squashing the curve."""
        smoothed, raw = self.smoothed.values, self.losses.values
        lo = float(min(smoothed.min(), np.percentile(raw, 5)))
        best = float(smoothed.min())
        hi = float(max(smoothed[0], min(float(smoothed.max()), 1.6 * best)))
        hi = max(hi, float(np.percentile(raw[: max(1, len(raw) // 2)], 95)))
        pad = 0.08 * max(hi - lo, 1e-6)
        self.plot.setYRange(lo - pad, hi + pad, padding=0)

    def show_result(self, result: LrFindResult) -> None:
        """Every point of the result, and its suggestions marked."""
        self._pending = list(result.points[self.lrs.n :])
        self.redraw()
        for lr, item, line, label in (
            (result.steepest_lr, self.steepest, self.steepest_line, "steepest descent"),
            (result.valley_lr, self.valley, self.valley_line, "valley (suggested)"),
        ):
            point = result.point_near(lr)
            if lr is None or point is None:
                continue
            item.setData([point.lr], [point.smoothed])
            self._name(item, f"{label}: {short_lr(lr)}")
            line.setPos(math.log10(lr))
            line.setVisible(True)

    def _name(self, item: pg.PlotDataItem, text: str) -> None:
        """The legend's label of `item` (pyqtgraph keeps it in the legend's LabelItem)."""
        for sample, label in self.legend.items:
            if sample.item is item:
                label.setText(text)


class LrFindDialog(QDialog):
    """The range test of the project: the plot, what it is doing, Stop, Run again and
    "Use <rate>", which sets `train.lr` through the project controller (one undoable edit)."""

    finished_test = Signal(object)  # the LrFindResult, or None when it failed
    test_started = Signal(object)  # the tasks.Task of each test (the first, and Run again)
    steps = STEPS  # of each test (tests shorten it)

    def __init__(
        self,
        controller: ProjectController,
        project: Project,
        report: Any = None,
        trust: Any = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Find learning rate")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.controller = controller
        self.project = project  # a snapshot: the window's project is not shared with a thread
        self.report = report
        self.trust = trust
        self.task: tasks.Task | None = None
        self.result: LrFindResult | None = None
        layout = QVBoxLayout(self)
        intro = QLabel(
            "A short training run with the learning rate growing step by step, with the "
            "current freeze plan and optimizer. Pick a rate where the loss falls steeply, "
            "before it turns up. The model's weights are not changed."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.plot = LrFindPlot()
        layout.addWidget(self.plot, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        buttons = QHBoxLayout()
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.cancel)
        self.again_button = QPushButton("Run again")
        self.again_button.clicked.connect(lambda: self.start())
        self.use_button = QPushButton("Use")
        self.use_button.setDefault(True)
        self.use_button.clicked.connect(self.use_suggestion)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.again_button)
        buttons.addStretch(1)
        buttons.addWidget(self.use_button)
        buttons.addWidget(self.close_button)
        layout.addLayout(buttons)
        self.timer = QTimer(self)
        self.timer.setInterval(33)  # ~30 Hz, as the run's plots
        self.timer.timeout.connect(self.plot.redraw)
        self.resize(720, 520)
        self._set_busy(False)
        self.use_button.setEnabled(False)

    # ------------------------------------------------------------------ the test
    @property
    def running(self) -> bool:
        return self.task is not None

    def start(self) -> None:
        if self.task is not None:
            return
        from freezer_app.core import lr_find

        steps, project, report, trust = self.steps, self.project, self.report, self.trust
        self.result = None
        self.use_button.setText("Use")
        self.use_button.setEnabled(False)
        self.plot.start(lr_find.START_LR, lr_find.END_LR)
        self.status.setText("Building the model and loading the data…")

        def work(progress: Any, should_cancel: Any) -> LrFindResult:
            def on_point(point: LrPoint) -> None:
                task.partial(point)
                progress(point.step, steps)

            return find_lr(
                project,
                steps=steps,
                on_point=on_point,
                should_cancel=should_cancel,
                report=report,
                trust=trust,
            )

        task = tasks.Task(work)
        task.signals.partial.connect(self._point)
        task.signals.done.connect(self._done)
        task.signals.failed.connect(self._failed)
        self.task = task
        self._set_busy(True)
        self.timer.start()
        tasks.start(task)
        self.test_started.emit(task)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.status.setText("Stopping…")

    def _point(self, point: LrPoint) -> None:
        self.plot.add(point)
        self.status.setText(
            f"step {point.step}: learning rate {short_lr(point.lr)}, loss {point.smoothed:.4f}"
        )

    def _done(self, result: LrFindResult) -> None:
        self._finish()
        self.result = result
        self.plot.show_result(result)
        why = {
            DIVERGED: "stopped when the loss blew up",
            NON_FINITE: "stopped when the loss became NaN or infinite",
            CANCELLED: "stopped",
        }.get(result.stopped, "done")
        if result.suggested_lr is None:
            self.status.setText(
                f"{len(result.points)} steps ({why}): too few to suggest a learning rate."
            )
        else:
            lr = rounded_lr(result.suggested_lr)
            self.status.setText(
                f"{len(result.points)} steps ({why}). Suggested learning rate {short_lr(lr)} "
                f"(valley; steepest descent at {short_lr(result.steepest_lr or lr)})."
            )
            self.use_button.setText(f"Use {short_lr(lr)}")
            self.use_button.setToolTip(f"Set the learning rate to {short_lr(lr)} (undoable)")
            self.use_button.setEnabled(True)
        self.finished_test.emit(result)

    def _failed(self, message: str, hint: str, details: str) -> None:
        self._finish()
        self.status.setText(f"The range test failed: {message}" + (f"\n{hint}" if hint else ""))
        if details:
            self.status.setToolTip(details)
        self.finished_test.emit(None)

    def _finish(self) -> None:
        self.task = None
        self.timer.stop()
        self.plot.redraw()
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        self.stop_button.setEnabled(busy)
        self.again_button.setEnabled(not busy)

    # ------------------------------------------------------------------ the suggestion
    def use_suggestion(self) -> bool:
        """Set the project's learning rate to the suggestion: one undoable edit."""
        if self.result is None or self.result.suggested_lr is None:
            return False
        lr = rounded_lr(self.result.suggested_lr)
        try:
            self.controller.set_value("train.lr", lr, f"Set learning rate to {short_lr(lr)}")
        except FreezerError as e:
            self.status.setText(e.message)
            return False
        self.status.setText(f"The learning rate is now {short_lr(lr)} (Edit ▸ Undo restores it).")
        return True

    def closeEvent(self, event: Any) -> None:
        self._stop_with_the_dialog()
        super().closeEvent(event)

    def done(self, result: int) -> None:
        # Esc and the dialog's buttons end here (Qt sends no closeEvent for them).
        self._stop_with_the_dialog()
        super().done(result)

    def _stop_with_the_dialog(self) -> None:
        """The test stops with the dialog; its thread ends at the next step."""
        if self.task is not None:
            signals = self.task.signals
            signals.partial.disconnect(self._point)
            signals.done.disconnect(self._done)
            signals.failed.disconnect(self._failed)
            self.task.cancel()
            self.task = None
        self.timer.stop()


LR_TEST_STOPPING = "The learning-rate test is still stopping; try again in a moment."


def open_lr_finder(window: Any) -> LrFindDialog | None:
    """The Training form's "Find learning rate…": check the project as Train does, then open
    the dialog and start the test. None (with a message) when it cannot run now."""
    from freezer_app.core.catalog import check_code
    from freezer_app.gui.worker import WINDOW_TRUST

    if window._running():
        window.statusBar().showMessage("The learning rate finder waits for the run to end.", 5000)
        return None
    if window.lr_find_task is not None:
        window.statusBar().showMessage(LR_TEST_STOPPING, 5000)
        return None
    if window.scan_task is not None:
        window.statusBar().showMessage("Still checking the dataset; try again in a moment.", 5000)
        return None
    if window.report is None:
        window.say_data_problem()
        return None
    project = window.project_ctl.snapshot()
    try:
        project.validate()
        # Asked here, on the GUI thread: the test's thread runs only a .py allowed before.
        check_code(project.model, window._code_trust(model=project.model))
    except FreezerError as e:
        window.error_dialog("Cannot find a learning rate", e.message, e.hint or "")
        return None
    dialog = LrFindDialog(window.project_ctl, project, window.report, WINDOW_TRUST, window)
    # Window-modal: no training starts, and no setting changes, under a running test.
    dialog.setWindowModality(Qt.WindowModality.WindowModal)
    dialog.test_started.connect(lambda task: _track(window, task))
    dialog.show()
    dialog.start()
    return dialog


def _track(window: Any, task: tasks.Task) -> None:
    """Each test's thread may outlive the dialog (it stops at its next step): until it has
    ended, no run or second test starts beside it (same device, same random generators)."""
    window.lr_find_task = task

    def ended(*_args: object) -> None:
        if window.lr_find_task is task:
            window.lr_find_task = None

    task.signals.done.connect(ended)
    task.signals.failed.connect(ended)


__all__ = ["LrFindDialog", "LrFindPlot", "open_lr_finder", "rounded_lr", "short_lr"]
