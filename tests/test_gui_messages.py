"""Messages the window shows where the user looks: an export's error alone (not under an older
result), a missing From path said as such and in the window's words, why the learning-rate
finder cannot use a chosen folder, unreadable dropped images counted and told in short, and an
Evaluate tab without a result drawing no meaningless axes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import close_windows, make_project, shown_window
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QFileDialog, QPushButton, QToolBar

from freezer_app.core.train import Trainer
from freezer_app.gui.export_dialog import ExportDialog
from freezer_app.gui.main_window import MainWindow

LEFT = Qt.MouseButton.LeftButton


@pytest.fixture(scope="module")
def run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained test_resnet run folder (one short epoch)."""
    out = tmp_path_factory.mktemp("messages") / "run"
    Trainer(make_project(demo_data, epochs=1, max_steps=2), out).run()
    assert (out / "model.safetensors").exists()
    return out


@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, monkeypatch) -> MainWindow:
    w = shown_window(qtbot, tmp_path, make_project(demo_data, epochs=1), monkeypatch)
    yield w
    close_windows(qtbot, [w])


def _type(qtbot, line, text: str, enter: bool = False) -> None:
    """Replace a field's text by typing, as a user does."""
    line.setFocus()
    line.selectAll()
    qtbot.keyClick(line, Qt.Key.Key_Delete)
    qtbot.keyClicks(line, text)
    if enter:
        qtbot.keyClick(line, Qt.Key.Key_Return)


def _toolbar_button(window: MainWindow, action):
    for bar in window.findChildren(QToolBar):
        button = bar.widgetForAction(action)
        if button is not None:
            return button
    raise AssertionError(f"no toolbar button for {action.text()}")


def _choose_model(qtbot, window: MainWindow, folder: Path, monkeypatch) -> None:
    """The Evaluate tab's Model… button, answering its folder dialog with `folder`."""
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    window.right.setCurrentWidget(window.evaluate_view)
    qtbot.mouseClick(window.evaluate_view.choose, LEFT)
    assert window.evaluate_view.source == folder


# ---------------------------------------------------------------------- export
def _open_export(qtbot, window: MainWindow) -> ExportDialog:
    qtbot.mouseClick(_toolbar_button(window, window.act_export), LEFT)
    dialog = window.findChildren(ExportDialog)[-1]
    assert dialog.isVisible()
    return dialog


