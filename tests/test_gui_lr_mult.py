"""The tree's LR × column (pytest-qt, offscreen): a per-layer learning-rate multiplier typed on a
row is an undoable edit of the project's plan, shown inherited below it, fixed while a run
trains, and trained with."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import close_windows, make_project, shown_window
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QApplication, QLineEdit

from freezer_app.core.run_folder import RunFolder, read_jsonl
from freezer_app.gui.main_window import MainWindow
from freezer_app.gui.tree_model import HEADERS, INHERITED_COLOUR, LR_MULT


@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, monkeypatch) -> MainWindow:
    w = shown_window(qtbot, tmp_path, make_project(demo_data, epochs=1), monkeypatch)
    yield w
    close_windows(qtbot, [w])


def _cell(w: MainWindow, path: str):
    return w.tree_panel.view_index(w.tree_model.index_for_path(path)).siblingAtColumn(LR_MULT)


def _type_in_cell(w: MainWindow, qtbot, path: str, text: str) -> None:
    """Double-click the row's LR × cell in the real view, type, press Enter."""
    view = w.tree_panel.view
    index = _cell(w, path)
    view.scrollTo(index)
    centre = view.visualRect(index).center()
    # A user's double-click is a press and release, then the double-click itself.
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    qtbot.waitUntil(lambda: isinstance(QApplication.focusWidget(), QLineEdit), timeout=5_000)
    editor = QApplication.focusWidget()
    assert editor.parent() is view.viewport()  # the cell's editor, not the filter box
    editor.selectAll()
    qtbot.keyClick(editor, Qt.Key.Key_Backspace)  # what the cell held goes
    qtbot.keyClicks(editor, text)
    qtbot.keyClick(editor, Qt.Key.Key_Return)
    # The delegate commits as the editor closes.
    qtbot.waitUntil(lambda: view.state() != QAbstractItemView.State.EditingState, timeout=5_000)
    qtbot.wait(50)


def test_typing_a_multiplier_is_an_undoable_plan_edit(window: MainWindow, qtbot) -> None:
    assert HEADERS[LR_MULT] == "LR ×"
    window.tree_panel.expand_to_depth(2)
    assert _cell(window, "layer4").data() == ""  # no multiplier: nothing shown
    _type_in_cell(window, qtbot, "layer4", "0.5")
    assert window.project.plan.lr_mults() == {"layer4": 0.5}
    assert _cell(window, "layer4").data() == "0.5"
    # Rows below inherit it, greyed; the edit is one undo step like a tick.
    child = _cell(window, "layer4.0")
    assert child.data() == "0.5"
    assert child.data(Qt.ItemDataRole.ForegroundRole).color() == INHERITED_COLOUR
    assert _cell(window, "layer3").data() == ""
    assert "LR" in window.project_ctl.undo_stack.undoText()
    window.project_ctl.undo_stack.undo()
    assert window.project.plan.lr_mults() == {} and _cell(window, "layer4").data() == ""
    window.project_ctl.undo_stack.redo()
    assert window.project.plan.lr_mults() == {"layer4": 0.5}

    # A parameter row overrides it; a bad number changes nothing and says why; empty resets.
    _type_in_cell(window, qtbot, "fc.weight", "2")
    assert window.project.plan.lr_mults() == {"layer4": 0.5, "fc.weight": 2.0}
    errors: list[str] = []
    window.controller.error.connect(errors.append)
    _type_in_cell(window, qtbot, "layer4", "-3")
    assert errors and "layer4" in errors[-1]
    assert window.project.plan.lr_mults() == {"layer4": 0.5, "fc.weight": 2.0}
    _type_in_cell(window, qtbot, "layer4", "")
    assert window.project.plan.lr_mults() == {"fc.weight": 2.0}
    assert window.controller.plan.preset == "train-all"  # the selection is untouched


def test_a_run_trains_with_the_multiplier_and_fixes_it(window: MainWindow, qtbot) -> None:
    window.tree_panel.expand_to_depth(1)
    _type_in_cell(window, qtbot, "layer4", "0.25")
    finished: list = []
    window.runFinished.connect(finished.append)
    window.act_train.trigger()
    assert window.session is not None
    # The run built its groups: the column is not editable until it ends.
    assert (
        not window.tree_model.flags(
            window.tree_model.index_for_path("layer4").siblingAtColumn(LR_MULT)
        )
        & Qt.ItemFlag.ItemIsEditable
    )
    qtbot.waitUntil(lambda: bool(finished) and window.session is None, timeout=120_000)
    assert finished[0].reason == "completed" and finished[0].frozen_check_passed
    steps = [r for r in read_jsonl(RunFolder(window.run_dir).metrics) if r.get("type") == "step"]
    assert steps and all(r["lrs"]["x0.25"] == pytest.approx(0.25 * r["lr"]) for r in steps)
    assert (
        window.tree_model.flags(window.tree_model.index_for_path("layer4").siblingAtColumn(LR_MULT))
        & Qt.ItemFlag.ItemIsEditable
    )
