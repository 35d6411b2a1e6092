"""What the window lets you do while a run trains, and what it says when the run ends.

A run trains a copy of the project shown, and the tree's edits go to that run: another project
waits until it has ended. At the end the tree shows the project's plan again: rows whose
trainability changed since their live value was measured read `0 (frozen)` or nothing, the
status bar says the run's freeze edits are not in the project (with one click to keep them),
and its message fits. Every test drives the real actions, keys and buttons.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import close_windows, make_project, shown_window
from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import QApplication, QFileDialog, QSizeGrip, QWidget
from test_gui import type_setting
from test_gui_project import click_box, pause_after, wait_finished

from freezer_app.core.freeze import FreezePlan
from freezer_app.core.run_folder import read_jsonl
from freezer_app.gui.guide import ShortcutsDialog
from freezer_app.gui.main_window import MainWindow
from freezer_app.gui.tree_model import GRAD, UPDATE, BarRole, StaleRole

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def windows(qtbot):
    made: list[MainWindow] = []
    yield made
    close_windows(qtbot, made)


def drag_onto(w: MainWindow, path: Path) -> bool:
    """Drag a file or folder onto the window and drop it there, if the window takes it."""
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    buttons, keys = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, data, buttons, keys)
    QApplication.sendEvent(w, enter)
    if not enter.isAccepted():
        return False
    drop = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, data, buttons, keys)
    QApplication.sendEvent(w, drop)
    return True


def message_room(w: MainWindow) -> int:
    """The width the status bar draws its message in: up to the first permanent widget shown
    (as QStatusBar paints it), measured from the widgets' geometry."""
    bar = w.statusBar()
    bar.layout().activate()
    shown = [
        c
        for c in bar.children()
        if isinstance(c, QWidget) and c.isVisible() and not isinstance(c, QSizeGrip)
    ]
    return min((c.x() for c in shown), default=bar.width() - 12) - 2 - 6


