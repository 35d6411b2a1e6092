"""Readable plots and tables (offscreen, pytest-qt): bar text never clipped, numbers that fit,
distinct layer labels, frozen layers in grey, every class named, dropped images queued."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import close_windows, make_project, shown_window
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QFont, QFontMetrics
from PySide6.QtWidgets import QStyleOptionViewItem

from freezer_app.core.evaluate import (
    ClassMetrics,
    ClassProbability,
    Evaluation,
    ImagePrediction,
    PredictionResult,
)
from freezer_app.core.freeze import FreezePlan
from freezer_app.gui.evaluate_view import EvaluateView
from freezer_app.gui.main_window import MainWindow
from freezer_app.gui.plots import (
    FROZEN_PLOT_RGB,
    MEAN_BAR_RGB,
    GradientFlowPlot,
    UpdateHeatmap,
    elide_distinct,
    layer_labels,
)
from freezer_app.gui.tree_model import GRAD, PARAMS, TRAINABLE, TYPE, UPDATE, BarRole
from freezer_app.gui.tree_view import FROZEN_TEXT, BarDelegate


@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, monkeypatch) -> MainWindow:
    w = shown_window(
        qtbot,
        tmp_path,
        make_project(demo_data, epochs=1, plan=FreezePlan(preset="train-last:1")),
        monkeypatch,
    )
    yield w
    close_windows(qtbot, [w])


def _train(w: MainWindow, qtbot) -> object:
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    qtbot.waitUntil(lambda: bool(finished) and w.session is None, timeout=120_000)
    return finished[0]


def _drop(w: MainWindow, paths: list[Path]) -> None:
    """Drop files on the window, as a file manager does."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    w.dropEvent(
        QDropEvent(
            QPoint(10, 10),
            Qt.DropAction.CopyAction,
            mime,
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
        )
    )


def _option(view, index) -> QStyleOptionViewItem:
    """The style option a view paints a cell with: its rect and the view's font."""
    option = QStyleOptionViewItem()
    option.rect = view.visualRect(index)
    option.font = view.font()
    option.fontMetrics = QFontMetrics(view.font())
    return option


def _assert_bar_cells_fit(w: MainWindow) -> None:
    view = w.tree_panel.view
    fm = QFontMetrics(view.font())
    for path in ("conv1.0", "layer4", "fc"):  # frozen, trainable, head
        for col in (GRAD, UPDATE):
            index = w.tree_model.index_for_path(path).siblingAtColumn(col)
            delegate = view.itemDelegateForColumn(col)
            assert isinstance(delegate, BarDelegate)
            option = _option(view, index)
            # The row is as tall as the font (plus padding), and so is the text's rect.
            assert option.rect.height() >= fm.height()
            assert delegate.sizeHint(option, index).height() >= fm.height()
            text_rect = delegate.text_rect(option)
            assert text_rect.height() >= fm.height()
            value = index.data(BarRole)
            assert value is not None
            text = FROZEN_TEXT if value[1] else w.tree_model.bar_text(index)
            assert fm.horizontalAdvance(text) <= text_rect.width(), (path, col, text)


def test_trained_window_reads_well_and_queues_drops(
    window: MainWindow, qtbot, demo_data: Path
) -> None:
    result = _train(window, qtbot)
    assert result.reason == "completed"
    w = window
    w.tree_panel.expand_to_depth(2)

    # Tree: bar text never clipped, also with a bigger font (row height follows the font).
    _assert_bar_cells_fit(w)
    big = QFont(w.tree_panel.view.font())
    big.setPointSizeF(big.pointSizeF() * 1.6)
    w.tree_panel.view.setFont(big)
    w.tree_panel.fit_columns()
    qtbot.wait(50)
    _assert_bar_cells_fit(w)

    # Counts with thousands separators, in columns wide enough for them; type names whole.
    view = w.tree_panel.view
    fm = QFontMetrics(view.font())
    header = view.header()
    root = w.tree_model.index(0, 0)
    total = w.tree_model.index(0, PARAMS).data()
    assert total == f"{w.controller.tree.root.total:,}" and "," in total
    assert header.sectionSize(PARAMS) >= fm.horizontalAdvance(total)
    for row in range(w.tree_model.rowCount(root)):
        type_name = w.tree_model.index(row, TYPE, root).data()
        assert header.sectionSize(TYPE) >= fm.horizontalAdvance(type_name), type_name

    # The tree's colours have a legend.
    legend = w.tree_panel.legend.text()
    assert all(word in legend for word in ("trainable", "frozen", "partly frozen", "pending"))

    # Gradient flow: frozen layers in their own grey, not the blue of the mean bars.
    grad = w.grad_plot
    brush = grad.frozen.opts["brush"].color().getRgb()[:3]
    assert brush == FROZEN_PLOT_RGB and brush != MEAN_BAR_RGB
    assert len(grad.frozen.data) > 0  # train-last:1 leaves layers frozen
    # Every layer gets a label of its own; with the plot wide enough, every one is shown.
    labels = grad.axis.labels
    assert len(set(labels)) == len(grad.names)
    downsample = [label for n, label in zip(grad.names, labels) if n.endswith("downsample.1")]
    assert len(downsample) >= 2 and len(set(downsample)) == len(downsample)
    ticks = grad.axis.tickValues(-1, len(grad.names), 16 * len(grad.names) + 40)
    assert [round(v) for v in ticks[0][1]] == list(range(len(grad.names)))
    assert w.heatmap.axis.labels == labels  # the same names in both plots

    # A drop during the evaluation that follows a run waits for it, then is predicted.
    ev_view = w.evaluate_view
    qtbot.waitUntil(lambda: ev_view.task is None and ev_view.evaluation is not None, timeout=60_000)
    ev_view.run()  # an evaluation runs now (as right after a run)
    assert ev_view.task is not None
    images = sorted((demo_data / "val" / "squares").glob("*.png"))[:2]
    _drop(w, images)
    assert ev_view.queued == [str(p) for p in images]
    assert "queued" in ev_view.banner.text()
    qtbot.waitUntil(
        lambda: ev_view.task is None and ev_view.images_title.text() == "Predictions",
        timeout=60_000,
    )
    assert ev_view.queued == [] and ev_view.images.count() == len(images)
    assert ev_view.evaluation is not None  # the evaluation ran to its end first
    # The tiles name their files; the banner counts the tiles and the lines shown.
    for i, path in enumerate(images):
        assert ev_view.images.item(i).text().splitlines()[0] == path.name
    assert f"for {len(images)} image(s)" in ev_view.banner.text()
    lines = len(ev_view.images.item(0).text().splitlines()) - 1
    assert f"top {lines} classes" in ev_view.banner.text()


