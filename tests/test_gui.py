"""The desktop app, offscreen (pytest-qt): what a user clicks and what they then see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import close_windows, make_project, shown_window
from PySide6.QtCore import QSettings, Qt, QThreadPool
from PySide6.QtWidgets import QMessageBox

from freezer_app.core import events as ev
from freezer_app.core.catalog import load_model
from freezer_app.core.freeze import FreezePlan, apply_plan, resolve
from freezer_app.gui.main_window import MainWindow
from freezer_app.gui.tree_model import GRAD, BarRole


@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, monkeypatch) -> MainWindow:
    w = shown_window(qtbot, tmp_path, make_project(demo_data, epochs=2), monkeypatch)
    yield w
    close_windows(qtbot, [w])


def type_setting(qtbot, w: MainWindow, key: str, text: str) -> None:
    """Type a value into a setting's editor in the Data or Training form and press Enter,
    as a user does (spin boxes, text fields), pick it from the list (choices), or click the
    check box until it shows `text` ("on" or "off")."""
    from PySide6.QtWidgets import QCheckBox, QComboBox, QSpinBox

    forms = (w.data_panel.form, w.settings_panel.form)
    editor = next(f.editor(key) for f in forms if key in f.editors)
    w.left.setCurrentWidget(w.data_panel if key.startswith("data.") else w.settings_panel)
    if isinstance(editor, QComboBox):
        editor.setCurrentIndex(editor.findText(text))
        return
    if isinstance(editor, QCheckBox):
        if editor.isChecked() != (text == "on"):
            editor.click()
        return
    editor.setFocus()
    line = editor.lineEdit() if isinstance(editor, QSpinBox) else editor
    line.selectAll()
    qtbot.keyClicks(line, text)
    qtbot.keyClick(line, Qt.Key.Key_Return)


def choose_folder(qtbot, w: MainWindow, folder: str) -> None:
    """Type an image folder into the Data tab's field and press Enter."""
    line = w.data_panel.folder
    line.setText(folder)
    qtbot.keyClick(line, Qt.Key.Key_Return)


def _index(w: MainWindow, path: str):
    return w.tree_model.index_for_path(path)


