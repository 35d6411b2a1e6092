"""The Evaluate tab: accuracy, a clickable confusion matrix, per-class metrics, the most
confused pairs of classes, the worst predictions, and top-k predictions for images dropped on
the window."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PIL import Image
from PySide6.QtCore import QPointF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.data import scale_to_8bit
from freezer_app.core.evaluate import (
    Evaluation,
    ImagePrediction,
    PredictionResult,
    evaluate,
    predict,
)
from freezer_app.gui import tasks
from freezer_app.gui.plots import LayerAxis

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
THUMBNAILS = 60  # images shown at once; enough to see what goes wrong without stalling
THUMBNAIL_SIZE = 88  # pixels: the icon size of the image list
TILE_WIDTH = 150  # pixels: the grid cell of one image, its text below the icon
SHOWN_TOP = 3  # predictions written under a dropped image's tile (all top-k in its tooltip)
MOST_CONFUSED = 20  # pairs listed beside the matrix (it scrolls); the rest are rarer still
# The Evaluate view's width (pixels) from which the matrix sits beside the tables: below it (the
# window at its narrowest gives ~370) the matrix got a sliver between its names and the tables.
WIDE_PX = 700
MIN_NAME_CHARS = 12  # a class-name column is never narrower than this many characters


def decode_thumbnail(path: str, size: int = THUMBNAIL_SIZE) -> QImage:
    """An image file decoded at its display size (fits size×size), for any thread: a JPEG is
    decoded at a reduced scale (`Image.draft`), then it is scaled down. Images of more than
    8 bits are scaled to 8 as for training. A null QImage when the file cannot be read."""
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")
            img.draft("RGB", (size, size))  # JPEG: the smallest DCT scale still >= size
            img.thumbnail((size, size))
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                img = scale_to_8bit(img)
            alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            img = img.convert("RGBA" if alpha else "RGB")
            fmt = QImage.Format.Format_RGBA8888 if alpha else QImage.Format.Format_RGB888
            data = img.tobytes()
            w, h = img.size
            # copy(): the QImage owns its pixels (not the bytes object about to go).
            return QImage(data, w, h, len(data) // h, fmt).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return QImage()


def decode_thumbnails(
    paths: list[str],
    deliver: Callable[[list[tuple[int, QImage]]], None],
    should_cancel: Callable[[], bool],
    size: int = THUMBNAIL_SIZE,
) -> None:
    """Decode `paths` in order, handing (index, image) pairs to `deliver` in small batches
    (about every 50 ms), until done or `should_cancel()`."""
    batch: list[tuple[int, QImage]] = []
    last = time.monotonic()
    for i, path in enumerate(paths):
        if should_cancel():
            return
        batch.append((i, decode_thumbnail(path, size)))
        if time.monotonic() - last > 0.05 or i == len(paths) - 1:
            deliver(batch)
            batch, last = [], time.monotonic()


def start_thumbnails(
    paths: list[str],
    on_batch: Callable[[list[tuple[int, QImage]]], None],
    on_end: Callable[..., None],
    size: int = THUMBNAIL_SIZE,
) -> tasks.Task:
    """decode_thumbnails on the thread pool: batches to `on_batch`, then `on_end` (done,
    failed or cancelled). Slots should be bound methods, which Qt drops with their view."""
    task = tasks.Task(
        lambda _progress, cancelled: decode_thumbnails(paths, task.partial, cancelled, size)
    )
    task.signals.partial.connect(on_batch)
    task.signals.done.connect(on_end)
    task.signals.failed.connect(on_end)
    return tasks.start(task)


@functools.cache
def placeholder_icon(size: int = THUMBNAIL_SIZE) -> QIcon:
    """A plain grey square shown until an image's thumbnail is decoded."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor("#e4e4e4"))
    return QIcon(pixmap)


