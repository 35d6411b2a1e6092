"""The main window: widgets, actions, menus and layout persistence.

The project is owned by the project controller (gui/project_controller.py), runs by the run
controller (gui/run_controller.py), freeze edits by the freeze controller; the window builds
the widgets and wires them together.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSplitter,
    QTabWidget,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from freezer_app import __version__
from freezer_app.core import events as ev
from freezer_app.core import timeline
from freezer_app.core.catalog import (
    LoadedModel,
    check_code,
    preview_model,
    resolve_source,
)
from freezer_app.core.data import DataReport, scan_folder
from freezer_app.core.device import device_label, select_device
from freezer_app.core.errors import Cancelled, FreezerError
from freezer_app.core.freeze import FreezePlan, Phase
from freezer_app.core.project import Project
from freezer_app.core.run_folder import evaluation_split, is_run_folder, new_run_dir
from freezer_app.core.train import launcher
from freezer_app.core.tree import ModelTree
from freezer_app.core.trust import CodeTrust
from freezer_app.core.weights import check_fit, read_shapes
from freezer_app.gui import guide, tasks
from freezer_app.gui.evaluate_view import IMAGE_SUFFIXES, EvaluateView
from freezer_app.gui.export_dialog import ExportDialog
from freezer_app.gui.freeze_controller import FreezeController
from freezer_app.gui.lr_find_view import LR_TEST_STOPPING, open_lr_finder
from freezer_app.gui.panels import DataPanel, ModelPanel, TrainingPanel
from freezer_app.gui.plots import GradientFlowPlot, LossPlot, UpdateHeatmap
from freezer_app.gui.project_controller import ProjectController, touches
from freezer_app.gui.run_controller import RunController, RunViews
from freezer_app.gui.run_views import FeatureCacheView, FrozenCheckView, RunLog
from freezer_app.gui.runs_panel import RunsPanel
from freezer_app.gui.runs_panel import attach as attach_runs_panel
from freezer_app.gui.tree_model import FreezeTreeModel, human
from freezer_app.gui.tree_view import TreePanel
from freezer_app.gui.trust_dialog import ask_to_run
from freezer_app.gui.worker import TrainingSession

MAX_RECENT = 8


def icon() -> QIcon:
    from importlib.resources import files

    return QIcon(str(files("freezer_app.resources") / "freezer.svg"))


def default_runs_dir() -> Path:
    """Where runs of an unsaved project go (a saved project keeps them in its own runs/)."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
    return Path(base or Path.home() / ".local" / "share") / "freezer" / "runs"