def _requires_grad_after_training_setup(w: MainWindow) -> dict[str, bool]:
    """What requires_grad the window's plan gives a freshly built copy of the model."""
    model = load_model(w.project.model, num_classes=3).module
    apply_plan(model, w.controller.plan)
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_ticking_a_box_changes_requires_grad(window: MainWindow, qtbot) -> None:
    window.tree_panel.expand_to_depth(2)
    qtbot.mouseClick(window.tree_panel.head_only, Qt.MouseButton.LeftButton)
    assert not _requires_grad_after_training_setup(window)["layer4.0.conv1.weight"]
    # Click the check box of layer4 in the real view.
    view = window.tree_panel.view
    index = window.tree_panel.view_index(_index(window, "layer4"))
    view.scrollTo(index)
    rect = view.visualRect(index)
    qtbot.mouseClick(
        view.viewport(),
        Qt.MouseButton.LeftButton,
        pos=rect.topLeft() + type(rect.topLeft())(10, rect.height() // 2),
    )
    assert index.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    grads = _requires_grad_after_training_setup(window)
    assert (
        grads["layer4.0.conv1.weight"] and grads["fc.weight"] and not grads["layer3.0.conv1.weight"]
    )
    assert window.controller.plan == FreezePlan(preset="head-only", unfreeze=["layer4"])
    # The root shows partly checked; unticking a parameter works too.
    root = window.tree_panel.view.model().index(0, 0)
    assert root.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.PartiallyChecked
    window.tree_model.setData(
        _index(window, "fc.bias"), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole
    )
    assert not _requires_grad_after_training_setup(window)["fc.bias"]
    assert "trainable" in window.tree_panel.summary.text()


def test_preset_buttons_match_the_core(window: MainWindow, qtbot) -> None:
    tree = window.controller.tree
    qtbot.mouseClick(window.tree_panel.head_only, Qt.MouseButton.LeftButton)
    assert np.array_equal(tree.trainable, resolve(FreezePlan(preset="head-only"), tree))
    menu = window.tree_panel.freeze_stages.menu()
    actions = [a for a in menu.actions() if a.text().startswith("freeze-stages:2")]
    actions[0].trigger()
    assert np.array_equal(tree.trainable, resolve(FreezePlan(preset="freeze-stages:2"), tree))
    assert window.controller.plan.preset == "freeze-stages:2"
    # Undo and redo walk back through the edits.
    window.controller.undo_stack.undo()
    assert window.controller.plan.preset == "head-only"
    window.controller.undo_stack.redo()
    assert window.controller.plan.preset == "freeze-stages:2"


def _menu_action(window: MainWindow, path: str, text: str) -> None:
    """Trigger an entry of the real right-click menu of a module's row."""
    panel = window.tree_panel
    menu = panel.menu_for(panel.view_index(window.tree_model.index_for_path(path)))
    action = next(a for a in menu.actions() if a.text() == text)
    action.trigger()


def test_context_menu_actions_and_filter(window: MainWindow) -> None:
    window.tree_panel.expand_to_depth(2)
    _menu_action(window, "layer3", "Train only this")
    assert {
        n.split(".")[0] for n, t in _requires_grad_after_training_setup(window).items() if t
    } == {"layer3"}
    _menu_action(window, "layer4", "Freeze everything before this module")
    _menu_action(window, "", "Unfreeze *")
    _menu_action(window, "layer4", "Freeze everything before this module")
    trainable = {
        n.split(".")[0] for n, t in _requires_grad_after_training_setup(window).items() if t
    }
    assert trainable == {"layer4", "fc"}
    _menu_action(window, "layer4.0.bn1", "Freeze all BatchNorm2d modules")
    assert not _requires_grad_after_training_setup(window)["layer4.0.bn1.weight"]
    panel = window.tree_panel
    panel.filter.setText("downsample")
    proxy = panel.view.model()
    assert proxy is panel.proxy  # filtering goes through the proxy
    visible = []

    def walk(parent):
        for r in range(proxy.rowCount(parent)):
            idx = proxy.index(r, 0, parent)
            visible.append(proxy.mapToSource(idx).data(Qt.ItemDataRole.UserRole + 1))
            walk(idx)

    walk(proxy.index(-1, -1))
    assert "layer2.0.downsample" in visible and "layer1.0.conv1" not in visible


def _train(window: MainWindow, qtbot) -> ev.Finished:
    finished: list = []
    window.runFinished.connect(finished.append)
    window.act_train.trigger()
    assert window.session is not None
    qtbot.waitUntil(lambda: bool(finished) and window.session is None, timeout=120_000)
    return finished[0]


def test_training_fills_the_plots_and_frozen_layers_show_zero(window: MainWindow, qtbot) -> None:
    menu = window.tree_panel.train_last.menu()
    next(a for a in menu.actions() if a.text().startswith("train-last:1 ")).trigger()
    result = _train(window, qtbot)
    assert result.reason == "completed" and result.frozen_check_passed
    assert window.loss_plot.steps.n == result.steps
    assert window.loss_plot.val_accs.n == 2
    names = window.grad_plot.names
    frozen_points = window.grad_plot.frozen.data
    frozen_layers = {names[int(x)] for x in frozen_points["x"]}
    assert "conv1.0" in frozen_layers and "layer4.0.conv1" not in frozen_layers
    # Frozen rows in the tree show an exact 0; trainable ones a positive value.
    conv = _index(window, "layer1.0.conv1").siblingAtColumn(GRAD)
    fc = _index(window, "fc").siblingAtColumn(GRAD)
    assert conv.data(BarRole) == (0.0, True)
    assert fc.data(BarRole)[0] > 0 and fc.data(BarRole)[1] is False
    assert "Frozen check passed" in window.frozen_view.banner.text()
    assert window.heatmap._cols and window.heatmap._frozen_cols[-1][names.index("conv1.0")]
    assert "images/s" in window.status_speed.text()


def test_stop_ends_the_run_with_a_checkpoint(window: MainWindow, qtbot) -> None:
    type_setting(qtbot, window, "train.epochs", "500")
    finished: list = []
    window.runFinished.connect(finished.append)
    window.act_train.trigger()
    assert window.session is not None
    qtbot.waitUntil(lambda: window.loss_plot.steps.n >= 2, timeout=60_000)
    window.act_stop.trigger()
    qtbot.waitUntil(lambda: bool(finished) and window.session is None, timeout=60_000)
    assert finished[0].reason == "stopped"
    assert (window.run_dir / "checkpoints" / "last.pt").exists()
    assert window.act_train.isEnabled() and not window.act_stop.isEnabled()


def test_freeze_edit_during_a_run_shows_pending_then_applies(window: MainWindow, qtbot) -> None:
    type_setting(qtbot, window, "train.epochs", "500")
    applied: list = []

    def watch(batch: list) -> None:
        applied.extend(e for e in batch if isinstance(e, ev.PlanApplied) and e.reason == "edit")

    finished: list = []
    window.runFinished.connect(finished.append)
    window.act_train.trigger()
    assert window.session is not None
    window.session.events.connect(watch)
    window.act_pause.trigger()  # hold the run so the edit is visibly pending
    qtbot.waitUntil(lambda: window.status_state.text() == "paused", timeout=60_000)
    window.tree_model.setData(
        _index(window, "layer1"), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole
    )
    pending = _index(window, "layer1").data(Qt.ItemDataRole.BackgroundRole)
    assert pending is not None, "the edit is shown as pending until the next step"
    window.act_pause.trigger()
    qtbot.waitUntil(lambda: bool(applied), timeout=60_000)
    qtbot.waitUntil(
        lambda: _index(window, "layer1").data(Qt.ItemDataRole.BackgroundRole) is None,
        timeout=10_000,
    )
    window.act_stop.trigger()
    qtbot.waitUntil(lambda: bool(finished) and window.session is None, timeout=60_000)
    assert finished[0].frozen_check_passed is True
    assert "layer1" in " ".join(applied[0].plan.freeze)


def test_errors_are_shown_and_the_app_stays_usable(
    window: MainWindow, qtbot, tmp_path: Path
) -> None:
    # Offline without cached weights: the run cannot start, a dialog says why.
    window.model_panel.pretrained.click()
    assert window.project.pretrained
    finished = _train(window, qtbot)
    assert finished is None
    assert "cannot be downloaded" in window.last_error[1]
    window._open_dialog.close()
    window.model_panel.pretrained.click()
    assert not window.project.pretrained
    # A bad dataset is reported in the data panel and blocks training with a message.
    empty = tmp_path / "empty"
    empty.mkdir()
    choose_folder(qtbot, window, str(empty))
    qtbot.waitUntil(lambda: window.scan_task is None, timeout=30_000)
    assert "No class folders" in window.data_panel.summary.text()
    window.act_train.trigger()
    assert window.session is None
    window._open_dialog.close()
    # An unknown model keeps the previous one.
    window.model_panel.search.setText("timm:not_a_model")
    window.model_panel.modelChosen.emit("timm:not_a_model", None)  # as typed + Enter would
    assert window.project.model == "timm:test_resnet"
    assert "Unknown timm model" in window.last_error[1]


def test_closing_during_a_run_asks_then_stops_cleanly(
    window: MainWindow, qtbot, monkeypatch
) -> None:
    type_setting(qtbot, window, "train.epochs", "500")
    window.act_train.trigger()
    assert window.session is not None
    qtbot.waitUntil(lambda: window.loss_plot.steps.n >= 1, timeout=60_000)
    answers = iter([QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Discard])
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: next(answers))
    assert not window.close()  # not yet: it waits for the checkpoint
    qtbot.waitUntil(lambda: window.session is None, timeout=60_000)
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    assert (window.run_dir / "checkpoints" / "last.pt").exists()