def test_another_project_waits_until_the_run_has_ended(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch, windows
) -> None:
    other = tmp_path / "other.json"
    make_project(demo_data, model="timm:test_vit").save(other)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("recent_projects", [str(other)])
    settings.sync()
    asked: list = []
    monkeypatch.setattr(
        QFileDialog, "getOpenFileName", lambda *a, **k: asked.append(a) or (str(other), "")
    )
    w = shown_window(qtbot, tmp_path, make_project(demo_data, epochs=40), monkeypatch)
    windows.append(w)
    recent = w.recent_menu.actions()
    assert [a.text() for a in recent] == [str(other)] and w.recent_menu.isEnabled()

    w.act_train.trigger()
    pause_after(qtbot, w, 1)
    # Disabled while the run trains: File ▸ New, Open…, Open recent (and Resume a run).
    for action in (w.act_new, w.act_open, w.act_resume_run, w.recent_menu.menuAction()):
        assert not action.isEnabled(), action.text()
    w.activateWindow()
    qtbot.keyClick(w, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(w, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier)
    assert asked == []  # no Open dialog
    assert w.project.model == "timm:test_resnet" and w.session is not None
    # A recent entry reached another way is refused, with the window's usual words.
    w.recent_menu.actions()[0].trigger()
    assert w.statusBar().currentMessage() == "Stop training before opening another project."
    assert w.project.model == "timm:test_resnet" and w.project_path is None
    # Dropping a project file is not taken; a dropped folder does not replace the dataset.
    assert not drag_onto(w, other)
    assert drag_onto(w, tmp_path)
    assert w.statusBar().currentMessage() == "Stop training before changing the dataset."
    assert w.project.data.path == str(demo_data)
    # Tree edits still go to this run, of this model; the project keeps its plan.
    qtbot.mouseClick(w.tree_panel.head_only, Qt.MouseButton.LeftButton)
    assert w.controller.plan.preset == "head-only" and w.project.plan.preset == "train-all"

    w.act_stop.trigger()
    qtbot.waitUntil(lambda: w.session is None, timeout=60_000)
    for action in (w.act_new, w.act_open, w.act_resume_run, w.recent_menu.menuAction()):
        assert action.isEnabled(), action.text()
    w.recent_menu.actions()[0].trigger()  # now it opens
    assert w.project_path == other and w.project.model == "timm:test_vit"
    qtbot.waitUntil(lambda: w.preview_task is None, timeout=60_000)


def test_after_a_run_with_an_edit_rows_show_the_projects_plan_and_the_edit_can_be_kept(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch, windows
) -> None:
    project = make_project(demo_data, epochs=2, plan=FreezePlan("head-only"))
    w = shown_window(qtbot, tmp_path, project, monkeypatch)
    windows.append(w)
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    pause_after(qtbot, w, 2)
    click_box(qtbot, w, "layer4")  # train layer4 too, in this run
    assert w.controller.plan.unfreeze == ["layer4"]
    w.act_pause.trigger()
    result = wait_finished(qtbot, w, finished)
    assert result.reason == "completed"
    changes = read_jsonl(Path(result.run_dir) / "plans.jsonl")
    assert [c["reason"] for c in changes] == ["start", "edit"]

    # The tree shows the project's plan again: layer4 frozen, and its live values say so.
    assert w.project.plan.unfreeze == [] and w.controller.plan.unfreeze == []
    layer4 = w.tree_model.index_for_path("layer4")
    assert layer4.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
    for column in (GRAD, UPDATE):
        cell = layer4.siblingAtColumn(column)
        assert cell.data(BarRole) == (0.0, True)  # drawn as exactly "0 (frozen)"
        assert w.tree_model.bar_text(cell) == "0"
        assert "Frozen in the plan shown" in cell.data(Qt.ItemDataRole.ToolTipRole)
    fc = w.tree_model.index_for_path("fc").siblingAtColumn(GRAD)
    value, frozen = fc.data(BarRole)
    assert value > 0 and not frozen  # trained then and now: its value, greyed
    assert fc.data(StaleRole) is True

    # The run's end says where its edit went, and offers to keep it.
    message = w.statusBar().currentMessage()
    assert "freeze edits are in the run folder, not the project" in message
    assert "Train starts from head-only" in message
    assert "last freeze plan (head-only; unfreeze layer4)" in w.log.toPlainText()
    button = w.keep_plan_button
    assert button.isVisible() and w.act_keep_run_plan.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert w.project.plan.preset == "head-only" and w.project.plan.unfreeze == ["layer4"]
    assert w.project_ctl.undo_stack.undoText().startswith("Keep the run's last plan")
    assert not button.isVisible() and not w.act_keep_run_plan.isEnabled()
    # The plan the values were measured under is shown again: they are current.
    cell = layer4.siblingAtColumn(GRAD)
    value, frozen = cell.data(BarRole)
    assert value > 0 and not frozen and cell.data(StaleRole) is False
    w.act_undo.trigger()  # one undoable edit
    assert w.project.plan.unfreeze == [] and button.isVisible()

    # A row that trains now but was frozen when measured has no value to show.
    qtbot.mouseClick(w.tree_panel.train_all, Qt.MouseButton.LeftButton)
    layer1 = w.tree_model.index_for_path("layer1")
    assert layer1.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    assert layer1.siblingAtColumn(GRAD).data(BarRole) is None


def test_the_run_end_message_fits_the_status_bar_at_1285_px(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch, windows
) -> None:
    w = shown_window(qtbot, tmp_path, make_project(demo_data, epochs=1), monkeypatch)
    windows.append(w)
    w.resize(1285, 860)
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    result = wait_finished(qtbot, w, finished)
    bar = w.statusBar()
    message = bar.currentMessage()
    assert message.startswith(f"Run completed after {result.steps} steps")
    assert result.frozen_check_summary in message
    qtbot.wait(50)
    assert bar.fontMetrics().horizontalAdvance(message) <= message_room(w)
    assert bar.toolTip() == message
    # The summary stays where the last run's progress was, after the message has gone.
    assert w.status_progress.toolTip() == message
    bar.clearMessage()
    assert w.status_progress.isVisible() and w.status_device.isVisible()
    assert "frozen check PASSED" in w.status_progress.text()
    assert not w.status_speed.isVisible()  # a speed is shown while a run trains


def test_a_refusal_goes_when_a_value_is_accepted_and_undo_names_the_setting(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch, windows
) -> None:
    w = shown_window(qtbot, tmp_path, make_project(demo_data), monkeypatch)
    windows.append(w)
    type_setting(qtbot, w, "train.lr", "0")
    assert w.statusBar().currentMessage().startswith("Learning rate: must be")
    type_setting(qtbot, w, "train.lr", "1e-5")
    assert w.project.train.lr == 1e-5
    assert w.statusBar().currentMessage() == ""
    type_setting(qtbot, w, "train.mixup", "0.2")
    assert w.act_undo.text().replace("&", "") == "Undo Set Mixup α to 0.2"
    w.act_undo.trigger()
    assert w.act_redo.text().replace("&", "") == "Redo Set Mixup α to 0.2"


def test_redo_is_ctrl_shift_z_and_the_platforms_redo_key(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch, windows
) -> None:
    w = shown_window(qtbot, tmp_path, make_project(demo_data), monkeypatch)
    windows.append(w)
    qtbot.mouseClick(w.tree_panel.head_only, Qt.MouseButton.LeftButton)
    assert w.project.plan.preset == "head-only"
    w.activateWindow()
    ctrl = Qt.KeyboardModifier.ControlModifier
    qtbot.keyClick(w, Qt.Key.Key_Z, ctrl)
    assert w.project.plan.preset == "train-all"
    qtbot.keyClick(w, Qt.Key.Key_Z, ctrl | Qt.KeyboardModifier.ShiftModifier)
    assert w.project.plan.preset == "head-only"
    qtbot.keyClick(w, Qt.Key.Key_Z, ctrl)
    platform = QKeySequence(QKeySequence.StandardKey.Redo)[0]
    qtbot.keyClick(w, platform.key(), platform.keyboardModifiers())
    assert w.project.plan.preset == "head-only"
    # Help ▸ Keyboard shortcuts and the README say the same.
    w.act_shortcuts.trigger()
    dialog = next(d for d in w.findChildren(ShortcutsDialog) if d.isVisible())
    table = dialog.table
    rows = {
        table.topLevelItem(i).text(0): table.topLevelItem(i).text(1)
        for i in range(table.topLevelItemCount())
    }
    keys = [QKeySequence(k).toString() for k in rows["Redo"].split(", ")]
    assert "Ctrl+Shift+Z" in keys and platform.toCombined() in [
        QKeySequence(k)[0].toCombined() for k in keys
    ]
    assert "Ctrl+Z / Ctrl+Shift+Z" in README.read_text()
    dialog.close()