class ConfusionMatrix(QWidget):
    """Rows: true class; columns: predicted class; colour: share of the row. Click a cell.

    Every class is named on both axes (upright along the bottom, one per line height, elided
    in the middle when long, full on hover) until there are more classes than lines; then
    every k-th, and zooming shows the rest. The names get at most a quarter of the plot's
    width (left) and height (bottom), so that the cells keep most of the room; the counts
    show in the cells while they fit."""

    cellClicked = Signal(int, int)
    LABEL_PX = 140  # pixels: the most a class name gets; a longer one is elided in the middle
    MIN_LABEL_PX = 48  # pixels: the least, however small the plot (a few characters each side)
    LABEL_SHARE = 0.25  # of the plot's width (names on the left) or height (along the bottom)
    EMPTY_TEXT = "Evaluate to see the confusion matrix"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.caption = QLabel(
            "Rows: true class, columns: predicted; numbers: images, colour: share of the row. "
            "Click a cell to see its images."
        )
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self.left_axis = LayerAxis("left", paths=False, max_label_px=self.LABEL_PX)
        self.bottom_axis = LayerAxis("bottom", rotate=True, paths=False, max_label_px=self.LABEL_PX)
        self.left_axis.offset = self.bottom_axis.offset = 0.5
        self.view = pg.PlotWidget(axisItems={"left": self.left_axis, "bottom": self.bottom_axis})
        self.view.setMenuEnabled(False)
        plot = self.view.getPlotItem()
        plot.setLabel("left", "true class")
        plot.setLabel("bottom", "predicted class")
        plot.invertY(True)
        plot.setAspectLocked(True)
        plot.hideButtons()
        layout.addWidget(self.view, 1)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLookupTable(pg.colormap.get("CET-L12").getLookupTable(nPts=256))
        plot.addItem(self.image)
        self.labels: list[pg.TextItem] = []
        self._count_px = QSize()  # the largest count's text: the cells show counts while it fits
        self.view.scene().sigMouseClicked.connect(self._clicked)
        self.view.scene().sigMouseMoved.connect(self._moved)
        plot.vb.sigResized.connect(self._show_counts_if_they_fit)
        plot.vb.sigRangeChanged.connect(self._show_counts_if_they_fit)
        # Until there is a result: no axes (an empty plot's ticks mean nothing), a line instead.
        self.empty_text = pg.TextItem(self.EMPTY_TEXT, color="#757575", anchor=(0.5, 0.5))
        plot.addItem(self.empty_text, ignoreBounds=True)
        self.n = 0
        self.classes: list[str] = []
        self.counts = np.zeros((0, 0))
        self.clear()

    def label_px(self) -> tuple[int, int]:
        """Pixels the (left, bottom) names may take now: a share of the plot's width and height,
        between MIN_LABEL_PX and LABEL_PX."""
        size = self.view.size()

        def share(pixels: int) -> int:
            return max(self.MIN_LABEL_PX, min(self.LABEL_PX, int(pixels * self.LABEL_SHARE)))

        return share(size.width()), share(size.height())

    def _fit_labels(self) -> None:
        """Elide the names to the room there is now (only when that changed)."""
        left, bottom = self.label_px()
        for axis, pixels in ((self.left_axis, left), (self.bottom_axis, bottom)):
            if axis.max_label_px != pixels:
                axis.max_label_px = pixels
                axis.names = axis.names  # elided again

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_labels()

    def cell_px(self) -> float:
        """Pixels one cell is wide on screen now."""
        pixel = self.view.getPlotItem().vb.viewPixelSize()[0]
        return 1.0 / pixel if pixel > 0 else 0.0

    def _show_counts_if_they_fit(self, *_args: object) -> None:
        if not self.labels:
            return
        cell = self.cell_px()
        fits = cell >= self._count_px.width() + 2 and cell >= self._count_px.height()
        for label in self.labels:
            label.setVisible(fits)

    @property
    def empty(self) -> bool:
        """No result shown: the axes hidden, the empty text in their place."""
        return self.empty_text.isVisible()

    def _remove_counts(self) -> None:
        plot = self.view.getPlotItem()
        for label in self.labels:
            plot.removeItem(label)
        self.labels = []

    def clear(self) -> None:
        """No matrix: no axes, ticks or cells, only a line saying how to get one."""
        plot = self.view.getPlotItem()
        self._remove_counts()
        self.n = 0
        self.classes, self.counts = [], np.zeros((0, 0))
        self.image.clear()
        self.image.setToolTip("")
        self.left_axis.names = self.bottom_axis.names = []
        for side in ("left", "bottom"):
            plot.hideAxis(side)
        plot.vb.setMouseEnabled(x=False, y=False)  # nothing to pan or zoom
        plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.empty_text.setPos(0.5, 0.5)
        self.empty_text.setVisible(True)

    def show_matrix(self, classes: list[str], confusion: list[list[int]]) -> None:
        plot = self.view.getPlotItem()
        self._remove_counts()
        self.empty_text.setVisible(False)
        for side in ("left", "bottom"):
            plot.showAxis(side)
        plot.vb.setMouseEnabled(x=True, y=True)
        counts = np.array(confusion, dtype=float)
        self.n = len(classes)
        self.classes, self.counts = list(classes), counts
        share = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
        self.image.setImage(share, levels=(0, 1))
        self.image.setRect(0, 0, self.n, self.n)
        self.left_axis.names = self.bottom_axis.names = list(classes)
        if self.n <= 25:
            for i in range(self.n):
                for j in range(self.n):
                    colour = "w" if share[i, j] > 0.55 else "#222"
                    text = pg.TextItem(str(int(counts[i, j])), color=colour, anchor=(0.5, 0.5))
                    text.setPos(j + 0.5, i + 0.5)
                    plot.addItem(text)
                    self.labels.append(text)
        widest = str(int(counts.max())) if counts.size else "0"
        fm = QFontMetrics(self.labels[0].textItem.font() if self.labels else self.font())
        self._count_px = QSize(fm.horizontalAdvance(widest), fm.ascent())
        self._fit_labels()
        plot.setRange(xRange=(0, self.n), yRange=(0, self.n), padding=0.02)
        self._show_counts_if_they_fit()

    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        """(true, predicted) of the cell under a scene position, or None."""
        plot = self.view.getPlotItem()
        if not plot.vb.sceneBoundingRect().contains(scene_pos):
            return None
        point: QPointF = plot.vb.mapSceneToView(scene_pos)
        i, j = int(np.floor(point.y())), int(np.floor(point.x()))
        return (i, j) if 0 <= i < self.n and 0 <= j < self.n else None

    def _clicked(self, event) -> None:
        cell = self.cell_at(event.scenePos())
        if cell is not None:
            self.cellClicked.emit(*cell)

    def _moved(self, scene_pos: QPointF) -> None:
        # The full class names of a cell (the axes may show them elided, or not every one).
        cell = self.cell_at(scene_pos)
        if cell is None:
            self.image.setToolTip("")
            return
        i, j = cell
        row = max(1.0, float(self.counts[i].sum()))
        self.image.setToolTip(
            f"true {self.classes[i]}, predicted {self.classes[j]}: "
            f"{int(self.counts[i, j])} image(s), {self.counts[i, j] / row:.0%} of the row"
        )