def test_project_save_and_open_round_trip(window: MainWindow, qtbot, tmp_path: Path) -> None:
    menu = window.tree_panel.train_last.menu()
    next(a for a in menu.actions() if a.text().startswith("train-last:2 ")).trigger()
    type_setting(qtbot, window, "train.lr", "0.0042")
    assert window.dirty
    path = tmp_path / "p" / "project.json"
    assert window._write_project(path)
    assert not window.dirty
    other = MainWindow(QSettings(str(tmp_path / "s2.ini"), QSettings.Format.IniFormat))
    assert other.open_project(path)
    assert other.controller.plan.preset == "train-last:2"
    assert other.settings_panel.form.editor("train.lr").text() == "0.0042"
    assert other.project.train.lr == 0.0042
    assert str(path) in other._recent()
    other.close()


def test_screenshot_command_renders_the_real_window(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("freezer-app")
    shot = tmp_path / "shot.png"
    env = {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "QT_QPA_PLATFORM": "offscreen",
        "HOME": str(tmp_path),
        "FREEZER_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [str(exe), "gui", "--demo", "--screenshot", str(shot), "--train-steps", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    # It trained through the Train action, into a run folder that says so.
    run = Path(
        next(line for line in result.stdout.splitlines() if line.startswith("run folder: "))[12:]
    )
    assert json.loads((run / "project.json").read_text())["train"]["max_steps"] == 4
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size[0] >= 1200 and img.size[1] >= 700
    assert torch.tensor(np.asarray(Image.open(shot))).float().std() > 10  # not a blank image


def test_evaluate_tab_after_training_and_clickable_confusion_matrix(
    window: MainWindow, qtbot
) -> None:
    result = _train(window, qtbot)
    view = window.evaluate_view
    qtbot.waitUntil(lambda: view.task is None and view.evaluation is not None, timeout=60_000)
    assert view.source == Path(result.run_dir)
    assert "Accuracy" in view.banner.text()
    ev_ = view.evaluation
    assert ev_.count == 30 and len(ev_.confusion) == 3
    assert view.table.rowCount() == 3 and view.table.item(0, 0).text() == "circles"
    # Clicking a cell lists the images behind it.
    view.show_cell(0, 0)
    assert view.images.count() == min(ev_.confusion[0][0], 60)
    assert "True circles, predicted circles" in view.images_title.text()


def test_dropped_images_get_top_k_predictions(window: MainWindow, qtbot, demo_data: Path) -> None:
    from PySide6.QtCore import QMimeData, QPoint, QUrl
    from PySide6.QtGui import QDropEvent

    result = _train(window, qtbot)
    view = window.evaluate_view
    qtbot.waitUntil(lambda: view.task is None, timeout=60_000)
    images = sorted((demo_data / "val" / "stripes").glob("*.png"))[:2]
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in images])
    event = QDropEvent(
        QPoint(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    qtbot.waitUntil(
        lambda: view.task is None and view.images_title.text() == "Predictions", timeout=60_000
    )
    assert view.images.count() == 2
    text = view.images.item(0).text()
    assert any(name in text for name in ("circles", "squares", "stripes")) and "%" in text
    assert result.reason == "completed"


def test_export_dialog_writes_and_never_overwrites_silently(
    window: MainWindow, qtbot, monkeypatch
) -> None:
    import torch

    from freezer_app.gui.export_dialog import ExportDialog

    result = _train(window, qtbot)
    window.act_export.trigger()
    dialog = window.findChildren(ExportDialog)[-1]
    assert dialog.isVisible() and dialog.source.text() == result.run_dir
    dialog.format.setCurrentIndex(dialog.format.findData("pth"))
    out = Path(dialog.out.text())
    assert out == Path(result.run_dir) / "export" / "model.pth"
    dialog.start()
    qtbot.waitUntil(lambda: dialog.task is None and dialog.result is not None, timeout=60_000)
    assert out.exists() and "Exported to" in dialog.status.text()
    state = torch.load(out, weights_only=True)
    assert "fc.weight" in state
    before = out.stat().st_mtime_ns
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    dialog.start()
    assert dialog.task is None and out.stat().st_mtime_ns == before
    dialog.reject()


def test_gradual_unfreezing_moves_the_tree_but_not_the_project(window: MainWindow, qtbot) -> None:
    from freezer_app.core.freeze import Phase

    qtbot.mouseClick(window.settings_panel.schedule.fine_tune, Qt.MouseButton.LeftButton)
    assert window.controller.plan.preset == "head-only"
    assert window.project.plan.schedule == [Phase(1, "train-all")]
    seen: list = []
    window.runFinished.connect(lambda _r: None)
    window.act_train.trigger()
    assert window.session is not None
    window.session.events.connect(
        lambda batch: seen.extend(e for e in batch if isinstance(e, ev.PlanApplied))
    )
    qtbot.waitUntil(lambda: window.session is None, timeout=120_000)
    assert [(e.reason, e.plan.preset) for e in seen] == [
        ("start", "head-only"),
        ("schedule", "train-all"),
    ]
    assert window.project.plan.preset == "head-only"  # the schedule's start is kept
    assert window.controller.plan.preset == "head-only"  # and shown again after the run
    assert "edit:" not in window.log.toPlainText()


def test_a_replaced_dataset_check_does_not_overwrite_the_new_one(
    window: MainWindow, qtbot, demo_data: Path
) -> None:
    window.start_scan()
    window.start_scan()  # cancels the first; its late "cancelled" must be ignored
    qtbot.waitUntil(lambda: window.scan_task is None, timeout=30_000)
    QThreadPool.globalInstance().waitForDone(30_000)
    qtbot.wait(50)
    assert window.report is not None and "cancelled" not in window.data_panel.summary.text()


def test_evaluation_after_a_split_run_scores_only_held_out_images(
    window: MainWindow, qtbot, demo_data: Path
) -> None:
    choose_folder(qtbot, window, str(demo_data / "train"))  # no val/: 20% are held out
    qtbot.waitUntil(lambda: window.scan_task is None and window.report is not None, timeout=30_000)
    held_out = len(window.report.val)
    _train(window, qtbot)
    view = window.evaluate_view
    qtbot.waitUntil(lambda: view.task is None and view.evaluation is not None, timeout=60_000)
    assert view.evaluation.count == held_out == 24


def test_opening_a_run_folder_as_the_model_continues_from_its_weights(
    window: MainWindow, qtbot, monkeypatch
) -> None:
    from PySide6.QtWidgets import QFileDialog

    result = _train(window, qtbot)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: result.run_dir)
    menu = window.model_panel.open_weights.menu()
    next(a for a in menu.actions() if a.text().startswith("Bundle or run folder")).trigger()
    qtbot.waitUntil(lambda: window.preview_task is None, timeout=30_000)  # built in the background
    assert window.project.model == "timm:test_resnet"
    assert window.project.weights == str(Path(result.run_dir) / "model.safetensors")
    assert "weights: model.safetensors" in window.model_panel.current.text()
    again = _train(window, qtbot)
    assert again.reason == "completed"


def test_the_export_dialog_browses_for_a_folder_for_folder_formats(qtbot, monkeypatch) -> None:
    from PySide6.QtWidgets import QFileDialog, QPushButton

    from freezer_app.gui.export_dialog import ExportDialog

    asked: list[str] = []
    monkeypatch.setattr(
        QFileDialog, "getExistingDirectory", lambda *a, **k: asked.append("folder") or "/tmp/x"
    )
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", lambda *a, **k: (asked.append("file") or "/tmp/y", "")
    )
    dialog = ExportDialog(None)
    qtbot.addWidget(dialog)
    browse_out = [b for b in dialog.findChildren(QPushButton) if b.text() == "Browse…"][-1]
    for fmt, kind in (("triton", "folder"), ("bundle", "folder"), ("pt2", "file")):
        dialog.format.setCurrentIndex(dialog.format.findData(fmt))
        browse_out.click()
        assert asked[-1] == kind, fmt
