"""Starting the desktop app: `freezer-app`, `freezer-app gui [PROJECT | --demo]`, screenshots."""

from __future__ import annotations

import gc
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths, QTimer
from PySide6.QtWidgets import QApplication

from freezer_app.cli.gui import TABS
from freezer_app.core.data import write_demo_data
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.project import DataSettings, Project, TrainSettings
from freezer_app.gui.main_window import MainWindow, wait_until


def demo_data_dir() -> Path:
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericCacheLocation)
    return Path(base or Path.home() / ".cache") / "freezer" / "demo-data"


def demo_project() -> Project:
    """A small model and a generated dataset: trains on a laptop CPU in under a minute,
    with half the network frozen so the plots show what frozen means."""
    data = demo_data_dir()
    if not (data / "val").exists():
        write_demo_data(data, per_class=60, val_per_class=15, size=64)
    return Project(
        name="demo",
        model="timm:test_resnet",
        plan=FreezePlan(preset="train-last:2"),
        data=DataSettings(path=str(data), image_size=64, augmentation="light", workers=0),
        train=TrainSettings(epochs=6, batch_size=16, lr=3e-3, telemetry_every=2),
    )


def make_app() -> QApplication:
    # The window shares the interpreter lock with the training thread; handing it over more
    # often (1 ms instead of 5 ms) keeps redraws prompt while a step runs Python code.
    sys.setswitchinterval(0.001)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Freezer")
    app.setOrganizationName("Freezer")
    app.setApplicationDisplayName("Freezer")
    # What is alive now (torch, timm, Qt and their registries: some 10^6 objects) stays alive.
    # Frozen, the garbage collector's full passes skip it: unfrozen, each walked all of it
    # with the interpreter lock held, stalling the window for ~250 ms whenever a background
    # task (a model preview) triggered one.
    gc.freeze()
    return app  # type: ignore[return-value]


def run_gui(
    project: str | None = None,
    demo: bool = False,
    screenshot: str | None = None,
    train_steps: int | None = None,
    tab: str | None = None,
    trust_code: bool = False,
) -> int:
    app = make_app()
    # Screenshots must not depend on (or change) the user's saved window layout.
    settings = (
        QSettings(str(Path(tempfile.mkdtemp()) / "screenshot.ini"), QSettings.Format.IniFormat)
        if screenshot
        else None
    )
    window = MainWindow(settings)
    window.interactive = screenshot is None
    window.trust_code = trust_code
    if demo:
        window.set_project(demo_project(), None)
        window.tree_panel.depth.setValue(2)
    elif project and not window.open_project(Path(project)) and screenshot:
        return 2  # the message was printed; nothing worth a picture
    window.show()
    if screenshot is None:
        return app.exec()
    return _screenshot(window, Path(screenshot), train_steps, tab)


def _screenshot(window: MainWindow, path: Path, train_steps: int | None, tab: str | None) -> int:
    window.resize(1600, 950)
    # The dataset check and the model preview run in the background: the picture (and Train)
    # wait for both.
    wait_until(lambda: window.scan_task is None and window.preview_task is None, 120)
    code = 0
    if train_steps:
        # The same Train action a click triggers, on a project limited to N steps.
        window.project_ctl.note({"train.max_steps": train_steps})
        finished: list[object] = []
        window.runFinished.connect(finished.append)
        window.act_train.trigger()
        if window.session is None:
            print("error: training did not start", file=sys.stderr)
            code = 1
        elif not wait_until(lambda: bool(finished) and window.session is None, 600):
            print("error: training did not finish in time", file=sys.stderr)
            code = 1
        elif finished[0] is None or getattr(finished[0], "reason", "") == "error":
            code = 1
        else:
            window.right.setCurrentWidget(window.grad_plot)
            view = window.evaluate_view
            # The evaluation that follows a run, and its thumbnails.
            wait_until(lambda: view.task is None and view.thumbnail_task is None, 120)
            print(f"run folder: {window.run_dir}")
    if tab:
        window.right.setCurrentIndex(TABS.index(tab))
    if tab == "runs":
        # The runs listed (in the background), the two newest overlaid.
        panel = window.runs_panel
        wait_until(lambda: panel.task is None, 60)
        panel.select_newest(2)
    QTimer.singleShot(0, lambda: None)
    wait_until(lambda: False, 0.3)  # let plots and the tree repaint
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = window.grab().save(str(path))
    if not ok:
        print(f"error: could not write {path}", file=sys.stderr)
        code = 1
    window.project_ctl.undo_stack.setClean()
    window.close()
    return code