def _browse_from(qtbot, dialog: ExportDialog, folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    browse = next(b for b in dialog.findChildren(QPushButton) if b.text() == "Browse…")
    qtbot.mouseClick(browse, LEFT)
    assert dialog.source.text() == str(folder)


def _shows_no_result(dialog: ExportDialog) -> bool:
    return (
        dialog.result is None
        and not dialog.report.isVisible()
        and not dialog.report.toPlainText()
        and not dialog.open_button.isEnabled()
    )


def test_a_new_export_clears_the_last_result_and_an_error_shows_alone(
    window: MainWindow, qtbot, run: Path, tmp_path: Path, monkeypatch
) -> None:
    dialog = _open_export(qtbot, window)
    _browse_from(qtbot, dialog, run, monkeypatch)
    dialog.format.setCurrentIndex(dialog.format.findData("bundle"))
    qtbot.mouseClick(dialog.export_button, LEFT)
    qtbot.waitUntil(lambda: dialog.task is None, timeout=120_000)
    assert dialog.result is not None, dialog.status.text()
    assert "wrote bundle" in dialog.report.toPlainText() and dialog.report.isVisible()
    assert dialog.open_button.isEnabled()

    # An export that fails in its thread (a folder that is no run): while it runs, and after,
    # the earlier result is gone.
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    _type(qtbot, dialog.out, str(tmp_path / "other-bundle"))
    _browse_from(qtbot, dialog, empty, monkeypatch)
    qtbot.mouseClick(dialog.export_button, LEFT)
    assert dialog.task is not None and _shows_no_result(dialog)
    qtbot.waitUntil(lambda: dialog.task is None, timeout=60_000)
    assert _shows_no_result(dialog) and "b00020" in dialog.status.styleSheet()
    assert "wrote bundle" not in dialog.status.text()

    # Succeeds again, then From names nothing: the red message alone, said as a chooser's.
    _browse_from(qtbot, dialog, run, monkeypatch)
    qtbot.mouseClick(dialog.export_button, LEFT)
    qtbot.waitUntil(lambda: dialog.task is None, timeout=120_000)
    assert dialog.result is not None and dialog.open_button.isEnabled(), dialog.status.text()
    _type(qtbot, dialog.source, "/nonexistent/run")
    qtbot.mouseClick(dialog.export_button, LEFT)
    assert dialog.task is None and _shows_no_result(dialog)
    assert "b00020" in dialog.status.styleSheet()
    assert dialog.status.text() == (
        "Run folder or file not found: /nonexistent/run. "
        "Choose a run folder or bundle with Browse…, or type the path of a weights file."
    )
    dialog.reject()


def test_model_list_hints_are_said_in_the_windows_words(
    window: MainWindow, qtbot, tmp_path: Path, demo_data: Path, monkeypatch
) -> None:
    """Core's `freezer-app models SEARCH` becomes the Model tab's list: in a message of the
    window (a project naming an unknown model, opened with File ▸ Open) and of the dialog."""
    from freezer_app.core.project import Project

    project = make_project(demo_data, epochs=1)
    path = tmp_path / "unknown-model.json"
    project.save(path)
    data = json.loads(path.read_text())
    data["model"] = "timm:zzqqxxvv"
    path.write_text(json.dumps(data))
    assert Project.load(path).model == "timm:zzqqxxvv"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    window.act_open.trigger()
    qtbot.waitUntil(
        lambda: window.preview_task is None and bool(getattr(window, "last_error", None)),
        timeout=30_000,
    )
    _title, message, hint = window.last_error
    assert "zzqqxxvv" in message
    assert hint == "Search the model list on the Model tab."
    assert "freezer-app" not in message + hint

    dialog = ExportDialog(None)  # on its own, too
    qtbot.addWidget(dialog)
    text = dialog.in_own_words(
        "Unknown timm model 'x'. Pick a tagged variant (see `freezer-app models NAME`) "
        "or List models with `freezer-app models SEARCH`."
    )
    assert "freezer-app" not in text
    assert "(see the model list on the Model tab)" in text
    assert "Search the model list on the Model tab." in text


# ---------------------------------------------------------------------- lr finder
def test_find_learning_rate_says_why_the_chosen_folder_cannot_be_used(
    window: MainWindow, qtbot, tmp_path: Path, demo_data: Path
) -> None:
    one = tmp_path / "one-class"
    shutil.copytree(demo_data / "train" / "circles", one / "circles")
    window.left.setCurrentWidget(window.data_panel)
    _type(qtbot, window.data_panel.folder, str(one), enter=True)
    qtbot.waitUntil(lambda: window.scan_task is None, timeout=30_000)
    assert window.report is None and window.project.data.path
    reason = window.data_panel.summary.text()
    assert "1 class folder" in reason and "at least two" in reason

    window.left.setCurrentWidget(window.settings_panel)
    qtbot.mouseClick(window.settings_panel.find_lr, LEFT)
    assert window.lr_find_task is None
    # As Train says it.
    assert window.last_error == ("The dataset cannot be used", reason, "")
    window.last_error = None
    window.act_train.trigger()
    assert window.last_error == ("The dataset cannot be used", reason, "")


def test_find_learning_rate_without_a_folder_asks_for_one(window: MainWindow, qtbot) -> None:
    window.act_new.trigger()  # (unsaved changes: discarded)
    assert not window.project.data.path
    window.left.setCurrentWidget(window.settings_panel)
    qtbot.mouseClick(window.settings_panel.find_lr, LEFT)
    title, message, _hint = window.last_error
    assert (title, message) == ("No dataset", "Choose an image folder first.")
    assert window.left.currentWidget() is window.data_panel


# ---------------------------------------------------------------------- predictions
def _drop(window: MainWindow, paths: list[Path]) -> None:
    """Drag files onto the window and drop them (the events Qt sends)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    actions, none = Qt.DropAction.CopyAction, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(QPoint(20, 20), actions, mime, Qt.MouseButton.NoButton, none)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(20, 20), actions, mime, Qt.MouseButton.NoButton, none)
    QApplication.sendEvent(window, drop)


def _tile_lines_fit(view) -> bool:
    limit = view.images.gridSize().width()
    fm = view.images.fontMetrics()
    return all(
        fm.horizontalAdvance(line) <= limit
        for i in range(view.images.count())
        for line in view.images.item(i).text().splitlines()
    )


def test_unreadable_images_are_counted_and_told_in_short(
    window: MainWindow, qtbot, run: Path, tmp_path: Path, demo_data: Path, monkeypatch
) -> None:
    view = window.evaluate_view
    _choose_model(qtbot, window, run, monkeypatch)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png at all " * 20)
    missing = tmp_path / "missing.png"

    # Predict images… with only images that cannot be read.
    monkeypatch.setattr(
        QFileDialog, "getOpenFileNames", lambda *a, **k: ([str(corrupt), str(missing)], "")
    )
    qtbot.mouseClick(view.predict_button, LEFT)
    qtbot.waitUntil(lambda: view.task is None and view.images.count() == 2, timeout=60_000)
    banner = view.banner.text()
    assert banner.startswith("2 image(s) could not be read"), banner
    assert "top 0" not in banner and "Predictions for" not in banner
    tiles = [view.images.item(i) for i in range(2)]
    assert tiles[0].text().splitlines() == ["corrupt.png", "not an image"]
    assert tiles[1].text().splitlines() == ["missing.png", "file not found"]
    assert "cannot identify image file" in tiles[0].toolTip()  # the full reason
    assert str(corrupt) in tiles[0].toolTip()
    assert _tile_lines_fit(view)

    # Dropped on the window: one image that reads, one that does not.
    good = sorted((demo_data / "val" / "stripes").glob("*.png"))[0]
    _drop(window, [good, corrupt])
    qtbot.waitUntil(
        lambda: (
            view.task is None and view.images.count() == 2 and "Predictions" in view.banner.text()
        ),
        timeout=60_000,
    )
    banner = view.banner.text()
    assert banner.startswith("Predictions for 1 of 2 image(s): the top 3 classes"), banner
    assert "1 could not be read" in banner
    assert view.images.item(1).text().splitlines() == ["corrupt.png", "not an image"]
    read = view.images.item(0).text().splitlines()
    assert read[0] == good.name and len(read) == 1 + 3 and all("%" in line for line in read[1:])
    assert _tile_lines_fit(view)


# ---------------------------------------------------------------------- empty matrix
def _axes_shown(matrix) -> tuple[bool, bool]:
    plot = matrix.view.getPlotItem()
    return plot.getAxis("left").isVisible(), plot.getAxis("bottom").isVisible()


def _show_matrix_tab(view) -> None:
    if not view.wide:  # narrow: the matrix is a tab of its own
        view.tabs.setCurrentWidget(view.matrix)


def _dark_share(image) -> float:
    """Share of a grabbed widget's pixels that are dark (text, ticks, lines)."""
    image = image.convertToFormat(image.Format.Format_Grayscale8)
    width, height = image.width(), image.height()
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(height, image.bytesPerLine())
    return float((pixels[:, :width] < 100).mean())


def test_the_confusion_matrix_is_empty_until_there_is_a_result(
    window: MainWindow, qtbot, run: Path, tmp_path: Path, monkeypatch
) -> None:
    view, matrix = window.evaluate_view, window.evaluate_view.matrix
    window.right.setCurrentWidget(view)
    _show_matrix_tab(view)
    qtbot.waitUntil(lambda: matrix.view.isVisible())
    assert matrix.empty and _axes_shown(matrix) == (False, False)
    assert matrix.empty_text.isVisible() and "Evaluate" in matrix.empty_text.textItem.toPlainText()
    empty_png = tmp_path / "matrix-empty.png"
    assert matrix.view.grab().save(str(empty_png))
    assert _dark_share(matrix.view.grab().toImage()) < 0.001  # no ticks: one grey line

    # Evaluate (the toolbar's button): the matrix with its axes and class names.
    _choose_model(qtbot, window, run, monkeypatch)
    qtbot.mouseClick(_toolbar_button(window, window.act_evaluate), LEFT)
    qtbot.waitUntil(lambda: view.task is None and view.evaluation is not None, timeout=60_000)
    _show_matrix_tab(view)
    assert not matrix.empty and _axes_shown(matrix) == (True, True)
    # The names get their room back (the axes are laid out again once shown).
    qtbot.waitUntil(lambda: matrix.left_axis.geometry().width() > 20)
    assert matrix.bottom_axis.geometry().height() > 20
    assert matrix.left_axis.names == view.evaluation.classes and matrix.n == 3
    assert matrix.view.grab().save(str(tmp_path / "matrix-result.png"))

    # Another model: the old result goes, the matrix is empty again.
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    _choose_model(qtbot, window, other, monkeypatch)
    assert view.evaluation is None and view.table.rowCount() == 0
    assert matrix.empty and _axes_shown(matrix) == (False, False) and matrix.n == 0
    assert not matrix.labels

    # New project keeps it empty.
    window.act_new.trigger()
    assert matrix.empty and _axes_shown(matrix) == (False, False)