class MainWindow(QMainWindow):
    """Widgets, actions, menus and layout. The project lives in `project_ctl`, runs in
    `run_ctl`, freeze edits in `controller`; the window wires them to the views."""

    runFinished = Signal(object)  # core.events.Finished (also after a setup failure: None)
    datasetChecked = Signal(object)  # DataReport or None

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or QSettings("Freezer", "freezer-app")
        self.setWindowTitle("Freezer")
        self.setWindowIcon(icon())
        self.project_ctl = ProjectController(self)
        self.report: DataReport | None = None
        self.loaded: LoadedModel | None = None
        self._preview_key: tuple | None = None
        self._user_models: set[str] = set()  # FILE.py:CALLABLE strings the user chose here
        self.close_when_stopped = False
        # Screenshots run without anyone to answer: questions are answered No, errors printed.
        self.interactive = True
        self.trust_code = False  # --trust-code: run model code named by files without asking
        self.scan_task: tasks.Task | None = None
        # The learning-rate test on its thread (gui/lr_find_view.py), until it has ended.
        self.lr_find_task: tasks.Task | None = None
        self._resumed_runs_root: Path | None = None  # set by resume_run
        # The model preview being built in the background (None: the tree shown is current),
        # and what it is for: (model, weights, num_classes) and, for a model the user just
        # picked, the undo label of the edit that makes it the project's once it is built.
        self.preview_task: tasks.Task | None = None
        self._preview_want: tuple[tuple, str | None] | None = None
        self.last_finished: ev.Finished | None = None
        # The plan a run ended with after freeze edits made in the tree during it (and the
        # model it trained): not the project's until "Keep the run's last plan".
        self._run_plan: tuple[str, FreezePlan] | None = None
        self._form_error = ""  # the last value a form refused, while the status bar says so

        # ---------------------------------------------------------------- widgets
        self.tree_model = FreezeTreeModel()
        self.controller = FreezeController(self.tree_model, self.project_ctl, self)
        self.model_panel = ModelPanel()
        self.data_panel = DataPanel(self.project_ctl)
        self.settings_panel = TrainingPanel(self.project_ctl)
        self.tree_panel = TreePanel(self.controller)
        self.left = QTabWidget()
        self.left.addTab(self.model_panel, "Model")
        self.left.addTab(self.data_panel, "Data")
        self.left.addTab(self.settings_panel, "Training")
        self.loss_plot = LossPlot()
        self.grad_plot = GradientFlowPlot()
        self.heatmap = UpdateHeatmap()
        self.frozen_view = FrozenCheckView()
        self.evaluate_view = EvaluateView()
        self.log = RunLog()
        self.right = QTabWidget()
        self.right.addTab(self.loss_plot, "Loss")
        self.right.addTab(self.grad_plot, "Gradient flow")
        self.right.addTab(self.heatmap, "Weight updates")
        self.right.addTab(self.frozen_view, "Frozen check")
        self.right.addTab(self.evaluate_view, "Evaluate")
        self.right.addTab(self.log, "Log")
        self.runs_panel = RunsPanel(settings=self.settings)  # the runs side by side
        self.right.addTab(self.runs_panel, "Runs")
        # The run's area: its tabs, and under them (beside the plan's summary line) whether
        # the run caches the frozen layers' output, whichever tab is open.
        self.cache_view = FeatureCacheView()
        run_area = QWidget()
        run_layout = QVBoxLayout(run_area)
        run_layout.setContentsMargins(0, 0, 0, 0)
        run_layout.setSpacing(2)
        run_layout.addWidget(self.right, 1)
        run_layout.addWidget(self.cache_view)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        for w in (self.left, self.tree_panel, run_area):
            self.splitter.addWidget(w)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 5)
        self.splitter.setStretchFactor(2, 4)
        self.splitter.setSizes([300, 720, 580])
        self.setCentralWidget(self.splitter)
        self.setAcceptDrops(True)

        self._build_actions()
        self._build_status_bar()
        self.run_ctl = RunController(
            RunViews(
                loss=self.loss_plot,
                gradients=self.grad_plot,
                updates=self.heatmap,
                frozen=self.frozen_view,
                cache=self.cache_view,
                log=self.log,
                tree=self.tree_model,
                status=self.statusBar(),
                state=self.status_state,
                progress_text=self.status_progress,
                progress_bar=self.status_progress_bar,
                speed=self.status_speed,
                device=self.status_device,
            ),
            self.controller,
            self,
        )
        self._set_running(False)
        self._connect()
        self._restore_settings()
        # "1 Choose images → 2 Pick a model → 3 Train" above the main area until done.
        self.steps_strip = guide.install_steps_strip(self)
        self.data_panel.last_dir = self._last_dir("data")
        self.model_panel.last_dir = self._last_dir("model")
        self.new_project(confirm=False)

    # ================================================================== state others own
    @property
    def project(self) -> Project:
        return self.project_ctl.project

    @property
    def project_path(self) -> Path | None:
        return self.project_ctl.path

    @property
    def dirty(self) -> bool:
        return self.project_ctl.dirty

    @property
    def session(self) -> TrainingSession | None:
        return self.run_ctl.session

    @property
    def run_dir(self) -> Path | None:
        return self.run_ctl.run_dir

    # ================================================================== actions & menus
    def _action(
        self, text: str, slot, shortcut: QKeySequence | str | None = None, tip: str = ""
    ) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(f"{tip} ({action.shortcut().toString()})" if shortcut else tip)
        # triggered(bool) carries `checked`: slots get no arguments, so nothing leaks into them.
        action.triggered.connect(lambda _checked=False: slot())
        return action

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        self.act_new = self._action(
            "&New project", lambda: self.new_project(), K.New, "Start a new project"
        )
        self.act_open = self._action(
            "&Open project…", self.open_project_dialog, K.Open, "Open a project.json"
        )
        self.act_save = self._action("&Save project", self.save_project, K.Save, "Save the project")
        self.act_save_as = self._action(
            "Save project &as…", self.save_project_as, K.SaveAs, "Save the project under a new name"
        )
        self.act_quit = self._action("&Quit", self.close, K.Quit)
        self.act_train = self._action(
            "&Train", self.start_training, "Ctrl+Return", "Start training"
        )
        self.act_pause = self._action(
            "&Pause", self.toggle_pause, "Ctrl+P", "Pause or resume training"
        )
        self.act_stop = self._action(
            "St&op", self.stop_training, "Ctrl+.", "Stop after this step and save a checkpoint"
        )
        self.act_resume_run = self._action(
            "Resume a stopped run…",
            self.resume_run_dialog,
            None,
            "Continue a run folder from its checkpoint",
        )
        self.act_keep_run_plan = self._action(
            "&Keep the run's last plan",
            self.keep_run_plan,
            None,
            "Make the freeze plan the last run ended with (after its freeze edits) the "
            "project's, as one undoable edit",
        )
        self.act_filter = self._action(
            "Filter modules", lambda: self.tree_panel.filter.setFocus(), "Ctrl+F"
        )
        self.act_copy_code = self._action(
            "Copy PyTorch code",
            self.tree_panel._copy_code,
            "Ctrl+Shift+C",
            "Copy code that reproduces the freeze plan",
        )
        self.act_open_run = self._action(
            "Open run folder", self.open_run_folder, None, "Show the last run's folder"
        )
        self.act_export = self._action(
            "&Export…",
            self.export_dialog,
            "Ctrl+E",
            "Export the trained model for timm, torchvision, TorchScript or ONNX",
        )
        self.act_evaluate = self._action(
            "E&valuate",
            self.evaluate_last_run,
            "Ctrl+Shift+E",
            "Confusion matrix and per-class accuracy of the last run",
        )
        self.act_undo = self.project_ctl.undo_stack.createUndoAction(self, "&Undo")
        self.act_undo.setShortcut(K.Undo)
        self.act_redo = self.project_ctl.undo_stack.createRedoAction(self, "&Redo")
        # Ctrl+Shift+Z everywhere, and the platform's own Redo (Ctrl+Y on Windows) as well.
        redo_keys = [QKeySequence("Ctrl+Shift+Z"), QKeySequence(K.Redo)]
        self.act_redo.setShortcuts(list(dict.fromkeys(redo_keys)))

        menu = self.menuBar().addMenu("&File")
        for a in (self.act_new, self.act_open):
            menu.addAction(a)
        self.recent_menu = menu.addMenu("Open &recent")
        for a in (self.act_save, self.act_save_as):
            menu.addAction(a)
        menu.addSeparator()
        menu.addAction(self.act_export)
        menu.addSeparator()
        menu.addAction(self.act_quit)
        edit = self.menuBar().addMenu("&Edit")
        for a in (self.act_undo, self.act_redo, self.act_filter, self.act_copy_code):
            edit.addAction(a)
        run = self.menuBar().addMenu("&Run")
        for a in (
            self.act_train,
            self.act_pause,
            self.act_stop,
            self.act_resume_run,
            self.act_keep_run_plan,
            self.act_evaluate,
            self.act_open_run,
        ):
            run.addAction(a)
        help_menu = self.menuBar().addMenu("&Help")
        self.act_quick_guide = self._action(
            "&Quick guide",
            lambda: guide.quick_guide(self),
            QKeySequence.StandardKey.HelpContents,
            "The three steps, the tree's colours, the plots, exporting",
        )
        self.act_shortcuts = self._action(
            "&Keyboard shortcuts", lambda: guide.keyboard_shortcuts(self)
        )
        for a in (self.act_quick_guide, self.act_shortcuts):
            help_menu.addAction(a)
        help_menu.addSeparator()
        help_menu.addAction(self._action("&About Freezer", self._about))

        bar = QToolBar("Main")
        bar.setObjectName("main-toolbar")
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.act_new, self.act_open, self.act_save):
            bar.addAction(a)
        bar.addSeparator()
        for a in (self.act_train, self.act_pause, self.act_stop):
            bar.addAction(a)
        bar.addSeparator()
        for a in (self.act_evaluate, self.act_export):
            bar.addAction(a)
        self.addToolBar(bar)
        self._update_recent_menu()

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.status_device = QLabel()
        self.status_params = QLabel()
        self.status_speed = QLabel()
        self.status_state = QLabel("idle")
        # Epoch k/n · step · elapsed · ETA, and a bar (hidden when no run is going).
        self.status_progress = QLabel()
        self.status_progress_bar = QProgressBar()
        self.status_progress_bar.setFixedWidth(140)
        self.status_progress_bar.setTextVisible(True)
        self.status_progress_bar.hide()
        self.status_speed.hide()  # a run's speed, shown while it trains
        # After a run with freeze edits: one click makes its last plan the project's.
        self.keep_plan_button = QToolButton()
        self.keep_plan_button.setDefaultAction(self.act_keep_run_plan)
        self.keep_plan_button.setAutoRaise(True)
        self.keep_plan_button.hide()
        for w in (
            self.keep_plan_button,
            self.status_state,
            self.status_progress_bar,
            self.status_progress,
            self.status_device,
            self.status_params,
            self.status_speed,
        ):
            if isinstance(w, QLabel):
                w.setContentsMargins(6, 0, 6, 0)
            bar.addPermanentWidget(w)
        # A message gets the room it needs: these give way, in this order, while it shows.
        self._status_yielding = (
            self.status_speed,
            self.status_device,
            self.status_params,
            self.status_progress,
        )
        self._status_yielded: list[QWidget] = []
        bar.messageChanged.connect(lambda _text: self._fit_status_message())

    def _status_message_room(self) -> int:
        """The width QStatusBar draws a message in: from its left margin to the first visible
        permanent widget (QStatusBarPrivate::messageRect)."""
        bar = self.statusBar()
        bar.layout().activate()
        permanent = (self.keep_plan_button, self.status_state, self.status_progress_bar)
        shown = [w for w in (*permanent, *self._status_yielding) if w.isVisible()]
        right = min((w.x() for w in shown), default=bar.width() - 12) - 2
        return right - 6

    def _fit_status_message(self) -> None:
        """Show the status bar's message whole: the less urgent labels step aside while it
        is on screen (and come back after); the whole message is also its tooltip."""
        bar = self.statusBar()
        text = bar.currentMessage()
        bar.setToolTip(text)
        for w in self._status_yielded:
            # The run's speed is shown only while a run trains.
            w.setVisible(w is not self.status_speed or self._running())
        self._status_yielded = []
        if not text or not bar.isVisible():
            return
        need = bar.fontMetrics().horizontalAdvance(text)
        for w in self._status_yielding:
            if need <= self._status_message_room():
                break
            if w.isVisible():
                w.hide()
                self._status_yielded.append(w)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.statusBar().currentMessage():
            QTimer.singleShot(0, self._fit_status_message)

    def _show_device(self) -> None:
        setting = self.project.train.device
        try:
            device = select_device(setting)
            many = launcher.processes_for(setting) > 1
            self.status_device.setText(f"device: {device_label(setting) if many else device}")
        except FreezerError:
            self.status_device.setText(f"device: {setting} (not available)")

    def _connect(self) -> None:
        self.project_ctl.changed.connect(self._project_changed)
        self.project_ctl.changed.connect(self._sync_keep_plan)
        self.project_ctl.dirtyChanged.connect(self._title)
        self.model_panel.modelChosen.connect(self.choose_model)
        self.model_panel.pretrainedChanged.connect(
            lambda on: self.project_ctl.set_value(
                "pretrained", on, "Pretrained weights " + ("on" if on else "off")
            )
        )
        self.data_panel.folderChosen.connect(self.choose_data)
        self.data_panel.cancelRequested.connect(self._cancel_scan)
        self.tree_panel.cancelRequested.connect(self._preview_cancelled)
        for form in (self.data_panel.form, self.settings_panel.form):
            form.error.connect(self._form_message)
        schedule = self.settings_panel.schedule
        schedule.error.connect(lambda message: self.statusBar().showMessage(message, 8000))
        schedule.fineTuneRequested.connect(self._fine_tune_schedule)
        self.settings_panel.findLrRequested.connect(lambda: open_lr_finder(self))
        schedule.check_phases = self.controller.phase_problems
        self.controller.planChanged.connect(lambda _plan: schedule.mark_problems())
        # The tree panel's Undo/Redo trigger the window's actions (so they are disabled
        # together during a run) but keep a fixed label: what they undo is in the tooltip,
        # so a long command name never widens the window.
        self.tree_panel.undo.setText("Undo")
        self.tree_panel.redo.setText("Redo")
        self.tree_panel.undo.clicked.connect(self.act_undo.trigger)
        self.tree_panel.redo.clicked.connect(self.act_redo.trigger)
        stack = self.project_ctl.undo_stack
        for signal in (stack.indexChanged, stack.cleanChanged):
            signal.connect(self._sync_undo_buttons)
        self._sync_undo_buttons()
        self.controller.planChanged.connect(lambda _plan: self._update_params_status())
        self.controller.error.connect(lambda msg: self.statusBar().showMessage(msg, 8000))
        self.tree_model.telemetryStale.connect(self.grad_plot.set_stale)
        self.tree_panel.layerSelected.connect(self._layer_selected)
        self.grad_plot.layerClicked.connect(self._plot_layer_clicked)
        self.heatmap.layerClicked.connect(self._plot_layer_clicked)
        self.run_ctl.redraw_timer.timeout.connect(self._redraw_visible)
        self.right.currentChanged.connect(lambda _i: self._redraw_visible())
        self.run_ctl.started.connect(lambda: self._set_running(True))
        self.run_ctl.finished.connect(self._on_finished)
        self.run_ctl.failed.connect(self._on_failed)
        self.run_ctl.ended.connect(self._on_run_ended)
        attach_runs_panel(self)

    def _form_message(self, message: str) -> None:
        """A value a form refused (for 8 s), or "" once it accepts one: the refusal goes."""
        bar = self.statusBar()
        if message:
            self._form_error = message
            bar.showMessage(message, 8000)
        elif self._form_error and bar.currentMessage() == self._form_error:
            bar.clearMessage()
            self._form_error = ""

    def _project_changed(self, keys: set[str]) -> None:
        """What follows from a project edit (or undo): the preview, the dataset check, …"""
        if touches(keys, "model", "weights"):
            self.run_ctl.clear_views()  # curves and values of another model are not this one's
        if touches(keys, "model", "weights", "num_classes"):
            want = self._preview_want if self.preview_task is not None else None
            if want is not None and want[1] is not None and not touches(keys, "model", "weights"):
                # A model the user picked is still being built: build it for the new class count.
                (model, weights, _n), label = want
                self._load_preview(model, weights, label)
            else:
                self._load_preview()
        if touches(keys, "model", "weights", "pretrained", "num_classes"):
            self._refresh_model_panel()
        if touches(keys, "data.path", "data.val_split", "train.seed") and not self._running():
            self.start_scan()
        if touches(keys, "train.device"):
            self._show_device()
        self._title()

    # ================================================================== project files
    def _title(self, *_args: object) -> None:
        name = self.project_path.name if self.project_path else "untitled"
        self.setWindowTitle(f"{'*' if self.dirty else ''}{name} — Freezer")

    def _refused_while_running(self, what: str) -> bool:
        """A run trains a copy of the project shown: the window keeps showing that project
        (its tree edits go to the run) until the run ends. True: refused, and said so."""
        if not self._running():
            return False
        self.statusBar().showMessage(f"Stop training before {what}.", 5000)
        return True

    def new_project(self, confirm: bool = True) -> None:
        if self._refused_while_running("starting a new project"):
            return
        if confirm and not self._maybe_save():
            return
        self.set_project(Project(), None)

    def set_project(self, project: Project, path: Path | None) -> bool:
        """Show a project: model preview, dataset check, settings, freeze plan. Refused (False)
        while a run trains: its tree edits would go to a run of another project."""
        if self._refused_while_running("opening another project"):
            return False
        self.report = None
        self._cancel_scan()
        if not project.data.path:
            self.data_panel.show_report(None)
        self.project_ctl.replace(project, path)
        self.run_ctl.clear_views()
        self._resumed_runs_root = None
        self._run_plan = None  # a run of another project
        self._sync_keep_plan()
        self._refresh_runs()
        return True

    def _refresh_runs(self) -> None:
        """The Runs tab lists the runs of the project shown (when it is on screen; showing it
        refreshes it too)."""
        if self.runs_panel.isVisible():
            self.runs_panel.refresh()

    def open_project_dialog(self) -> None:
        if self._refused_while_running("opening another project"):
            return
        if not self._maybe_save():
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Open project", self._last_dir("project"), "Freezer project (*.json)"
        )
        if path:
            self.open_project(Path(path))

    def open_project(self, path: Path) -> bool:
        if self._refused_while_running("opening another project"):
            return False
        try:
            project = Project.load(path)
            # A .py the project names runs only after the user says yes (or said so before).
            check_code(project.model, self._code_trust(path, project.model))
        except FreezerError as e:
            self.error_dialog("Cannot open the project", e.message, e.hint or "")
            return False
        self._remember_dir("project", path.parent)
        self._add_recent(path)
        self.set_project(project, path)
        self.statusBar().showMessage(f"Opened {path}", 4000)
        return True

    def save_project(self) -> bool:
        if self.project_path is None:
            return self.save_project_as()
        return self._write_project(self.project_path)

    def save_project_as(self) -> bool:
        # *.freezer.json: the name the desktop entry's file type claims (install-desktop).
        start = str(self.project_path or Path(self._last_dir("project")) / "project.freezer.json")
        path, _ = QFileDialog.getSaveFileName(
            self, "Save project", start, "Freezer project (*.json)"
        )
        if not path:
            return False
        path = Path(path)
        if path.suffix.lower() != ".json":
            path = path.with_name(path.name + ".json")  # the Open dialog lists *.json only
        return self._write_project(path)

    def _write_project(self, path: Path) -> bool:
        try:
            self.project_ctl.save(path)
        except FreezerError as e:
            self.error_dialog("Cannot save the project", e.message, e.hint or "")
            return False
        self._title()
        self._add_recent(path)
        self._remember_dir("project", path.parent)
        self.statusBar().showMessage(f"Saved {path}", 4000)
        self._refresh_runs()  # Save As may have moved the project, and its runs folder
        return True

    def _maybe_save(self) -> bool:
        if not self.dirty:
            return True
        answer = QMessageBox.question(
            self,
            "Unsaved project",
            "Save the changes to this project first?",
            QMessageBox.StandardButton.Save
            | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Save:
            return self.save_project()
        return answer == QMessageBox.StandardButton.Discard

    # ================================================================== model
    def _code_trust(self, source: Path | str | None = None, model: str | None = None) -> CodeTrust:
        """Whether a model's .py may run: one the user chose in this window runs; one named by
        a file (`source`, or the project's file) runs after the question of trust_dialog."""
        model = self.project.model if model is None else model
        confirm = lambda code: (
            self.trust_code or (self.interactive and ask_to_run(self, self.settings, code))
        )
        if source is None and model in self._user_models:
            return CodeTrust(confirm=confirm)
        return CodeTrust.from_file(source or self.project_path or "This project", confirm=confirm)

    def choose_model(self, text: str, kind: object = None) -> None:
        """A model picked in the list, or a weights file / bundle / run folder opened.

        Its preview is built in the background; the project changes when it is ready (or
        not at all, with a message, when it cannot be built)."""
        if self._running():
            self.statusBar().showMessage("Stop training before changing the model.", 5000)
            return
        p = self.project
        if kind == "file":
            self._remember_dir("model", Path(text).parent)
            try:
                source = resolve_source(text)
                model, weights = str(source.spec), str(source.weights) if source.weights else None
            except FreezerError as e:
                if not Path(text).is_file():
                    self.error_dialog("Cannot open that model", e.message, e.hint or "")
                    return
                # Weights without a recorded architecture: use them with the current model.
                model, weights = p.model, text
            else:
                try:
                    # A .py named by the bundle, run or weights file runs only after a yes.
                    check_code(text, self._code_trust(model=text))
                except FreezerError as e:
                    self.error_dialog("Cannot open that model", e.message, e.hint or "")
                    return
        else:
            model, weights = text, None
            if ".py:" in text:
                self._user_models.add(text)  # the Open model file dialog: the user's own code
        # The project takes the model once its preview is built, in the background (a newer
        # choice replaces one still on its way): _preview_done applies the edit.
        self._load_preview(model, weights, f"Model {Path(text).name if kind == 'file' else text}")

    def _apply_choice(self, model: str, weights: str | None, label: str) -> None:
        """Make a model the user picked the project's, now that its tree is shown: one
        undoable edit, with the freeze plan adapted if it does not fit."""
        p = self.project
        changes = {"model": model, "weights": weights, "pretrained": p.pretrained and not weights}
        plan, dropped = self._plan_for_new_model(p.plan)
        if dropped:
            changes["plan"] = plan
            label += f" (freeze plan: {dropped})"
            self.statusBar().showMessage(
                f"The freeze plan did not fit {model}: {dropped}. Undo (Ctrl+Z) brings both back.",
                12000,
            )
        self.project_ctl.set_values(changes, label)

    def _plan_for_new_model(self, plan) -> tuple[object, str]:
        """The project's plan on the model just previewed, or the least change that fits it:
        without its schedule and edits, else train-all. Returns (plan, what was dropped)."""
        tree = self.controller.tree
        simpler = plan.with_selection(plan.preset, plan.freeze, plan.unfreeze)
        simpler.schedule, simpler.edits = [], []
        reset = plan.with_selection("train-all", [], [])
        reset.schedule, reset.edits = [], []
        for candidate, dropped in (
            (plan, ""),
            (simpler, "its schedule and edits were dropped"),
            (reset, "reset to train-all"),
        ):
            try:
                if tree is not None:
                    timeline.check(candidate, tree)
            except FreezerError:
                continue
            return candidate, dropped
        return reset, "reset to train-all"

    def _load_preview(
        self,
        model: str | None = None,
        weights: str | bool | None = False,
        choice: str | None = None,
    ) -> bool:
        """Build the meta-device preview of a model (the project's unless given), check its
        weights file fits (names and shapes only), and its tree, on a background task.

        choice: the undo label when the user picked this model; the project takes it once
        built (`_apply_choice`). Rebuilt only when the model, its weights or the class count
        changed; a newer request supersedes one still running (its result is dropped). Names
        that do not resolve and code the user does not allow are refused here, at once, and
        the trust question is asked here, on the GUI thread, before any of the model's code
        runs. Returns False when refused or when the model shown is already this one."""
        p = self.project
        model = p.model if model is None else model
        weights = p.weights if weights is False else weights
        n = p.num_classes
        key = (model, weights, n)
        if self.preview_task is not None and self._preview_want == (key, choice):
            return True  # already on its way
        if key == self._preview_key:
            self._cancel_preview()  # the tree shown is the one wanted: drop anything else
            if choice is not None and (p.model, p.weights) != (model, weights):
                self._apply_choice(model, weights, choice)
            return False
        trust = self._code_trust(model=model)
        try:
            resolve_source(model)  # an unknown name or a missing file is said at once
            check_code(model, trust)
        except FreezerError as e:
            self.error_dialog("Cannot load the model", e.message, e.hint or "")
            return False
        # Allowed (or asked) above: the task never asks, it raises if the file has changed since.
        quiet = replace(trust, confirm=None)

        def work(progress, cancelled):
            loaded = preview_model(model, num_classes=n, trust=quiet)
            if weights:
                path = Path(weights).expanduser()
                if cancelled():
                    raise Cancelled("Model preview cancelled.")
                progress(0, 0, f"Checking {path.name} against {short_name(model)}…")
                check_fit(loaded.module, read_shapes(path), loaded.head_paths, path.name)
            if cancelled():
                raise Cancelled("Model preview cancelled.")
            return loaded, ModelTree(loaded.module, model)

        self._cancel_preview()
        task = tasks.Task(work)
        task.signals.message.connect(self._preview_message)
        task.signals.done.connect(self._preview_done)
        task.signals.failed.connect(self._preview_failed)
        self._preview_want = (key, choice)
        self.preview_task = task
        self._show_preview_busy(f"Building the model preview of {short_name(model)}…")
        if choice is None:
            self._refresh_model_panel()  # the project's model is not the tree shown yet
        tasks.start(task)
        return True

    def _is_current_preview(self) -> bool:
        """Results of a preview that was cancelled or superseded are dropped."""
        return self.preview_task is not None and self.sender() is self.preview_task.signals

    def _preview_message(self, text: str) -> None:
        if self._is_current_preview():
            self._show_preview_busy(text)

    def _show_preview_busy(self, text: str) -> None:
        """What the preview task is doing, in the tree panel and the status bar ("": done)."""
        bar = self.statusBar()
        if text:
            bar.showMessage(text)
        elif bar.currentMessage() == self.tree_panel.busy_label.text():
            bar.clearMessage()
        self.tree_panel.show_busy(text)

    def _preview_done(self, result: tuple[LoadedModel, ModelTree]) -> None:
        if not self._is_current_preview():
            return
        assert self._preview_want is not None
        (model, weights, _n), choice = self._preview_want
        self._finish_preview()
        self.loaded, tree = result
        self._preview_key = (model, weights, _n)
        self.controller.set_tree(tree)
        if choice is not None:
            self._apply_choice(model, weights, choice)
        self._refresh_model_panel()

    def _preview_failed(self, message: str, hint: str, details: str) -> None:
        if not self._is_current_preview():
            return
        assert self._preview_want is not None
        choice = self._preview_want[1]
        self._finish_preview()
        self.error_dialog("Cannot load the model", message, hint, details)
        if choice is not None:
            # The project keeps its model; show it for the class count it has now.
            self._load_preview()
        self._refresh_model_panel()

    def _finish_preview(self) -> None:
        self.preview_task = None
        self._show_preview_busy("")

    def _cancel_preview(self) -> None:
        """Stop waiting for the preview being built: whatever it returns is dropped."""
        if self.preview_task is not None:
            self.preview_task.cancel()
            self._finish_preview()

    def _preview_cancelled(self) -> None:
        """The Cancel of the tree panel's "building…" row."""
        if self.preview_task is None or self._preview_want is None:
            return
        choice = self._preview_want[1]
        self._cancel_preview()
        if choice is None:
            # The tree shown was another model's (or class count's): show none rather than it.
            self.loaded, self._preview_key = None, None
            self.controller.set_tree(None)
        self._refresh_model_panel()
        self.statusBar().showMessage("Model preview cancelled.", 5000)

    def _refresh_model_panel(self) -> None:
        info = ""
        if self.preview_task is not None and self._preview_want and self._preview_want[1] is None:
            info = "Building the model preview…"
        elif self.loaded is not None and self.controller.tree is not None:
            tree = self.controller.tree
            head = ", ".join(self.loaded.head_paths) or "none found"
            info = (
                f"{type(self.loaded.module).__name__}, {human(tree.total_params)} parameters, "
                f"{len(tree.layout.stages)} stages; head: {head} ({tree.layout.head_source})"
            )
        self.model_panel.show_project(self.project, info)
        self._update_params_status()

    # ================================================================== data
    def choose_data(self, folder: str) -> None:
        if self._running():
            self.statusBar().showMessage("Stop training before changing the dataset.", 5000)
            return
        folder = str(Path(folder).expanduser())
        self._remember_dir("data", Path(folder))
        if not self.project_ctl.set_value("data.path", folder, f"Image folder {folder}"):
            self.start_scan()  # the same folder again: check it again (files may have changed)

    def start_scan(self) -> None:
        self._cancel_scan()
        path, split, seed = (
            self.project.data.path,
            self.project.data.val_split,
            self.project.train.seed,
        )
        self.report = None
        if not path:
            self.data_panel.show_report(None)
            return
        task = tasks.Task(
            lambda progress, cancelled: scan_folder(path, split, seed, progress, cancelled)
        )
        task.signals.progress.connect(self.data_panel.set_progress)
        task.signals.done.connect(self._scan_done)
        task.signals.failed.connect(self._scan_failed)
        self.data_panel.scanning(True)
        self.scan_task = tasks.start(task)

    def _cancel_scan(self) -> None:
        if self.scan_task is not None:
            self.scan_task.cancel()
            self.scan_task = None
            self.data_panel.scanning(False)

    def _is_current_scan(self) -> bool:
        """Results of a scan that was cancelled or replaced must not overwrite the current one."""
        return self.scan_task is not None and self.sender() is self.scan_task.signals

    def _scan_done(self, report: DataReport) -> None:
        if not self._is_current_scan():
            return
        self.scan_task = None
        self.data_panel.scanning(False)
        self.report = report
        self.data_panel.show_report(report)
        # Facts about the data, not edits: the class count sizes the head of the preview.
        self.project_ctl.note(
            {"num_classes": report.num_classes, "data.classes": list(report.classes)}
        )
        self.datasetChecked.emit(report)

    def _scan_failed(self, message: str, hint: str, details: str) -> None:
        if not self._is_current_scan():
            return
        self.scan_task = None
        self.data_panel.scanning(False)
        self.report = None
        self.data_panel.show_report(None, f"{message} {hint}".strip())
        self.left.setCurrentWidget(self.data_panel)
        self.statusBar().showMessage(message, 8000)
        self.datasetChecked.emit(None)

    def dragEnterEvent(self, event) -> None:
        urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
        paths = [Path(u.toLocalFile()) for u in urls]
        if any(p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        """A folder becomes the dataset; image files get top-k predictions."""
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls()]
        images = [str(p) for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            self.right.setCurrentWidget(self.evaluate_view)
            self.evaluate_view.predict_images(images)
            event.acceptProposedAction()
            return
        self.data_panel.dropEvent(event)

    # ================================================================== freeze plan
    def _fine_tune_schedule(self) -> None:
        plan = self.project.plan.with_selection("head-only", [], [])
        plan.schedule = [Phase(1, "train-all")]
        self.controller.apply(plan, "Head first, then all")

    def _update_params_status(self) -> None:
        tree = self.controller.tree
        if tree is None:
            self.status_params.setText("")
            return
        self.status_params.setText(
            f"trainable {human(tree.trainable_params)} / {human(tree.total_params)}"
        )

    def _layer_selected(self, path: str) -> None:
        self.grad_plot.select(path)
        self.heatmap.select(path)

    def _plot_layer_clicked(self, name: str) -> None:
        self.tree_panel.select_path(name)
        self.grad_plot.select(name)
        self.heatmap.select(name)

    # ================================================================== training
    def _running(self) -> bool:
        return self.run_ctl.running

    def _sync_undo_buttons(self, *_args: object) -> None:
        stack = self.project_ctl.undo_stack
        running = self._running() if hasattr(self, "run_ctl") else False
        for button, can, text, word in (
            (self.tree_panel.undo, stack.canUndo(), stack.undoText(), "Undo"),
            (self.tree_panel.redo, stack.canRedo(), stack.redoText(), "Redo"),
        ):
            button.setEnabled(can and not running)
            button.setToolTip(f"{word}: {text}" if can else f"Nothing to {word.lower()}")

    def _set_running(self, running: bool) -> None:
        self.act_train.setEnabled(not running)
        self.act_pause.setEnabled(running)
        self.act_stop.setEnabled(running)
        # The project shown is the one the run trains (its tree edits go to the run): another
        # project, or another run's, waits until the run has ended.
        for action in (self.act_resume_run, self.act_new, self.act_open):
            action.setEnabled(not running)
        self.recent_menu.setEnabled(bool(self._recent()) and not running)
        self.act_pause.setText("&Pause")
        # Undo/redo edit the project, which a run does not follow; tree edits go to the run.
        self.act_undo.setEnabled(not running and self.project_ctl.undo_stack.canUndo())
        self.act_redo.setEnabled(not running and self.project_ctl.undo_stack.canRedo())
        self._sync_undo_buttons()
        for w in (self.model_panel, self.data_panel, self.settings_panel):
            w.setEnabled(not running)
        self.status_state.setText("training" if running else "idle")
        self.status_speed.setVisible(running)
        if running:
            self._run_plan = None  # a new run: the last one's plan is in its folder
            self.right.setCurrentWidget(self.loss_plot)
        self._sync_keep_plan()
        self._fit_status_message()

    def _runs_root(self) -> Path:
        if self.project_path is not None:
            folder = self.project_path.parent
            if is_run_folder(folder) and (folder / "metrics.jsonl").exists():
                return folder.parent  # a run's project.json: new runs go beside that run
            return folder / "runs"
        # A resumed run's project has no file of its own: its runs are beside it.
        return self._resumed_runs_root or default_runs_dir()

    def say_data_problem(self) -> None:
        """Why there is no dataset to train or test on: no folder chosen yet, or the Data
        tab's reason the chosen one cannot be used."""
        if not self.project.data.path:
            self.left.setCurrentWidget(self.data_panel)
            self.error_dialog(
                "No dataset",
                "Choose an image folder first.",
                "Drop a folder on the window or use Browse on the Data tab.",
            )
        else:
            self.error_dialog("The dataset cannot be used", self.data_panel.summary.text(), "")

    def start_training(self) -> bool:
        """What Train (button, menu, Ctrl+Return) does: check everything, then start a run of
        a copy of the project."""
        if self._running():
            return False
        if self.lr_find_task is not None:
            self.statusBar().showMessage(LR_TEST_STOPPING, 5000)
            return False
        if self.scan_task is not None:
            self.statusBar().showMessage("Still checking the dataset; try again in a moment.", 5000)
            return False
        if self.preview_task is not None:
            self.statusBar().showMessage(
                "Still building the model preview; try again in a moment.", 5000
            )
            return False
        if self.report is None:
            self.say_data_problem()
            return False
        project = self.project_ctl.snapshot()
        try:
            project.validate()
            # Asked here, on the GUI thread: the training thread runs only a .py allowed before.
            check_code(project.model, self._code_trust(model=project.model))
            if self.controller.tree is not None:
                # Every schedule phase and edit must fit the model before anything runs.
                timeline.check(project.plan, self.controller.tree)
        except FreezerError as e:
            self.error_dialog("Cannot start training", e.message, e.hint or "")
            return False
        run_dir = new_run_dir(self._runs_root(), project.name, project.model)
        self.run_ctl.start(project, run_dir)
        return True

    def resume_run_dialog(self) -> None:
        if self._refused_while_running("resuming another run"):
            return
        if not self._maybe_save():  # the run's project replaces this one
            return
        folder = QFileDialog.getExistingDirectory(
            self, "Resume a stopped run", str(self._runs_root())
        )
        if folder:
            self.resume_run(Path(folder))

    def resume_run(self, folder: Path) -> bool:
        if self._refused_while_running("resuming another run"):
            return False
        try:
            project = Project.load(folder / "project.json")
        except FreezerError as e:
            self.error_dialog("Not a run folder", e.message, e.hint or "")
            return False
        try:
            check_code(project.model, self._code_trust(folder / "project.json", project.model))
        except FreezerError as e:
            self.error_dialog("Cannot resume the run", e.message, e.hint or "")
            return False
        if not self.set_project(project, None):
            return False
        self._resumed_runs_root = folder.parent
        self.run_ctl.start(self.project_ctl.snapshot(), folder, resume=True)
        return True

    def toggle_pause(self) -> None:
        self.run_ctl.toggle_pause()
        paused = self.session is not None and self.session.worker.control.paused
        self.act_pause.setText("&Resume" if paused else "&Pause")

    def stop_training(self) -> None:
        self.run_ctl.stop()

    def _redraw_visible(self) -> None:
        current = self.right.currentWidget()
        if hasattr(current, "redraw"):
            current.redraw()

    def redraw_all(self) -> None:
        for plot in (self.loss_plot, self.grad_plot, self.heatmap):
            plot.redraw()

    def _on_finished(self, result: ev.Finished) -> None:
        self.last_finished = result
        edited = self.run_ctl.edits_applied > 0 and self.run_ctl.last_plan is not None
        if edited:
            # The run trained with freeze edits made in the tree: they are in its project.json
            # and plans.jsonl; the project keeps its own plan unless the user keeps the run's.
            assert self.run_ctl.last_plan is not None
            self._run_plan = (self.run_ctl.model, self.run_ctl.last_plan)
            self.log.add(
                f"The run's last freeze plan ({self.run_ctl.last_plan.describe()}) is in "
                f"{result.run_dir} (project.json, plans.jsonl), not in the project: the next "
                "Train starts from the project's plan ("
                f"{self.project.plan.describe()}). Run ▸ Keep the run's last plan makes it "
                "the project's."
            )
        if result.reason == "error":
            self.error_dialog("Training stopped", result.message, result.hint, result.details)
        else:
            best = (
                f"best val_acc {result.best_val_acc:.3f}; "
                if result.best_val_acc is not None
                else ""
            )
            text = f"Run {result.reason} after {result.steps} steps: {best}frozen check {result.frozen_check_summary}"
            self.log.add(text)
            self.status_progress.setToolTip(text)  # the last run's summary, while it is shown
            if edited:
                verdict = result.frozen_check_summary.split(":")[0]
                text = (
                    f"Run {result.reason} after {result.steps} steps ({best}frozen check "
                    f"{verdict}). Its freeze edits are in the run folder, not the project: "
                    f"Train starts from {self.project.plan.describe()}."
                )
            self.statusBar().showMessage(text, 15000)
            if (Path(result.run_dir) / "model.safetensors").exists():
                run = Path(result.run_dir)
                self.evaluate_view.set_source(run, *self._evaluation_data(run))
                self.evaluate_view.run()
        self.runFinished.emit(result)

    def _on_failed(self, message: str, hint: str, details: str) -> None:
        self.error_dialog(
            "Training could not start" if not details else "Training failed", message, hint, details
        )
        self.last_finished = None
        self.runFinished.emit(None)

    def _on_run_ended(self) -> None:
        self.redraw_all()
        result = self.last_finished
        if result is not None and self.status_progress.text().startswith("last run"):
            verdict = result.frozen_check_summary.split(":")[0]
            self.status_progress.setText(f"{self.status_progress.text()}, frozen check {verdict}")
        self._set_running(False)
        if self.close_when_stopped:
            self.close()

    def _keepable_run_plan(self) -> FreezePlan | None:
        """The plan the last run ended with, when it differs from the project's and fits the
        model shown (the project's model is still the one the run trained)."""
        if self._run_plan is None or self._running():
            return None
        model, plan = self._run_plan
        project_plan = self.project.plan
        if model != self.project.model:
            return None
        if project_plan.same_selection(plan) and not (project_plan.schedule or project_plan.edits):
            return None
        return plan

    def _sync_keep_plan(self, *_args: object) -> None:
        can = self._keepable_run_plan() is not None
        self.act_keep_run_plan.setEnabled(can)
        if self.keep_plan_button.isVisibleTo(self) != can:
            self.keep_plan_button.setVisible(can)

    def keep_run_plan(self) -> None:
        """Run ▸ Keep the run's last plan: the selection the run ended with becomes the
        project's plan (its schedule and edits, which the run already went through, go), as
        one undoable edit."""
        if self._refused_while_running("keeping a run's plan"):
            return
        plan = self._keepable_run_plan()
        if plan is None:
            return
        current = self.project.plan
        kept = current.with_selection(plan.preset, plan.freeze, plan.unfreeze)
        kept.bn_policy = plan.bn_policy
        kept.schedule, kept.edits = [], []
        label = f"Keep the run's last plan ({plan.describe()})"
        dropped = [w for w, on in (("schedule", current.schedule), ("edits", current.edits)) if on]
        if dropped:
            label += f", without the project's {' and '.join(dropped)}"
        self.controller.apply(kept, label)
        self.statusBar().showMessage(f"{label}: Undo (Ctrl+Z) brings the previous one back.", 8000)

    def export_dialog(self) -> ExportDialog | None:
        if self._running():
            self.statusBar().showMessage("Export when the run has finished (or stop it).", 5000)
            return None
        source = self.run_dir if self.run_dir and (self.run_dir / "project.json").exists() else None
        dialog = ExportDialog(source, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # one per Export…: not kept
        dialog.open()
        return dialog

    def _evaluation_data(self, source: Path | None) -> tuple[str, float | None, int]:
        """The project's images, and (core's rule) the split that keeps a run's training
        images out of its score."""
        data = self.project.data.path
        split, seed = evaluation_split(source, data) if source and data else (None, 0)
        return data, split, seed

    def evaluate_last_run(self) -> None:
        if (
            self.evaluate_view.source is None
            and self.run_dir
            and (self.run_dir / "model.safetensors").exists()
        ):
            self.evaluate_view.set_source(self.run_dir)
        source = self.evaluate_view.source
        self.evaluate_view.set_source(source, *self._evaluation_data(source))
        self.right.setCurrentWidget(self.evaluate_view)
        self.evaluate_view.run()

    def open_run_folder(self) -> None:
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        if self.run_dir and self.run_dir.exists():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.run_dir)))
        else:
            self.statusBar().showMessage("No run folder yet: train first.", 4000)

    # ================================================================== dialogs & settings
    def error_dialog(self, title: str, message: str, hint: str = "", details: str = "") -> None:
        if not self.interactive:
            print(f"error: {message}" + (f"\n{hint}" if hint else ""), file=sys.stderr)
        # Core speaks the command line; the window names its own controls instead.
        message, hint = guide.window_message(self, message), guide.window_message(self, hint)
        box = QMessageBox(
            QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self
        )
        if hint:
            box.setInformativeText(hint)
        if details:
            box.setDetailedText(details)
        self.last_error = (title, message, hint)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        self._open_dialog = box

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About Freezer",
            f"<b>Freezer {__version__}</b><br>Freeze layers point-and-click, fine-tune on your images, "
            "and see that frozen layers never move.",
        )

    def _last_dir(self, kind: str) -> str:
        return str(self.settings.value(f"last_dir/{kind}", str(Path.home())))

    def _remember_dir(self, kind: str, path: Path) -> None:
        self.settings.setValue(f"last_dir/{kind}", str(path))

    def _add_recent(self, path: Path) -> None:
        recent = [p for p in self._recent() if p != str(path)]
        recent.insert(0, str(path))
        self.settings.setValue("recent_projects", recent[:MAX_RECENT])
        self._update_recent_menu()

    def _recent(self) -> list[str]:
        value = self.settings.value("recent_projects", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self._recent()
        for path in recent:
            action = self.recent_menu.addAction(path)
            action.triggered.connect(lambda _=False, p=path: self._open_recent(Path(p)))
        running = self._running() if hasattr(self, "run_ctl") else False
        self.recent_menu.setEnabled(bool(recent) and not running)

    def _open_recent(self, path: Path) -> None:
        if self._refused_while_running("opening another project"):
            return
        if self._maybe_save():
            self.open_project(path)

    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1500, 920)
        state = self.settings.value("window/state")
        if state is not None:
            self.restoreState(state)
        splitter = self.settings.value("window/splitter")
        if splitter is not None:
            self.splitter.restoreState(splitter)

    def _save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("window/splitter", self.splitter.saveState())

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._running():
            if not self.close_when_stopped:
                answer = QMessageBox.question(
                    self,
                    "Training is running",
                    "Stop training and close? The run stops after the current step and saves a "
                    "checkpoint, so you can resume it later.",
                )
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
                self.close_when_stopped = True
                self.stop_training()
            event.ignore()  # closes for real once the run has saved and ended
            return
        if not self._maybe_save():
            event.ignore()
            return
        self._cancel_scan()
        self._cancel_preview()
        self.evaluate_view.cancel_all()
        self._save_settings()
        event.accept()


def short_name(model: str) -> str:
    """A model string for a progress line: a file's name rather than its whole path."""
    if ".py:" in model:
        path, _, factory = model.rpartition(":")
        return f"{Path(path).name}:{factory}"
    return Path(model).name if "/" in model or "\\" in model else model


def wait_until(condition, timeout_s: float) -> bool:
    """Spin the event loop until condition() or the timeout (used by screenshots and tests)."""
    from PySide6.QtCore import QCoreApplication, QElapsedTimer

    timer = QElapsedTimer()
    timer.start()
    while not condition():
        if timer.elapsed() > timeout_s * 1000:
            return False
        QCoreApplication.processEvents()
        QTimer.singleShot(0, lambda: None)
        time.sleep(0.005)
    return True


__all__ = ["MainWindow", "QWidget", "wait_until"]
