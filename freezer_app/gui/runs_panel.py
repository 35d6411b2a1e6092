"""The Runs tab: the project's runs side by side (core/run_history.py reads them), the selected
runs' loss and validation-accuracy curves overlaid, and what can be done with a run: open it
(its plots, heat map, frozen check and evaluation shown again), resume, evaluate, export or
move it to the trash.

The panel only views run folders; `attach(window)` wires its requests to the window's own
paths (resume, evaluation, the export dialog), as a controller would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QSettings,
    QSortFilterProxyModel,
    Qt,
    QUrl,
    Signal,
)
from PySide6.QtGui import QColor, QDesktopServices, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core import events as ev
from freezer_app.core.run_folder import RunFolder, evaluation_split
from freezer_app.core.run_history import (
    Run,
    RunInfo,
    RunRecord,
    holds_run,
    mark_failed,
    plan_summary,
    read_record,
    read_run,
    read_runs,
    telemetry_arrays,
)
from freezer_app.gui import tasks
from freezer_app.gui.plots import Smoother
from freezer_app.gui.run_views import FAIL_COLOUR, NOTICE_COLOUR, QUIET_COLOUR
from freezer_app.gui.tree_model import FROZEN_COLOUR, TRAINABLE_COLOUR

if TYPE_CHECKING:
    from freezer_app.gui.main_window import MainWindow

# One colour per overlaid run (Tableau 10, which stays apart for common colour blindness).
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
STATUS_COLOURS = {
    "running": FROZEN_COLOUR.name(),
    "finished": TRAINABLE_COLOUR.name(),
    "stopped": NOTICE_COLOUR,
    "failed": FAIL_COLOUR,
    "crashed": FAIL_COLOUR,
    "unreadable": QUIET_COLOUR,
}
SORT_ROLE = Qt.ItemDataRole.UserRole + 1


class RunsModel(QAbstractTableModel):
    """The runs as rows; the colour of each run's curves (when overlaid) beside its name."""

    COLUMNS = ("Run", "Model", "Plan", "Started", "Epochs", "Best acc", "Frozen", "Status")
    TIPS = (
        "The run's folder",
        "The model it trained",
        "Its freeze plan: preset, freezes and unfreezes, gradual unfreezing, edits",
        "When it started",
        "Epochs done / planned",
        "Best validation accuracy",
        "The frozen check: were all frozen tensors bit-identical after every epoch?",
        "running, finished, stopped (resumable), failed or crashed (ended without saving)",
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs: list[Run] = []
        self.colours: dict[Path, str] = {}  # overlaid runs: their curve colour

    def set_runs(self, runs: list[Run]) -> None:
        self.beginResetModel()
        self.runs = list(runs)
        self.endResetModel()

    def set_colours(self, colours: dict[Path, str]) -> None:
        self.colours = dict(colours)
        if self.runs:
            self.dataChanged.emit(
                self.index(0, 0),
                self.index(len(self.runs) - 1, 0),
                [Qt.ItemDataRole.DecorationRole],
            )

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.runs)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.TIPS[section]
        return None

    def data(
        self,
        index: QModelIndex | QPersistentModelIndex,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if not index.isValid():
            return None
        info = self.runs[index.row()].info
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(info, column)
        if role == SORT_ROLE:
            return self._sort_key(info, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [str(info.path)]
            if info.started:
                lines.append(f"started {info.started_text()}")
            if info.model:
                lines.append(f"{info.model}, plan: {info.plan}")
            lines.append(f"{info.status}" + (f": {info.detail}" if info.detail else ""))
            return "\n".join(lines)
        if role == Qt.ItemDataRole.ForegroundRole:
            if column == 7:
                return QColor(STATUS_COLOURS.get(info.status, QUIET_COLOUR))
            if column == 6 and info.frozen_check == "failed":
                return QColor(FAIL_COLOUR)
            if not info.readable:
                return QColor(QUIET_COLOUR)
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            # Unselected runs get an invisible swatch: the column keeps its width either way.
            return QColor(self.colours.get(info.path, Qt.GlobalColor.transparent))
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (4, 5):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _text(info: RunInfo, column: int) -> str:
        if column == 0:
            return info.name
        if column == 1:
            return info.model.split(":", 1)[-1] if info.model.startswith("timm:") else info.model
        if column == 2:
            return info.plan
        if column == 3:
            return _short_date(info)
        if not info.readable:
            return info.status if column == 7 else ""
        if column == 4:
            return info.epochs_text()
        if column == 5:
            return info.best_text()
        if column == 6:
            return info.frozen_check
        return info.status

    @classmethod
    def _sort_key(cls, info: RunInfo, column: int) -> Any:
        if column == 3:
            return info.started.timestamp() if info.started else 0.0
        if column == 4:
            return info.epochs_done
        if column == 5:
            return -1.0 if info.best_val_acc is None else info.best_val_acc
        return cls._text(info, column).lower()


def _short_date(info: RunInfo) -> str:
    """ "11-24 19:32" this year, "2025-11-24" before (the full date in the tooltip)."""
    if info.started is None:
        return ""
    if info.started.year == datetime.now().year:
        return info.started.strftime("%m-%d %H:%M")
    return info.started.strftime("%Y-%m-%d")


class RunsPanel(QWidget):
    """The runs table, the overlay of the selected runs' curves, and the run actions."""

    openRequested = Signal(object)  # Path: show the run's plots as they were
    resumeRequested = Signal(object)  # Path
    evaluateRequested = Signal(object)  # Path
    exportRequested = Signal(object)  # Path

    def __init__(
        self,
        root: Callable[[], Path | None] = lambda: None,
        settings: QSettings | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.root = root  # where the project's runs are (asked at each refresh)
        self.settings = settings
        # Asked before an action: the folder a run trains in now (None: no run).
        self.live_run: Callable[[], Path | None] = lambda: None
        self._extra: list[Path] = []  # without settings: the folders added by hand
        self.failures: dict[Path, str] = {}  # runs seen ending in an error: their message
        self.task: tasks.Task | None = None
        self._refresh_again = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        top = QHBoxLayout()
        self.where = QLabel()
        self.where.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top.addWidget(self.where, 1)
        self.add_button = QPushButton("Add run folder…")
        self.add_button.setToolTip("List a run folder from anywhere beside the project's runs")
        self.refresh_button = QPushButton("Refresh")
        top.addWidget(self.add_button)
        top.addWidget(self.refresh_button)
        layout.addLayout(top)

        self.model = RunsModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(3, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)

        buttons = QHBoxLayout()
        self.open_button = _compact_button("Open")
        self.open_button.setToolTip(
            "Show this run's loss, gradient flow, heat map, frozen check and evaluation again"
        )
        self.resume_button = _compact_button("Resume")
        self.resume_button.setToolTip("Continue this run from its last checkpoint")
        self.evaluate_button = _compact_button("Evaluate")
        self.evaluate_button.setToolTip("Confusion matrix and per-class accuracy of this run")
        self.export_button = _compact_button("Export…")
        self.export_button.setToolTip("Export this run's model")
        self.delete_button = _compact_button("Delete…")
        self.delete_button.setToolTip("Move this run's folder to the trash")
        for b in (
            self.open_button,
            self.resume_button,
            self.evaluate_button,
            self.export_button,
            self.delete_button,
        ):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.hint = QLabel()
        self.hint.setStyleSheet(f"color: {QUIET_COLOUR}")
        # Long hints are cut, never widen the window (its full text is in the tooltip).
        self.hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        buttons.addWidget(self.hint)

        self.plots = pg.GraphicsLayoutWidget()
        self.loss = self.plots.addPlot(row=0, col=0)
        self.loss.setLabel("left", "train loss (smoothed)")
        self.loss.setLabel("bottom", "step")
        self.loss.showGrid(x=True, y=True, alpha=0.2)
        self.acc = self.plots.addPlot(row=1, col=0)
        self.acc.setLabel("left", "val accuracy")
        self.acc.setLabel("bottom", "epoch")
        self.acc.showGrid(x=True, y=True, alpha=0.2)
        self.acc.setYRange(0.0, 1.0, padding=0.02)
        self.acc.vb.enableAutoRange(y=False)
        for plot in (self.loss, self.acc):
            for side in ("left", "bottom"):
                plot.getAxis(side).enableAutoSIPrefix(False)
        # The legend in the plot area's own row: it never covers a curve.
        self.legend = pg.LegendItem(colCount=1, labelTextSize="9pt")
        self.plots.addItem(self.legend, row=2, col=0)
        self.plots.ci.layout.setRowStretchFactor(0, 3)
        self.plots.ci.layout.setRowStretchFactor(1, 2)
        self.empty = pg.TextItem(
            "Select runs above to compare their curves", color=QUIET_COLOUR, anchor=(0.5, 0.5)
        )
        self.loss.addItem(self.empty, ignoreBounds=True)
        # Curve items are made once, as many as ever shown together, and reused (setData).
        self._loss_items: list[pg.PlotDataItem] = []
        self._acc_items: list[pg.PlotDataItem] = []

        splitter = QSplitter(Qt.Orientation.Vertical)
        upper = QWidget()
        upper_layout = QVBoxLayout(upper)
        upper_layout.setContentsMargins(0, 0, 0, 0)
        upper_layout.addWidget(self.table, 1)
        upper_layout.addLayout(buttons)
        splitter.addWidget(upper)
        splitter.addWidget(self.plots)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        layout.addWidget(splitter, 1)

        self.add_button.clicked.connect(self.add_folder_dialog)
        self.refresh_button.clicked.connect(self.refresh)
        self.open_button.clicked.connect(lambda: self._request(self.openRequested))
        self.resume_button.clicked.connect(lambda: self._request(self.resumeRequested))
        self.evaluate_button.clicked.connect(lambda: self._request(self.evaluateRequested))
        self.export_button.clicked.connect(lambda: self._request(self.exportRequested))
        self.delete_button.clicked.connect(self.delete_current)
        self.table.doubleClicked.connect(lambda _i: self._request(self.openRequested))
        self.table.customContextMenuRequested.connect(self._context_menu)
        self.table.selectionModel().selectionChanged.connect(lambda *_a: self._selection_changed())
        self._selection_changed()

    # ------------------------------------------------------------------ the list
    @property
    def extra(self) -> list[Path]:
        """Run folders added by hand (kept in the settings)."""
        if self.settings is None:
            return list(self._extra)
        value = self.settings.value("runs/extra", [])
        if isinstance(value, str):
            value = [value]
        return [Path(str(v)) for v in (value or [])]

    def _set_extra(self, folders: list[Path]) -> None:
        if self.settings is None:
            self._extra = list(folders)
        else:
            self.settings.setValue("runs/extra", [str(p) for p in folders])

    def add_folder(self, folder: Path) -> bool:
        folder = Path(folder).expanduser()
        if not holds_run(folder):
            self.hint.setText(f"{folder.name}: not a run folder (no project.json or logs)")
            return False
        extra = [p for p in self.extra if p != folder] + [folder]
        self._set_extra(extra)
        self.refresh()
        return True

    def add_folder_dialog(self) -> None:
        start = self.root()
        folder = QFileDialog.getExistingDirectory(self, "Add a run folder", str(start or ""))
        if folder:
            self.add_folder(Path(folder))

    def refresh(self) -> None:
        """Read the runs again, in the background (many or long runs take a while)."""
        if self.task is not None:
            self._refresh_again = True  # once this one is done
            return
        root = self.root()
        root = root.expanduser().absolute() if root is not None else None
        extra = [p for p in self.extra if p.exists()]
        self.where.setText(f"Runs in <b>{root}</b>" if root else "Runs")
        self.where.setToolTip(str(root or ""))
        task = tasks.Task(
            lambda _progress, _cancelled: read_runs(root if root and root.is_dir() else None, extra)
        )
        task.signals.done.connect(self._listed)
        task.signals.failed.connect(self._list_failed)
        self.task = tasks.start(task)

    def _listed(self, runs: list[Run]) -> None:
        self.task = None
        selected = {r.info.path for r in self.selected_runs()}
        for run in runs:
            if run.info.path in self.failures:
                mark_failed(run.info, self.failures[run.info.path])
        self.model.set_runs(runs)
        # One model for every run: named once above the table, its column left out (room
        # for the others in a narrow tab).
        models = {r.info.model for r in runs if r.info.model}
        self.table.setColumnHidden(1, len(models) == 1)
        root = self.where.toolTip()
        one = f" — all {next(iter(models))}" if len(models) == 1 else ""
        self.where.setText(f"Runs in <b>{root}</b>{one}" if root else f"Runs{one}")
        self.table.resizeColumnsToContents()
        header = self.table.horizontalHeader()
        for column, most in ((0, 150), (1, 110), (2, 170)):
            header.resizeSection(column, min(header.sectionSize(column), most))
        self.select_paths(selected)
        if not runs:
            self.hint.setText("No runs yet: train, or add a run folder.")
        if self._refresh_again:
            self._refresh_again = False
            self.refresh()

    def _list_failed(self, message: str, hint: str, details: str) -> None:
        self.task = None
        self.hint.setText(message)

    def note_finished(self, result: ev.Finished | None) -> None:
        """A run of this window ended: list it as it is now (a failure with its message)."""
        if result is not None and result.reason == "error":
            self.failures[Path(result.run_dir)] = result.message
        self.refresh()

    # ------------------------------------------------------------------ selection
    def selected_runs(self) -> list[Run]:
        rows = sorted(
            self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()
        )
        return [self.model.runs[r] for r in rows if r < len(self.model.runs)]

    def current_run(self) -> Run | None:
        index = self.table.currentIndex()
        if index.isValid() and self.table.selectionModel().isRowSelected(index.row()):
            row = self.proxy.mapToSource(index).row()
            return self.model.runs[row] if row < len(self.model.runs) else None
        runs = self.selected_runs()
        return runs[0] if runs else None

    def select_paths(self, paths: set[Path]) -> None:
        selection = self.table.selectionModel()
        selection.clearSelection()
        flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
        for row, run in enumerate(self.model.runs):
            if run.info.path in paths:
                selection.select(self.proxy.mapFromSource(self.model.index(row, 0)), flags)
        self._selection_changed()

    def select_rows(self, rows: list[int] | range) -> None:
        """Select rows as shown (sorted), e.g. the two newest runs."""
        selection = self.table.selectionModel()
        selection.clearSelection()
        flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
        for row in rows:
            if row < self.proxy.rowCount():
                selection.select(self.proxy.index(row, 0), flags)
        self._selection_changed()

    def select_newest(self, n: int) -> None:
        """Overlay the first n runs as shown (newest first) that have curves."""
        rows = []
        for row in range(self.proxy.rowCount()):
            run = self.model.runs[self.proxy.mapToSource(self.proxy.index(row, 0)).row()]
            if run.curves.steps.size and len(rows) < n:
                rows.append(row)
        self.select_rows(rows)

    def _selection_changed(self) -> None:
        runs = self.selected_runs()
        self._overlay(runs)
        current = self.current_run()
        info = current.info if current is not None else None
        live = self.live_run()
        busy = live is not None
        folder = RunFolder(info.path) if info else None
        self.open_button.setEnabled(bool(info and info.readable) and not busy)
        self.resume_button.setEnabled(
            bool(info and folder and info.status in ("stopped", "crashed", "failed"))
            and bool(folder and folder.last_checkpoint.exists())
            and not busy
        )
        has_model = bool(folder and folder.weights.exists())
        self.evaluate_button.setEnabled(has_model)
        self.export_button.setEnabled(has_model and not busy)
        self.delete_button.setEnabled(
            bool(info and info.status != "running") and (info is None or info.path != live)
        )
        if len(runs) > 1:
            self.hint.setText(f"{len(runs)} runs overlaid")
        elif info is not None:
            self.hint.setText(info.detail if info.status != "finished" else "")
        else:
            self.hint.setText("Select runs (Ctrl/Shift-click) to overlay their curves")

    # ------------------------------------------------------------------ overlay
    def _overlay(self, runs: list[Run]) -> None:
        shown = [r for r in runs if r.curves.steps.size or r.curves.epoch_steps.size]
        while len(self._loss_items) < len(shown):
            self._loss_items.append(self.loss.plot())
            self._acc_items.append(self.acc.plot())
        self.legend.clear()
        plans = [r.info.plan for r in shown]
        colours: dict[Path, str] = {}
        for i, (loss_item, acc_item) in enumerate(zip(self._loss_items, self._acc_items)):
            if i >= len(shown):
                loss_item.setData([], [])
                acc_item.setData([], [])
                loss_item.setVisible(False)
                acc_item.setVisible(False)
                continue
            run = shown[i]
            colour = PALETTE[i % len(PALETTE)]
            # Past the palette, colours come round again with another dash: no two runs alike.
            dash = (Qt.PenStyle.SolidLine, Qt.PenStyle.DashLine, Qt.PenStyle.DotLine)[
                (i // len(PALETTE)) % 3
            ]
            colours[run.info.path] = colour
            c = run.curves
            finite = np.isfinite(c.losses)
            smooth = Smoother()(c.losses[finite]) if finite.any() else np.zeros(0)
            loss_item.setData(c.steps[finite], smooth, pen=pg.mkPen(colour, width=2, style=dash))
            epochs = np.arange(1, c.val_accs.size + 1)
            ok = np.isfinite(c.val_accs)
            acc_item.setData(
                epochs[ok],
                c.val_accs[ok],
                pen=pg.mkPen(colour, width=2, style=dash),
                symbol="o",
                symbolSize=6,
                symbolBrush=colour,
                symbolPen=colour,
            )
            loss_item.setVisible(True)
            acc_item.setVisible(True)
            label = run.info.plan or run.info.name
            if plans.count(run.info.plan) > 1:
                label = f"{label} ({run.info.name})"  # same plan twice: which run
            best = f", best {run.info.best_text()}" if run.info.best_val_acc is not None else ""
            self.legend.addItem(loss_item, f"{label}{best}")
        self.empty.setVisible(not shown)
        if not shown:
            self.empty.setPos(0.5, 0.5)
            self.loss.setRange(xRange=(0, 1), yRange=(0, 1))
        else:
            self.loss.enableAutoRange()
            epochs = max(r.curves.val_accs.size for r in shown)
            self.acc.setXRange(0.5, max(epochs, 1) + 0.5, padding=0)
            spacing = float(max(1, -(-epochs // 10)))  # whole epochs, at most ~10 labels
            self.acc.getAxis("bottom").setTickSpacing(spacing, spacing)
        self.model.set_colours(colours)

    # ------------------------------------------------------------------ actions
    def _request(self, signal: Any) -> None:
        run = self.current_run()
        if run is None:
            self.hint.setText("Select a run first.")
            return
        signal.emit(run.info.path)

    def delete_current(self) -> bool:
        """Move the selected run's folder to the trash, after asking; never a running run."""
        run = self.current_run()
        if run is None:
            return False
        info = run.info
        live = self.live_run()
        if info.status == "running" or (live is not None and info.path == live):
            QMessageBox.information(
                self,
                "The run is training",
                f"{info.name} is training now. Stop it first, then delete it.",
            )
            return False
        answer = QMessageBox.question(
            self,
            "Delete the run?",
            f"Move the run folder {info.path} to the trash?\n\nIts checkpoints, weights and "
            "logs go with it; the trash keeps them until it is emptied.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return False
        from PySide6.QtCore import QFile

        result = QFile.moveToTrash(str(info.path))
        ok = bool(result[0] if isinstance(result, tuple) else result)
        if not ok:
            QMessageBox.warning(
                self,
                "Cannot move to the trash",
                f"{info.path} could not be moved to the trash (no trash on that disk, or no "
                "permission). Nothing was deleted; remove the folder by hand if you want it gone.",
            )
            return False
        self._set_extra([p for p in self.extra if p != info.path])
        self.hint.setText(f"Moved {info.name} to the trash")
        self.refresh()
        return True

    def _context_menu(self, pos: QPoint) -> None:
        if self.current_run() is None:
            return
        menu = QMenu(self)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # one per right-click: not kept
        for button in (
            self.open_button,
            self.resume_button,
            self.evaluate_button,
            self.export_button,
        ):
            action = menu.addAction(button.text())
            action.setEnabled(button.isEnabled())
            action.triggered.connect(button.click)
        menu.addAction("Show in file manager", self._show_folder)
        menu.addSeparator()
        delete = menu.addAction(self.delete_button.text())
        delete.setEnabled(self.delete_button.isEnabled())
        delete.triggered.connect(self.delete_button.click)
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def _show_folder(self) -> None:
        run = self.current_run()
        if run is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(run.info.path)))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()  # runs may have come or gone while another tab was shown


def _compact_button(text: str) -> QToolButton:
    """A button as wide as its label: the row of five must not set the tab's (and so the
    window's) minimum width."""
    button = QToolButton()
    button.setText(text)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    return button


# ---------------------------------------------------------------------- the window's side
def attach(window: MainWindow) -> None:
    """Wire the window's Runs panel: its root is the project's runs folder, it refreshes
    when a run starts or ends, and its requests go to the window's own paths."""
    panel = window.runs_panel
    panel.root = lambda: window._runs_root()
    panel.live_run = lambda: window.run_dir if window.session is not None else None
    window.runFinished.connect(panel.note_finished)
    window.run_ctl.started.connect(panel._selection_changed)  # actions on the live run: off
    window.run_ctl.started.connect(panel.refresh)
    window.run_ctl.ended.connect(panel._selection_changed)
    panel.openRequested.connect(lambda path: show_run(window, path))
    panel.resumeRequested.connect(lambda path: _resume(window, path))
    panel.evaluateRequested.connect(lambda path: evaluate_run(window, path))
    panel.exportRequested.connect(lambda path: _export(window, path))


def _busy(window: MainWindow, what: str) -> bool:
    if window.session is None:
        return False
    window.statusBar().showMessage(f"{what} when the run has finished (or stop it).", 5000)
    return True


def _resume(window: MainWindow, path: Path) -> None:
    if not _busy(window, "Resume a run") and window._maybe_save():
        window.resume_run(path)


def _export(window: MainWindow, path: Path) -> None:
    from freezer_app.gui.export_dialog import ExportDialog

    if _busy(window, "Export"):
        return
    dialog = ExportDialog(path, window)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # freed when closed
    dialog.open()


def _run_data(window: MainWindow, path: Path) -> tuple[str, float | None, int]:
    """The images a run is scored on: its own data folder (the project's when that is gone),
    without the images it trained on."""
    data = ""
    with contextlib.suppress(Exception):
        import json

        data = str(json.loads((path / "project.json").read_text())["data"]["path"])
    if not data or not Path(data).is_dir():
        data = window.project.data.path
    split, seed = evaluation_split(path, data) if data else (None, 0)
    return data, split, seed


def evaluate_run(window: MainWindow, path: Path, show: bool = True) -> None:
    view = window.evaluate_view
    if view.task is not None:
        window.statusBar().showMessage("An evaluation is running; try again when it ends.", 5000)
        return
    view.set_source(path, *_run_data(window, path))
    if show:
        window.right.setCurrentWidget(view)
    view.run()


def show_run(window: MainWindow, path: Path) -> None:
    """Show a finished (or stopped) run as it was: its loss and learning rate, gradient flow
    and update heat map from its telemetry, its frozen checks and a summary in the log, and
    its evaluation on its own validation images. Read in the background."""
    if _busy(window, "Open a run"):
        return
    window.statusBar().showMessage(f"Reading {path.name}…")
    task = tasks.Task(lambda _p, _c: (read_run(path), read_record(path)))
    task.signals.done.connect(lambda result: _show_record(window, path, *result))
    task.signals.failed.connect(
        lambda message, hint, details: window.error_dialog(
            "Cannot open the run", message, hint, details
        )
    )
    tasks.start(task)


def _show_record(window: MainWindow, path: Path, run: Run, record: RunRecord) -> None:
    if window.session is not None:
        return  # a run started meanwhile: its views are its own
    info, c = run.info, run.curves
    window.run_ctl.clear_views()
    plots = window.loss_plot
    ok = np.isfinite(c.losses)
    plots.add_steps(c.steps[ok].tolist(), c.losses[ok].tolist(), c.lrs[ok].tolist())
    for step, val_loss, val_acc in zip(c.epoch_steps, c.val_losses, c.val_accs):
        if np.isfinite(val_loss) and np.isfinite(val_acc):
            plots.add_epoch(int(step), float(val_loss), float(val_acc))
    for change in record.plans:
        if change.get("reason") in ("schedule", "edit") and isinstance(change.get("plan"), dict):
            label = f"{change['reason']}: {plan_summary(change['plan'])}"
            plots.mark_plan_change(int(change.get("step", 0)), label)
    if record.layers:
        window.grad_plot.set_layers(record.layers)
        window.heatmap.set_layers(record.layers)
        last = None
        for r in record.telemetry:
            last = telemetry_arrays(r)
            window.heatmap.add(int(r.get("step", 0)), last["update_ratio"], last["trainable"])
        if last is not None:
            window.grad_plot.update_values(
                last["grad_mean_abs"], last["grad_max"], last["trainable"]
            )
    for check in record.frozen_checks:
        window.frozen_view.add(check)
    log = window.log
    log.add(f"opened run {path}: {info.model}, plan {info.plan}")
    for step, val_loss, val_acc in zip(c.epoch_steps, c.val_losses, c.val_accs):
        acc = f", val_acc {val_acc:.3f}" if np.isfinite(val_acc) else ""
        loss = f"val_loss {val_loss:.4f}" if np.isfinite(val_loss) else "no validation"
        log.add(f"  step {int(step)}: {loss}{acc}")
    status = info.status + (f" ({info.detail})" if info.detail else "")
    log.add(
        f"  {info.epochs_text()} epochs, {info.steps} steps, best val_acc "
        f"{info.best_text() or 'n/a'}, frozen check {info.frozen_check}, {status}"
    )
    for note in record.notes:
        log.add(f"  note: {note}")
    window.redraw_all()
    window.right.setCurrentWidget(window.loss_plot)
    window.statusBar().showMessage(f"Showing run {path.name} as it was ({status})", 10000)
    if RunFolder(path).weights.exists() and _run_data(window, path)[0]:
        evaluate_run(window, path, show=False)