def test_equal_tails_get_distinct_labels() -> None:
    names = [
        "layer2.0.downsample.1",
        "layer3.0.downsample.1",
        "layer4.0.downsample.1",
        "layer4.0.conv1",
        "fc",
    ]
    # Short enough: whole paths (the three downsample.1 differ in their stage).
    assert layer_labels(names) == names
    long = [*names, "stages.2.blocks.1.mlp.fc1", "stages.3.blocks.1.mlp.fc1", ""]
    labels = layer_labels(long)
    assert len(set(labels)) == len(labels)
    assert labels[:3] == ["l2.0.downsample.1", "l3.0.downsample.1", "l4.0.downsample.1"]
    assert labels[5:] == ["s.2.b.1.mlp.fc1", "s.3.b.1.mlp.fc1", "(top level)"]
    # A prefix every path shares tells nothing apart.
    assert layer_labels(["model.a.0", "model.a.1"]) == ["a.0", "a.1"]


def test_plot_axes_label_distinct_layers_and_show_full_paths(qtbot) -> None:
    names = [f"layer{i}.0.downsample.1" for i in (2, 3, 4)] + ["fc"]
    heat = UpdateHeatmap()
    grad = GradientFlowPlot()
    qtbot.addWidget(heat)
    qtbot.addWidget(grad)
    for plot in (heat, grad):
        plot.set_layers(names)
        strings = plot.axis.labels
        assert len(set(strings)) == len(names)
        # Hovering a label says the full path.
        assert [names[plot.axis.index_at(i + plot.axis.offset)] for i in range(4)] == names
    values = heat.axis.tickValues(0, 4, 400)[0][1]
    assert heat.axis.tickStrings(values, 1, 1) == heat.axis.labels
    # Hovering a label on the axis itself says the full path too.
    heat.resize(600, 400)
    heat.show()
    qtbot.wait(50)
    heat.plot.setYRange(0, 4, padding=0)
    vb = heat.plot.vb
    for i, name in enumerate(names):
        scene = vb.mapViewToScene(QPointF(0, i + 0.5))
        heat.axis.hoverEvent(_Hover(heat.axis.mapFromScene(scene)))
        assert heat.axis.toolTip() == name


class _Hover:
    """The parts of pyqtgraph's HoverEvent an axis reads."""

    def __init__(self, pos: QPointF) -> None:
        self._pos = pos

    def isExit(self) -> bool:
        return False

    def pos(self) -> QPointF:
        return self._pos


def _evaluation(classes: list[str]) -> Evaluation:
    n = len(classes)
    confusion = [[5 if i == j else 1 for j in range(n)] for i in range(n)]
    return Evaluation(
        model="m",
        data="d",
        split="val",
        classes=classes,
        accuracy=0.5,
        correct=5 * n,
        count=(5 + n - 1) * n,
        per_class=[ClassMetrics(c, 0.5, 0.5, 5 + n - 1, 5 + n - 1) for c in classes],
        confusion=confusion,
        predictions=[ImagePrediction("/x/a.png", 0, 1, 0.9, 0.1)],
    )