class EvaluateView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source: Path | None = None
        self.data: str = ""
        self.val_split: float | None = None
        self.seed = 0
        self.evaluation: Evaluation | None = None
        self.shown_cell: tuple[int, int] | None = None  # the matrix cell the image list shows
        self.confused_cells: list[tuple[int, int]] = []  # (true, predicted) of each listed row
        self.task: tasks.Task | None = None
        self._task_source: Path | None = None  # the model the running task is of
        self.thumbnail_task: tasks.Task | None = None  # decoding the image list's icons
        # Images dropped while an evaluation or prediction runs: predicted when it ends.
        self.queued: list[str] = []
        layout = QVBoxLayout(self)
        # The model on a line of its own: beside the buttons, at the window's narrowest, it
        # would wrap a word a line.
        self.model_label = QLabel("Train a model, or choose a run folder or bundle to evaluate.")
        self.model_label.setWordWrap(True)
        layout.addWidget(self.model_label)
        row = QHBoxLayout()
        self.choose = QPushButton("Model…")
        self.choose.setToolTip("Evaluate a run folder or an exported bundle")
        self.run_button = QPushButton("Evaluate")
        self.run_button.setToolTip("Accuracy and confusion matrix on the validation images")
        self.predict_button = QPushButton("Predict images…")
        self.predict_button.setToolTip(
            "Top-5 predictions for image files (or drop images on the window)"
        )
        for b in (self.choose, self.run_button, self.predict_button):
            row.addWidget(b)
        row.addStretch(1)
        layout.addLayout(row)
        progress_row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel = QPushButton("Cancel")
        self.cancel.setVisible(False)
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel)
        layout.addLayout(progress_row)
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        layout.addWidget(self.banner)

        splitter = QSplitter(Qt.Orientation.Vertical)
        self.matrix = ConfusionMatrix()
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Class", "Precision", "Recall", "Images"])
        self.table.horizontalHeaderItem(2).setToolTip(
            "Share of the class's images predicted correctly (per-class accuracy)"
        )
        # Numbers as wide as they are; the class column takes the rest (never less than
        # MIN_NAME_CHARS, see _fit_table), and when that is too narrow a name is elided in its
        # middle (its start and end tell classes apart), full in the tooltip.
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        confused_box = QWidget()
        confused_layout = QVBoxLayout(confused_box)
        confused_layout.setContentsMargins(0, 4, 0, 0)
        self.confused_box = confused_box
        self.confused_title = QLabel("Most confused pairs")
        self.confused_title.setToolTip(
            "The confusion-matrix cells off the diagonal with the most images"
        )
        # Wrapped: a long title must not widen the tables' side.
        self.confused_title.setWordWrap(True)
        confused_layout.addWidget(self.confused_title)
        # Three columns, the share beside the count: every column less leaves more for names.
        self.confused = QTableWidget(0, 3)
        self.confused.setHorizontalHeaderLabels(["True", "Predicted", "Images"])
        self.confused.horizontalHeaderItem(2).setToolTip(
            "Images of the true class predicted as the other class, and their share of the "
            "true class's images"
        )
        # As the per-class table: numbers as wide as they are, names share the rest, elided in
        # the middle, full in the tooltip.
        header = self.confused.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.confused.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.confused.setWordWrap(False)
        self.confused.verticalHeader().setVisible(False)
        self.confused.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.confused.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.confused.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        confused_layout.addWidget(self.confused)
        # Rows one line high: compact lists.
        for table in (self.table, self.confused):
            table.verticalHeader().setDefaultSectionSize(
                QFontMetrics(table.font()).lineSpacing() + 8
            )

        # Two arrangements of the same widgets (see _arrange). Wide: the matrix beside the
        # per-class table and the most confused pairs, one above the other, all in sight (with
        # many classes the matrix is too dense to read, and the list says where to look).
        # Narrow (the window at its narrowest): the matrix beside the tables leaves it a sliver,
        # and under them too little height, so each gets a tab of the whole area; the images
        # stay below, in sight of whichever is clicked.
        self.top = QSplitter(Qt.Orientation.Horizontal)
        self.top.setChildrenCollapsible(False)
        self.side = QSplitter(Qt.Orientation.Vertical)
        self.side.setChildrenCollapsible(False)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.arrangement = QStackedWidget()
        self.arrangement.addWidget(self.top)
        self.arrangement.addWidget(self.tabs)
        self.wide: bool | None = None  # which arrangement is shown
        self._narrow_tab: QWidget | None = None  # the tab shown when last narrow
        self._arrange(wide=False)  # until the view is laid out (resizeEvent)
        splitter.addWidget(self.arrangement)
        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        self.images_title = QLabel("Worst predictions")
        bottom_layout.addWidget(self.images_title)
        self.images = QListWidget()
        self.images.setViewMode(QListView.ViewMode.IconMode)
        self.images.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self.images.setGridSize(QSize(TILE_WIDTH, 140))
        self.images.setResizeMode(QListView.ResizeMode.Adjust)
        self.images.setWordWrap(True)
        self.images.setMovement(QListView.Movement.Static)
        bottom_layout.addWidget(self.images)
        splitter.addWidget(bottom)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout.addWidget(splitter, 1)

        self.choose.clicked.connect(self._choose_model)
        self.run_button.clicked.connect(self.run)
        self.predict_button.clicked.connect(self._pick_images)
        self.cancel.clicked.connect(self._cancel)
        self.matrix.cellClicked.connect(self.show_cell)
        # A click shows a row's images; so do the arrow keys (the current row changes). A click
        # on the current row shows it again after the matrix showed another cell.
        self.confused.cellClicked.connect(self._confused_row)
        self.confused.currentCellChanged.connect(self._confused_row)
        self._update_buttons()

    # ------------------------------------------------------------------ inputs
    def set_source(
        self, source: Path | None, data: str = "", val_split: float | None = None, seed: int = 0
    ) -> None:
        """What to evaluate, on which folder; with val_split/seed (a folder without val/), only
        the images a run held out for validation are scored, never its training images.
        Another model than the one shown clears the results of the previous one."""
        if source != self.source:
            self.clear_results()
        self.source = source
        if data:
            self.data = data
            self.val_split, self.seed = val_split, seed
        self.model_label.setText(
            f"Model: <b>{source}</b>" if source else "No model to evaluate yet."
        )
        self._update_buttons()

    def clear_results(self) -> None:
        """No evaluation or predictions shown: the empty matrix, tables and image list."""
        self.evaluation = None
        self.shown_cell = None
        self.confused_cells = []
        self.matrix.clear()
        self.table.setRowCount(0)
        self.confused.blockSignals(True)
        self.confused.setRowCount(0)
        self.confused.blockSignals(False)
        self.confused_title.setText("Most confused pairs")
        self.banner.setStyleSheet("")
        self.banner.setText("")
        self._set_images("Worst predictions", [])

    def _update_buttons(self) -> None:
        idle = self.task is None
        self.run_button.setEnabled(idle and self.source is not None and bool(self.data))
        self.predict_button.setEnabled(idle and self.source is not None)

    def _choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Run folder or bundle", str(self.source or "")
        )
        if folder:
            self.set_source(Path(folder))

    def _pick_images(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Images", "", "Images (" + " ".join(f"*{s}" for s in IMAGE_SUFFIXES) + ")"
        )
        if paths:
            self.predict_images(paths)

    # ------------------------------------------------------------------ background work
    def _start(self, work, on_done) -> None:
        # Bound methods (not lambdas) as slots: Qt drops them if this view is deleted first.
        self._on_done = on_done
        self._task_source = self.source  # a result is shown only under the model it is of
        task = tasks.Task(work)
        task.signals.progress.connect(self._progress)
        task.signals.done.connect(self._task_done)
        task.signals.failed.connect(self._task_failed)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel.setVisible(True)
        self.task = tasks.start(task)
        self._update_buttons()

    def _progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _task_done(self, result: object) -> None:
        self._finish()
        if self._task_source == self.source:
            self._on_done(result)
        elif self.source is not None and self.data:
            self.run()  # the model changed while it ran: evaluate the one now shown
        self._start_queued()

    def _task_failed(self, message: str, hint: str, _details: str) -> None:
        self._finish()
        if self._task_source != self.source and self.source is not None and self.data:
            self.run()  # stopped for the model now shown (or failed on an older one)
        else:
            self._error(message, hint)
        self._start_queued()

    def _start_queued(self) -> None:
        if self.queued and self.task is None:
            paths, self.queued = self.queued, []
            self.predict_images(paths)

    def _finish(self) -> None:
        self.task = None
        self.progress.setVisible(False)
        self.cancel.setVisible(False)
        self._update_buttons()

    def _cancel(self) -> None:
        # Cancel means stop: images waiting for their turn are dropped too.
        self.queued = []
        if self.task is not None:
            self.task.cancel()

    def cancel_all(self) -> None:
        """Stop the evaluation or prediction and the thumbnail decoding (the window closes)."""
        self._cancel()
        self._cancel_thumbnails()

    # ------------------------------------------------------------------ the image list
    def _set_images(self, title: str, rows: list[tuple[str, str, str]]) -> None:
        """Show (path, text, tooltip) rows: placeholders at once, thumbnails as a background
        task decodes them at display size. A newer list (or clearing) cancels the older one's."""
        self._cancel_thumbnails()
        self.images_title.setText(title)
        self.images.clear()
        # Tall enough for the icon and every line of the longest text (no line cut off).
        lines = max((text.count("\n") + 1 for _path, text, _tip in rows), default=2)
        spacing = QFontMetrics(self.images.font()).lineSpacing()
        self.images.setGridSize(QSize(TILE_WIDTH, THUMBNAIL_SIZE + lines * spacing + 14))
        placeholder = placeholder_icon()
        for _path, text, tip in rows:
            item = QListWidgetItem(placeholder, text)
            item.setToolTip(tip)
            self.images.addItem(item)
        if not rows:
            return
        paths = [path for path, _text, _tip in rows]
        self.thumbnail_task = start_thumbnails(
            paths, self._thumbnails_decoded, self._thumbnails_done
        )

    def _cancel_thumbnails(self) -> None:
        if self.thumbnail_task is not None:
            self.thumbnail_task.cancel()
            self.thumbnail_task = None

    def _current_thumbnails(self) -> bool:
        task = self.thumbnail_task
        return task is not None and self.sender() is task.signals

    def _thumbnails_decoded(self, batch: list[tuple[int, QImage]]) -> None:
        if not self._current_thumbnails():
            return  # a list that was replaced or cleared
        for row, image in batch:
            item = self.images.item(row)
            if item is not None:
                item.setIcon(QIcon(QPixmap.fromImage(image)) if not image.isNull() else QIcon())

    def _thumbnails_done(self, *_args: object) -> None:
        if self._current_thumbnails():
            self.thumbnail_task = None

    def _error(self, message: str, hint: str) -> None:
        self.banner.setStyleSheet("color: #b00020")
        self.banner.setText(f"{message} {hint}".strip())

    def run(self) -> None:
        if self.source is None or not self.data:
            return
        if self.task is not None:
            # Busy with another model (an earlier run): stop it; its end starts this one.
            if self._task_source != self.source:
                self.task.cancel()
            return
        source, data, split, seed = str(self.source), self.data, self.val_split, self.seed
        self.banner.setStyleSheet("")
        self.banner.setText("Evaluating…")

        def work(progress, cancelled):
            return evaluate(
                source, data, val_split=split, seed=seed, progress=progress, should_cancel=cancelled
            )

        self._start(work, self.show_evaluation)

    def predict_images(self, paths: list[str]) -> None:
        if self.source is None:
            self._error(
                "No model to predict with yet.",
                "Train one, or choose a run folder or bundle with Model….",
            )
            return
        if self.task is not None:
            # One task at a time: these wait for the one running, and say so.
            self.queued.extend(p for p in paths if p not in self.queued)
            self.banner.setStyleSheet("")
            self.banner.setText(
                f"{len(self.queued)} image(s) queued: predicted when the "
                f"{'evaluation' if self._on_done == self.show_evaluation else 'prediction'} "
                "running now finishes."
            )
            return
        source = str(self.source)
        self.banner.setStyleSheet("")
        self.banner.setText(f"Predicting {len(paths)} image(s)…")
        self._start(
            lambda progress, cancelled: predict(
                source, paths, top_k=5, progress=progress, should_cancel=cancelled
            ),
            self.show_predictions,
        )

    # ------------------------------------------------------------------ results
    def show_evaluation(self, result: Evaluation) -> None:
        self.evaluation = result
        where = "validation images" if result.split == "val" else "all images"
        self.banner.setStyleSheet("font-size: 14px")
        self.banner.setText(
            f"<b>Accuracy {result.accuracy:.1%}</b> ({result.correct} of {result.count} {where} in {result.data})"
            + (f"; {len(result.skipped)} unreadable image(s) skipped" if result.skipped else "")
        )
        self.matrix.show_matrix(result.classes, result.confusion)
        self.table.setRowCount(len(result.per_class))
        for r, m in enumerate(result.per_class):
            values = [
                m.name,
                "–" if m.precision is None else f"{m.precision:.3f}",
                "–" if m.recall is None else f"{m.recall:.3f}",
                str(m.support),
            ]
            for c, v in enumerate(values):
                item = QTableWidgetItem(v)
                if c:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                else:
                    item.setToolTip(m.name)
                self.table.setItem(r, c, item)
        self._show_confused(result)
        self._fit_table()
        self.show_images(
            "Worst predictions (lowest probability of the true class)", result.worst(THUMBNAILS)
        )

    def _show_confused(self, result: Evaluation) -> None:
        """List the most confused pairs: (true, predicted) names, images, share of the true
        class."""
        cells = result.most_confused(MOST_CONFUSED)
        self.confused_cells = [(c.true, c.predicted) for c in cells]
        names = result.classes
        self.confused.blockSignals(True)  # refilling is not the user picking a row
        self.confused.clearContents()
        self.confused.setRowCount(len(cells))
        for r, c in enumerate(cells):
            true, predicted = names[c.true], names[c.predicted]
            tip = (
                f"{c.count} image(s) of {true} ({c.share_of_true:.0%}) predicted as "
                f"{predicted}. Click to see them."
            )
            for col, (text, item_tip) in enumerate(
                [(true, true), (predicted, predicted), (f"{c.count} ({c.share_of_true:.0%})", tip)]
            ):
                item = QTableWidgetItem(text)
                item.setToolTip(item_tip)
                if col >= 2:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.confused.setItem(r, col, item)
        self.confused.setCurrentCell(-1, -1)
        self.confused.clearSelection()
        self.confused.blockSignals(False)
        total = len(result.most_confused(None))
        if not cells:
            self.confused_title.setText("Most confused pairs: none, every image got its class")
        else:
            of = f" ({len(cells)} of {total})" if total > len(cells) else ""
            self.confused_title.setText(f"Most confused pairs{of}: click one to see its images")

    def _confused_row(self, row: int, *_column: int) -> None:
        if not 0 <= row < len(self.confused_cells):
            return
        cell = self.confused_cells[row]
        if cell != self.shown_cell:  # a click on a new row also changes the current one
            self.show_cell(*cell)

    # ------------------------------------------------------------------ arrangement
    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._arrange(self.width() >= WIDE_PX)

    def _arrange(self, wide: bool) -> None:
        """Wide: the matrix beside the per-class table above the most confused pairs. Narrow:
        a tab each (the matrix first). The same widgets move; nothing is rebuilt."""
        if wide == self.wide:
            return
        if self.wide is False:
            self._narrow_tab = self.tabs.currentWidget()  # shown again when narrow again
        self.wide = wide
        if wide:
            self.side.addWidget(self.table)
            self.side.addWidget(self.confused_box)
            self.top.addWidget(self.matrix)
            self.top.addWidget(self.side)  # after the matrix
            for widget in (self.matrix, self.table, self.confused_box, self.side):
                widget.show()
            self.arrangement.setCurrentWidget(self.top)
            width = max(self.top.width(), self.width() - 20)
            self.top.setSizes([width * 11 // 20, width * 9 // 20])
            height = max(self.side.height(), 300)
            self.side.setSizes([height // 2, height - height // 2])
            self._fit_table()
        else:
            self.tabs.addTab(self.matrix, "Confusion matrix")
            self.tabs.addTab(self.table, "Per class")
            self.tabs.addTab(self.confused_box, "Most confused")
            self.tabs.setTabToolTip(2, self.confused_title.toolTip())
            self.tabs.setCurrentWidget(self._narrow_tab or self.matrix)
            self.arrangement.setCurrentWidget(self.tabs)

    @staticmethod
    def _column_widths(table: QTableWidget, names: int) -> tuple[list[int], int]:
        """(pixels each of the first `names` columns needs to show its longest name whole,
        pixels the other columns need)."""
        header = table.horizontalHeader()

        def needed(c: int) -> int:
            return max(table.sizeHintForColumn(c) + 8, header.sectionSizeHint(c))

        rest = sum(needed(c) for c in range(names, table.columnCount()))
        return [needed(c) for c in range(names)], rest

    @classmethod
    def _needed_width(cls, table: QTableWidget, names: int, least: bool = False) -> int:
        """Pixels `table` needs to show its first `names` columns unelided (or, with `least`,
        MIN_NAME_CHARS of each name), the rest as is."""
        widths, rest = cls._column_widths(table, names)
        if least:
            chars = QFontMetrics(table.font()).horizontalAdvance("n" * MIN_NAME_CHARS) + 8
            widths = [
                min(w, max(chars, table.horizontalHeader().sectionSizeHint(c)))
                for c, w in enumerate(widths)
            ]
        frame = table.frameWidth() * 2 + table.verticalScrollBar().sizeHint().width()
        return sum(widths) + rest + frame

    def _fit_table(self) -> None:
        """Keep the class names readable: each table no narrower than MIN_NAME_CHARS of every
        name; and side by side, widen the tables' side (up to half) when the names need it, so
        that they show in full rather than elided."""
        for table, names in ((self.table, 1), (self.confused, 2)):
            table.setMinimumWidth(self._needed_width(table, names, least=True))
        if not self.wide:
            return
        needed = max(self._needed_width(self.table, 1), self._needed_width(self.confused, 2))
        sizes = self.top.sizes()
        total = sum(sizes)
        if total > 0 and sizes[1] < needed:
            table = min(needed, total // 2)
            self.top.setSizes([total - table, table])

    def show_cell(self, true: int, predicted: int) -> None:
        if self.evaluation is None:
            return
        c = self.evaluation.classes
        items = self.evaluation.cell(true, predicted)
        self.show_images(
            f"True {c[true]}, predicted {c[predicted]}: {len(items)} image(s)", items[:THUMBNAILS]
        )
        self.shown_cell = (true, predicted)
        # The list marks the pair shown (clicked there or in the matrix), or nothing.
        row = (
            self.confused_cells.index(self.shown_cell)
            if self.shown_cell in self.confused_cells
            else -1
        )
        self.confused.blockSignals(True)
        self.confused.setCurrentCell(row, 0 if row >= 0 else -1)
        if row < 0:
            self.confused.clearSelection()
        self.confused.blockSignals(False)

    def tile_line(self, text: str) -> str:
        """One line of a tile's text, elided in the middle to the tile's width (a file name's
        start and its number or extension both tell images apart)."""
        fm = QFontMetrics(self.images.font())
        return fm.elidedText(text, Qt.TextElideMode.ElideMiddle, TILE_WIDTH - 10)

    def show_images(self, title: str, items: list[ImagePrediction]) -> None:
        assert self.evaluation is not None
        self.shown_cell = None  # show_cell sets it after this, for a cell's images
        classes = self.evaluation.classes
        line = self.tile_line
        self._set_images(
            title,
            [
                (
                    p.path,
                    f"{line(Path(p.path).name)}\n{line(f'{classes[p.true]} → {classes[p.predicted]}')}"
                    f"\n{p.confidence:.0%}",
                    f"{p.path}\ntrue {classes[p.true]} (p={p.true_probability:.3f})\npredicted {classes[p.predicted]} (p={p.confidence:.3f})",
                )
                for p in items
            ],
        )

    def show_predictions(self, results: list[PredictionResult]) -> None:
        """A tile per image: its top classes, or in short why it could not be read (the full
        reason in its tooltip); the banner counts both."""
        rows = []
        read = [r for r in results if not r.error]
        k = max((len(r.top) for r in read), default=0)
        for r in results:
            name = self.tile_line(Path(r.path).name)
            if r.error:
                text = f"{name}\n{self.tile_line(short_reason(r.error))}"
                tip = f"{r.path}\n{r.error}"
            else:
                text = "\n".join(
                    [
                        name,
                        *(
                            self.tile_line(f"{c.label} {c.probability:.0%}")
                            for c in r.top[:SHOWN_TOP]
                        ),
                    ]
                )
                tip = r.path + (
                    "\n" + "\n".join(f"{c.label}: {c.probability:.4f}" for c in r.top)
                    if r.top
                    else ""
                )
            rows.append((r.path, text, tip))
        self.shown_cell = None
        unread = len(results) - len(read)
        if not read:
            self.banner.setStyleSheet("color: #b00020")
            self.banner.setText(
                f"{unread} image(s) could not be read: nothing to predict. "
                "Hover over a tile for the reason."
            )
        else:
            self.banner.setStyleSheet("")
            shown = min(k, SHOWN_TOP)
            more = f" (top {k} in each image's tooltip)" if k > shown else ""
            of = f"{len(read)} of {len(results)}" if unread else f"{len(read)}"
            self.banner.setText(
                f"Predictions for {of} image(s): the top {shown} classes under each{more}"
                + (f"; {unread} could not be read (hover over its tile for why)" if unread else "")
            )
        self._set_images("Predictions", rows)


def short_reason(error: str) -> str:
    """Why an image could not be read, in a tile's few words (core's full reason goes in the
    tooltip): "file not found", "not an image", "cannot read image"."""
    if error.startswith("cannot read image"):
        return "not an image" if "cannot identify image file" in error else "cannot read image"
    return error.split(" (")[0]
