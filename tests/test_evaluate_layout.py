"""The Evaluate tab's layout (offscreen, pytest-qt): at the window's narrowest the confusion
matrix keeps most of its room and the class names stay readable, the model line never wraps a
word a line; a wide view puts the matrix beside the tables, and back again when narrowed."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QPointF, QSettings, Qt
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QTableWidget

from freezer_app.core.evaluate import ClassMetrics, Evaluation, ImagePrediction
from freezer_app.gui.evaluate_view import MIN_NAME_CHARS, WIDE_PX, ConfusionMatrix, EvaluateView

DOGS = [
    "golden_retriever",
    "labrador_retriever",
    "german_shepherd",
    "border_collie",
    "beagle",
    "siberian_husky",
    "dachshund",
    "poodle",
    "boxer",
    "rottweiler",
    "chihuahua",
    "great_dane",
]
LEAST_CELLS_PX = 150  # the matrix's cells, each side, at the window's narrowest


def _evaluation(classes: list[str]) -> Evaluation:
    """20 right per class, a few mistakes off the diagonal (a fixed pattern)."""
    n = len(classes)
    conf = [[20 if i == j else (i * 7 + j * 3) % 4 for j in range(n)] for i in range(n)]
    preds = [
        ImagePrediction(f"/x/{classes[t]}/{t}_{p}_{k}.png", t, p, 0.8, 0.9 if t == p else 0.1)
        for t in range(n)
        for p in range(n)
        for k in range(conf[t][p])
    ]
    correct = sum(conf[i][i] for i in range(n))
    return Evaluation(
        model="m",
        data="d",
        split="val",
        classes=classes,
        accuracy=correct / sum(map(sum, conf)),
        correct=correct,
        count=sum(map(sum, conf)),
        per_class=[
            ClassMetrics(name, 0.8, 0.7, sum(conf[i]), sum(row[i] for row in conf))
            for i, name in enumerate(classes)
        ],
        confusion=conf,
        predictions=preds,
    )


def _cells_px(matrix: ConfusionMatrix) -> tuple[float, float]:
    """The matrix's cells on screen, in pixels (the plot's scene is in view pixels)."""
    rect = matrix.image.sceneBoundingRect()
    return rect.width(), rect.height()


def _names_readable(table: QTableWidget, names: int, longest: str) -> None:
    """The first `names` columns show the longest name whole, with no sideways scrolling."""
    fm = QFontMetrics(table.font())
    for c in range(names):
        assert table.columnWidth(c) >= fm.horizontalAdvance(longest), (c, table.columnWidth(c))
        assert table.columnWidth(c) >= fm.horizontalAdvance("n" * MIN_NAME_CHARS)
    assert table.horizontalScrollBar().maximum() == 0


def _click_cell(qtbot, matrix: ConfusionMatrix, true: int, predicted: int) -> None:
    """A real mouse click on a matrix cell."""
    vb = matrix.view.getPlotItem().vb
    scene = vb.mapViewToScene(QPointF(predicted + 0.5, true + 0.5))
    pos = matrix.view.mapFromScene(scene)
    qtbot.mouseClick(matrix.view.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def _click_row(qtbot, table: QTableWidget, row: int) -> None:
    rect = table.visualRect(table.model().index(row, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_narrowest_window_keeps_the_matrix_and_names_readable(qtbot, tmp_path: Path) -> None:
    from freezer_app.gui.main_window import MainWindow

    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.resize(1285, 860)  # the window's minimum width
    w.show()
    view = w.evaluate_view
    w.right.setCurrentWidget(view)
    qtbot.waitUntil(lambda: view.width() > 0 and view.wide is not None)
    # The model line on its own, above the buttons, one or two lines high (not a word a line).
    label = view.model_label
    assert label.geometry().bottom() < view.choose.geometry().top()
    assert label.height() <= 2 * QFontMetrics(label.font()).lineSpacing() + 6

    view.show_evaluation(_evaluation(DOGS))
    qtbot.wait(50)
    assert view.width() < WIDE_PX and view.wide is False
    # The matrix has the tables' area to itself (a tab each), and its cells most of it.
    assert view.tabs.currentWidget() is view.matrix
    matrix = view.matrix
    width, height = _cells_px(matrix)
    assert width >= LEAST_CELLS_PX and height >= LEAST_CELLS_PX, (width, height)
    left, bottom = matrix.left_axis.max_label_px, matrix.bottom_axis.max_label_px
    assert left <= 0.3 * matrix.view.width() and bottom <= 0.3 * matrix.view.height()
    assert max(left, bottom) <= ConfusionMatrix.LABEL_PX
    assert all(label.isVisible() for label in matrix.labels)  # the counts fit their cells

    # A click on a cell shows its images below, in sight.
    _click_cell(qtbot, matrix, 1, 0)
    assert view.images_title.text().startswith(f"True {DOGS[1]}, predicted {DOGS[0]}")
    assert view.images.isVisible()

    view.tabs.setCurrentWidget(view.table)
    qtbot.wait(20)
    _names_readable(view.table, 1, "labrador_retriever")
    view.tabs.setCurrentWidget(view.confused_box)
    qtbot.wait(20)
    _names_readable(view.confused, 2, "labrador_retriever")
    _click_row(qtbot, view.confused, 0)
    true, predicted = view.confused_cells[0]
    assert view.shown_cell == (true, predicted)
    assert view.images_title.text().startswith(f"True {DOGS[true]}, predicted {DOGS[predicted]}")

    qtbot.waitUntil(lambda: view.thumbnail_task is None, timeout=10_000)
    w.project_ctl.undo_stack.setClean()
    w.close()


def test_wide_view_puts_the_matrix_beside_the_tables(qtbot) -> None:
    view = EvaluateView()
    qtbot.addWidget(view)
    view.resize(1100, 760)
    view.show()
    view.show_evaluation(_evaluation(DOGS))
    qtbot.wait(50)
    assert view.wide is True and view.arrangement.currentWidget() is view.top

    def box(widget):
        return widget.geometry().translated(widget.parentWidget().mapTo(view, QPoint(0, 0)))

    matrix, table, confused = box(view.matrix), box(view.table), box(view.confused)
    # Side by side: the tables right of the matrix, within its height; one above the other.
    assert matrix.right() < table.left() and matrix.right() < confused.left()
    assert table.top() < matrix.bottom() and confused.top() < matrix.bottom()
    assert table.bottom() < confused.top()
    width, height = _cells_px(view.matrix)
    assert min(width, height) >= 200, (width, height)
    # Every name whole in the tables (they take up to half of the width for it).
    _names_readable(view.table, 1, max(DOGS, key=len))
    _names_readable(view.confused, 2, max(DOGS, key=len))

    # Narrowed: a tab each (the matrix first); widened again: side by side again.
    view.resize(WIDE_PX - 100, 760)
    qtbot.wait(20)
    assert view.wide is False and view.arrangement.currentWidget() is view.tabs
    assert [view.tabs.tabText(i) for i in range(view.tabs.count())] == [
        "Confusion matrix",
        "Per class",
        "Most confused",
    ]
    assert view.tabs.currentWidget() is view.matrix and view.matrix.isVisible()
    view.resize(WIDE_PX + 100, 760)
    qtbot.wait(20)
    assert view.wide is True and view.tabs.count() == 0
    assert all(w.isVisible() for w in (view.matrix, view.table, view.confused))
    view.matrix.cellClicked.emit(2, 2)
    assert view.images_title.text().startswith(f"True {DOGS[2]}, predicted {DOGS[2]}")
    qtbot.waitUntil(lambda: view.thumbnail_task is None, timeout=10_000)
    view.cancel_all()


def test_long_names_leave_the_cells_most_of_a_narrow_matrix(qtbot) -> None:
    """Long class names, many classes, the narrowest pane: names elided in the middle to a
    share of the plot (full on hover), the cells keep the rest; counts too wide for their
    cells are hidden rather than drawn over each other."""
    classes = [f"{i:02d}_a_rather_long_class_name_of_the_set_{i:02d}" for i in range(24)]
    view = EvaluateView()
    qtbot.addWidget(view)
    view.resize(367, 700)
    view.show()
    view.show_evaluation(_evaluation(classes))
    qtbot.wait(50)
    matrix = view.matrix
    width, height = _cells_px(matrix)
    assert width >= LEAST_CELLS_PX and height >= LEAST_CELLS_PX, (width, height)
    fm = matrix.left_axis.metrics()
    for axis in (matrix.left_axis, matrix.bottom_axis):
        assert axis.max_label_px < ConfusionMatrix.LABEL_PX
        assert all("…" in label for label in axis.labels)
        assert max(fm.horizontalAdvance(label) for label in axis.labels) <= axis.max_label_px
        assert len(set(axis.labels)) == len(classes)  # still tell classes apart
    assert matrix.cell_px() < 20 and matrix.labels
    assert not any(label.isVisible() for label in matrix.labels)
    view.cancel_all()
