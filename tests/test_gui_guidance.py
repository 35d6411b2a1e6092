"""Guidance in the window (pytest-qt, offscreen): the three-steps strip, Help ▸ Quick guide and
Keyboard shortcuts, messages that name the window's controls, the Data tab's example images and
mode names, and the Export dialog's scrolling result."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, close_windows, make_project
from PIL import Image
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QAbstractScrollArea, QMessageBox

from freezer_app.core.catalog import _offline_error
from freezer_app.gui import guide
from freezer_app.gui.main_window import MainWindow

OFFLINE_HINT_CLI = "use a local file with --weights FILE, or train without --pretrained."


def new_window(qtbot, tmp_path: Path, monkeypatch, name: str = "settings.ini") -> MainWindow:
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    w = MainWindow(QSettings(str(tmp_path / name), QSettings.Format.IniFormat))
    w.resize(1400, 900)
    w.show()
    w._runs_root = lambda: tmp_path / "runs"  # keep runs out of the user's folders
    return w


@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, monkeypatch):
    w = new_window(qtbot, tmp_path, monkeypatch)
    w.set_project(make_project(demo_data, epochs=1), None)
    qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
    yield w
    close_windows(qtbot, [w])


def step_texts(w: MainWindow) -> list[str]:
    return [label.text() for label in w.steps_strip.steps]


def ticked(w: MainWindow) -> list[bool]:
    return ["✓" in text for text in step_texts(w)]


# ---------------------------------------------------------------------- the steps strip
def test_the_strip_ticks_its_three_steps_as_they_are_done(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch
) -> None:
    w = new_window(qtbot, tmp_path, monkeypatch)
    try:
        qtbot.waitUntil(lambda: w.preview_task is None, timeout=30_000)
        strip = w.steps_strip
        assert strip.isVisible() and ticked(w) == [False, False, False]
        texts = step_texts(w)
        assert "1 Choose images" in texts[0] and "2 Pick a model" in texts[1]
        assert "3 Train" in texts[2]
        # 1: an image folder, typed and Enter, then checked in the background.
        w.data_panel.folder.setText(str(demo_data))
        qtbot.keyClick(w.data_panel.folder, Qt.Key.Key_Return)
        qtbot.waitUntil(lambda: w.report is not None, timeout=30_000)
        assert ticked(w) == [True, False, False]
        # 2: a model picked from the list (as typed + Enter), built in the background.
        w.model_panel.search.setText("timm:test_resnet")
        qtbot.keyClick(w.model_panel.search, Qt.Key.Key_Return)
        qtbot.waitUntil(lambda: w.project.model == "timm:test_resnet", timeout=30_000)
        qtbot.waitUntil(lambda: ticked(w) == [True, True, False], timeout=30_000)
        # 3: Train. Once everything is done the strip gets out of the way.
        w.project_ctl.set_values(
            {
                "data.image_size": 32,
                "data.workers": 0,
                "data.augmentation": "none",
                "train.epochs": 1,
                "train.max_steps": 2,
                "train.batch_size": 16,
                "train.device": "cpu",
            },
            "quick run",
        )
        finished: list = []
        w.runFinished.connect(finished.append)
        w.act_train.trigger()
        assert w.session is not None and ticked(w) == [True, True, True]
        assert not strip.isVisible()
        qtbot.waitUntil(lambda: bool(finished) and w.session is None, timeout=60_000)
        assert not strip.isVisible()
        # A new, empty project: the steps are back, the run's step still done in this window.
        w.act_new.trigger()
        qtbot.waitUntil(lambda: w.preview_task is None, timeout=30_000)
        assert strip.isVisible() and ticked(w)[0] is False
    finally:
        close_windows(qtbot, [w])


def test_the_strip_can_be_dismissed_for_good(qtbot, tmp_path: Path, monkeypatch) -> None:
    w = new_window(qtbot, tmp_path, monkeypatch)
    try:
        assert w.steps_strip.isVisible()
        qtbot.mouseClick(w.steps_strip.dismiss, Qt.MouseButton.LeftButton)
        assert not w.steps_strip.isVisible()
        w.act_new.trigger()
        assert not w.steps_strip.isVisible()
    finally:
        close_windows(qtbot, [w])
    again = new_window(qtbot, tmp_path, monkeypatch)  # the same settings file
    try:
        assert not again.steps_strip.isVisible()
    finally:
        close_windows(qtbot, [again])


# ---------------------------------------------------------------------- help
def test_help_opens_the_quick_guide_and_the_shortcuts(window: MainWindow, qtbot) -> None:
    window.act_quick_guide.trigger()
    dialogs = window.findChildren(guide.QuickGuideDialog)
    assert dialogs and dialogs[-1].isVisible()
    text = dialogs[-1].browser.toPlainText()
    for words in ("Choose images", "Pick a model", "Train", "exactly zero", "Frozen check"):
        assert words in text
    assert "#" not in text.splitlines()[0]  # rendered as Markdown, not shown raw
    window.act_quick_guide.trigger()  # a second time raises the same dialog
    assert len([d for d in window.findChildren(guide.QuickGuideDialog) if d.isVisible()]) == 1
    dialogs[-1].close()

    # The list is read from the actions: a changed shortcut shows as changed.
    window.act_open_run.setShortcut(QKeySequence("Ctrl+Alt+R"))
    window.act_shortcuts.trigger()
    dialog = window.findChildren(guide.ShortcutsDialog)[-1]
    assert dialog.isVisible()
    table = dialog.table
    rows = {
        table.topLevelItem(i).text(0): table.topLevelItem(i).text(1)
        for i in range(table.topLevelItemCount())
    }
    native = lambda keys: QKeySequence(keys).toString(QKeySequence.SequenceFormat.NativeText)
    assert rows["Undo"] == QKeySequence(QKeySequence.StandardKey.Undo).toString(
        QKeySequence.SequenceFormat.NativeText
    )
    assert rows["Undo"] == native("Ctrl+Z")
    assert rows["Train"] == native("Ctrl+Return")
    assert rows["Export"] == native("Ctrl+E")
    assert rows["Open run folder"] == native("Ctrl+Alt+R")
    assert rows["Quick guide"] == native("F1")
    dialog.close()


# ---------------------------------------------------------------------- the window's words
def test_the_weights_hint_names_the_controls_in_the_window_and_flags_in_the_cli(
    window: MainWindow, qtbot, demo_data: Path, tmp_path: Path, capsys
) -> None:
    # Offline without cached weights: the run cannot start and the dialog says what to do
    # with the window's controls.
    window.model_panel.pretrained.click()
    finished: list = []
    window.runFinished.connect(finished.append)
    window.act_train.trigger()
    qtbot.waitUntil(lambda: bool(finished) and window.session is None, timeout=60_000)
    _title, message, hint = window.last_error
    assert "cannot be downloaded" in message
    assert "--weights" not in hint and "--pretrained" not in hint
    assert f"untick “{window.model_panel.pretrained.text()}” (Model tab)" in hint
    assert "“Weights file” (Model tab ▸ Open weights or bundle)" in hint
    window._open_dialog.close()

    # The command line keeps its flags: the same error, printed by `freezer-app train`.
    from freezer_app.cli import main

    code = main(
        [
            "train",
            "--model",
            "timm:test_resnet",
            "--pretrained",
            "--data",
            str(demo_data),
            *FAST,
            "--out",
            str(tmp_path / "cli-run"),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "cannot be downloaded" in err and OFFLINE_HINT_CLI in err


def test_flags_become_controls_from_the_schema(window: MainWindow) -> None:
    error = _offline_error("timm:x", "huggingface.co", "/cache")
    assert OFFLINE_HINT_CLI in error.hint  # core (and so the CLI) is unchanged
    words = guide.window_message(window, error.hint)
    assert "--" not in words
    # Each flag's control comes from the form the window shows it in.
    assert guide.window_message(window, "Use --device auto or cpu.") == (
        "Set “Device” to auto or cpu (Training tab)."
    )
    assert guide.window_message(window, "(--image-size)") == "(Data tab: “Image size”)"
    assert guide.window_message(
        window, "then continue with `freezer-app train --resume RUN_DIR`."
    ) == ("then continue with Run ▸ Resume a stopped run.")
    # A flag with no control in the window is left as it is.
    assert guide.window_message(window, "--nproc-per-node 2") == "--nproc-per-node 2"


# ---------------------------------------------------------------------- the Data tab
def test_the_data_tab_shows_example_images_per_class(window: MainWindow, qtbot) -> None:
    panel = window.data_panel
    qtbot.waitUntil(lambda: panel.thumbnail_task is None, timeout=30_000)
    assert window.report is not None
    assert panel.thumbnails_shown() == [4] * window.report.num_classes
    first_class = panel.report.topLevelItem(0)
    assert first_class.childCount() == 1 and not first_class.child(0).icon(0).isNull()


def test_the_data_tab_says_grayscale_not_l(window: MainWindow, qtbot, tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for c, shade in (("dark", 40), ("light", 220)):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (16, 16), shade + i).save(root / c / f"{i}.png")
    window.data_panel.folder.setText(str(root))
    qtbot.keyClick(window.data_panel.folder, Qt.Key.Key_Return)
    qtbot.waitUntil(
        lambda: window.report is not None and window.report.root == str(root), timeout=30_000
    )
    summary = window.data_panel.summary.text()
    assert "10 grayscale" in summary and " L" not in summary
    tree = window.data_panel.report
    converted = next(
        tree.topLevelItem(i)
        for i in range(tree.topLevelItemCount())
        if tree.topLevelItem(i).text(0).startswith("Converted")
    )
    assert converted.child(0).text(0) == "10 grayscale: converted to RGB"


# ---------------------------------------------------------------------- the Export dialog
def test_the_export_result_scrolls_above_the_buttons(qtbot) -> None:
    from freezer_app.gui.export_dialog import ExportDialog

    class Result:
        path = "/tmp/export/model.onnx"

        def summary(self) -> str:
            return "\n".join(f"note: line {i}" for i in range(200))

    dialog = ExportDialog(None)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog._done(Result())  # type: ignore[arg-type]
    qtbot.waitUntil(lambda: dialog.report.isVisible())
    report = dialog.report
    assert isinstance(report, QAbstractScrollArea) and report.isReadOnly()
    assert report.height() <= report.maximumHeight() < 400
    assert report.verticalScrollBar().maximum() > 0  # the rest is a scroll away
    assert report.geometry().bottom() < dialog.buttons.geometry().top()
    assert "Exported to" in dialog.status.text()
    dialog._error("Nowhere to write.", "Pass --out PATH, or choose another --out.")
    assert "--out" not in dialog.status.text() and "“To”" in dialog.status.text()