def test_every_class_named_in_the_matrix_and_table(qtbot) -> None:
    classes = [
        "circles",
        "a_rather_long_class_name_for_squares_on_dark_backgrounds",
        "a_rather_long_class_name_for_stripes_on_dark_backgrounds",
        "x",
    ]
    view = EvaluateView()
    qtbot.addWidget(view)
    view.resize(1400, 800)
    view.show()
    view.show_evaluation(_evaluation(classes))
    qtbot.wait(100)
    matrix = view.matrix
    for axis, length in (
        (matrix.left_axis, matrix.left_axis.geometry().height()),
        (matrix.bottom_axis, matrix.bottom_axis.geometry().width()),
    ):
        view_range = matrix.view.getPlotItem().vb.viewRange()
        lo, hi = view_range[1] if axis is matrix.left_axis else view_range[0]
        ticks = axis.tickValues(lo, hi, length)[0][1]
        assert [axis.index_at(v) for v in ticks] == list(range(len(classes)))
        for i, name in enumerate(classes):
            label = axis.labels[i]
            # Whole, or elided in the middle: its start and end both show.
            assert label == name or (
                "…" in label
                and name.startswith(label.split("…")[0])
                and name.endswith(label.split("…")[-1])
            )
        assert len(set(axis.labels)) == len(classes)
    # The per-class table holds every full name (shown whole where it fits, elided in the
    # middle where not) and says it in full on hover.
    assert view.table.textElideMode() == Qt.TextElideMode.ElideMiddle
    for row, name in enumerate(classes):
        item = view.table.item(row, 0)
        assert item.text() == name and item.toolTip() == name
    fm = QFontMetrics(view.table.font())
    assert view.table.columnWidth(0) >= fm.horizontalAdvance(classes[1])  # room was made


def test_prediction_tiles_name_their_files_and_fit(qtbot) -> None:
    view = EvaluateView()
    qtbot.addWidget(view)
    labels = ["cats", "dogs", "birds", "fish", "frogs"]
    results = [
        PredictionResult(
            f"/data/photos/image_{i:04d}.jpg",
            [ClassProbability(c, j, 0.5 / (j + 1)) for j, c in enumerate(labels)],
        )
        for i in range(3)
    ] + [PredictionResult("/data/broken.jpg", error="cannot read this image")]
    view.show_predictions(results)
    assert view.images.count() == len(results)
    assert "4 image(s)" in view.banner.text() and "top 3" in view.banner.text()
    assert "top 5" in view.banner.text()  # the rest in the tooltip, and it says so
    first = view.images.item(0)
    assert first.text().splitlines()[0] == "image_0000.jpg"
    assert len(first.text().splitlines()) == 1 + 3
    assert all(label in first.toolTip() for label in labels)
    assert view.images.item(3).text().startswith("broken.jpg")
    # Every line of a tile fits its grid cell.
    fm = QFontMetrics(view.images.font())
    grid = view.images.gridSize()
    assert grid.height() >= 88 + 4 * fm.lineSpacing()
    view.cancel_all()


def test_big_counts_and_long_type_names_fit_their_columns(window: MainWindow) -> None:
    """A 1.1-billion-parameter model (on the meta device: no memory) whose class name is long:
    the counts, with separators, and the type names show whole."""
    import torch
    from torch import nn

    from freezer_app.core.tree import ModelTree

    class VisionTransformerLargePatch14(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(
                *[nn.Linear(8192, 8192, device=torch.device("meta")) for _ in range(17)]
            )
            self.head = nn.Linear(8192, 3, device=torch.device("meta"))

    tree = ModelTree(VisionTransformerLargePatch14(), label="big")
    assert tree.total_params > 1_100_000_000
    window.controller.set_tree(tree)
    panel = window.tree_panel
    panel.expand_to_depth(1)
    view = panel.view
    fm = QFontMetrics(view.font())
    header = view.header()
    root = window.tree_model.index(0, 0)
    for col in (PARAMS, TRAINABLE):
        text = window.tree_model.index(0, col).data()
        assert text.count(",") == 3  # 1,1xx,xxx,xxx
        assert header.sectionSize(col) >= fm.horizontalAdvance(text) + 8
    for index in (root, window.tree_model.index(0, 0, root)):
        type_name = index.siblingAtColumn(TYPE).data()
        assert header.sectionSize(TYPE) >= fm.horizontalAdvance(type_name) + 4, type_name
    for col in (GRAD, UPDATE):
        assert header.sectionSize(col) >= fm.horizontalAdvance(FROZEN_TEXT) + 4
    # While there is room, every column shows without scrolling sideways.
    total = sum(header.sectionSize(c) for c in range(header.count()))
    assert total <= view.viewport().width() or header.sectionSize(0) == panel.MIN_NAME_WIDTH


@pytest.mark.parametrize("pixels", [48, 70, 100, 140])
def test_names_differing_only_in_the_middle_stay_apart_and_fit(qtbot, pixels: int) -> None:
    fm = QFontMetrics(QFont())
    names = [f"a_rather_long_class_name_number_{i:02d}_of_the_set" for i in range(12)]
    labels = elide_distinct(names, fm, pixels)
    assert len(set(labels)) == len(names)
    assert all(fm.horizontalAdvance(label) <= pixels for label in labels)
