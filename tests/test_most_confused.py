"""The most confused pairs of classes: in core (order, ties, zeros left out), in `to_dict` and
the summary, and in the Evaluate tab, where clicking a pair shows its images."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTableWidget

from freezer_app.core.evaluate import ClassMetrics, Confusion, Evaluation, ImagePrediction
from freezer_app.gui.evaluate_view import EvaluateView

CLASSES = ["ant", "bee", "cat", "a_rather_long_class_name_for_dogs_on_dark_backgrounds"]
# Off the diagonal: three cells of 3 images, two of 2, one of 1; the rest are empty.
CONFUSION = [
    [5, 2, 0, 3],
    [3, 4, 0, 0],
    [0, 0, 6, 2],
    [1, 0, 3, 2],
]


def _evaluation(confusion: list[list[int]] = CONFUSION) -> Evaluation:
    """An Evaluation built by hand, with one image per count of each cell."""
    n = len(confusion)
    classes = CLASSES[:n]
    predictions = [
        ImagePrediction(
            f"/nowhere/{classes[t]}/{t}_{p}_{k}.png", t, p, 0.9 - k / 100, 0.9 if t == p else 0.1
        )
        for t in range(n)
        for p in range(n)
        for k in range(confusion[t][p])
    ]
    correct = sum(confusion[i][i] for i in range(n))
    count = sum(map(sum, confusion))
    return Evaluation(
        model="m",
        data="d",
        split="val",
        classes=classes,
        accuracy=correct / count,
        correct=correct,
        count=count,
        per_class=[
            ClassMetrics(c, 0.5, 0.5, sum(confusion[i]), sum(row[i] for row in confusion))
            for i, c in enumerate(classes)
        ],
        confusion=confusion,
        predictions=predictions,
    )


def test_most_confused_order_ties_and_zeros() -> None:
    result = _evaluation()
    pairs = [(c.true, c.predicted, c.count) for c in result.most_confused(None)]
    # Most images first; equal counts in class order (true, then predicted); no diagonal and
    # no empty cell.
    assert pairs == [(0, 3, 3), (1, 0, 3), (3, 2, 3), (0, 1, 2), (2, 3, 2), (3, 0, 1)]
    first = result.most_confused(1)[0]
    assert first == Confusion(0, 3, 3, 3 / 10)  # ant has 10 images
    assert [(c.true, c.predicted) for c in result.most_confused(2)] == [(0, 3), (1, 0)]
    assert result.most_confused() == result.most_confused(None)  # 10 is more than there are
    assert result.most_confused(0) == []
    # A perfect model confuses nothing.
    assert _evaluation([[4, 0], [0, 5]]).most_confused() == []


def test_to_dict_and_summary_name_the_pairs() -> None:
    result = _evaluation()
    data = result.to_dict(most_confused=2)
    assert {"per_class", "confusion", "worst", "skipped", "notes"} <= set(data)
    assert data["most_confused"] == [
        {"true": "ant", "predicted": CLASSES[3], "count": 3, "share_of_true": 0.3},
        {"true": "bee", "predicted": "ant", "count": 3, "share_of_true": 3 / 7},
    ]
    assert len(result.to_dict()["most_confused"]) == 6
    json.dumps(data)

    text = result.summary()
    assert text.index("confusion matrix") < text.index("most confused") < text.index("mistakes")
    assert f"  ant predicted as {CLASSES[3]}: 3 (30%)" in text
    assert f"  {CLASSES[3]} predicted as ant: 1 (17%)" in text  # 1 of its 6 images
    assert "most confused" not in _evaluation([[4, 0], [0, 5]]).summary()


def _click_row(qtbot, table: QTableWidget, row: int) -> None:
    """A real mouse click on a row's first cell."""
    rect = table.visualRect(table.model().index(row, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_clicking_a_pair_shows_its_images(qtbot) -> None:
    view = EvaluateView()
    qtbot.addWidget(view)
    view.resize(1285, 800)
    view.show()
    result = _evaluation()
    view.show_evaluation(result)
    table = view.confused
    assert table.rowCount() == 6 and "click" in view.confused_title.text()
    # Names as the per-class table shows them: elided in the middle, full on hover.
    assert table.textElideMode() == Qt.TextElideMode.ElideMiddle
    assert table.item(0, 0).text() == "ant" and table.item(0, 1).toolTip() == CLASSES[3]
    assert table.item(0, 2).text() == "3 (30%)"

    _click_row(qtbot, table, 1)  # bee predicted as ant
    assert view.images_title.text() == "True bee, predicted ant: 3 image(s)"
    assert view.images.count() == 3
    shown = [view.images.item(i).toolTip().splitlines()[0] for i in range(3)]
    assert shown == [p.path for p in result.cell(1, 0)]
    assert table.currentRow() == 1

    # The matrix shows another cell; a click on the same row shows the pair again.
    view.matrix.cellClicked.emit(2, 2)
    assert view.images_title.text().startswith("True cat, predicted cat")
    assert table.selectedItems() == []
    _click_row(qtbot, table, 1)
    assert view.images_title.text() == "True bee, predicted ant: 3 image(s)"
    # A matrix cell in the list marks its row.
    view.matrix.cellClicked.emit(3, 0)
    assert table.currentRow() == 5
    qtbot.waitUntil(lambda: view.thumbnail_task is None, timeout=10_000)
    view.cancel_all()


def test_no_confusion_says_so(qtbot) -> None:
    view = EvaluateView()
    qtbot.addWidget(view)
    view.show_evaluation(_evaluation([[4, 0], [0, 5]]))
    assert view.confused.rowCount() == 0 and "none" in view.confused_title.text()
    view.cancel_all()
