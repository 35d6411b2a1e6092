"""Live pyqtgraph plots: loss and learning rate, per-layer gradient flow, update-ratio heat map.

Plot items are created once and updated with setData/setImage; the window feeds them batches
of events at most ~30 times a second. Storage grows geometrically and the heat map halves its
time resolution when full, so long runs do not slow the plots down.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter
from PySide6.QtWidgets import QApplication, QLabel, QVBoxLayout, QWidget

from freezer_app.gui.tree_model import TRAINABLE_COLOUR

pg.setConfigOptions(antialias=True, background="w", foreground="#333")

# Frozen layers in the plots: a grey of their own, far from the blues of the |grad| bars and
# outside the heat map's viridis scale.
FROZEN_PLOT_RGB = (120, 120, 120)
FROZEN_CELL_RGB = (207, 216, 220)
STALE_FROZEN_RGB = (200, 200, 200)
MEAN_BAR_RGB = (21, 101, 192)
MAX_BAR_RGB = (144, 202, 249)


class Series:
    """An append-only float array with amortised O(1) appends."""

    def __init__(self, capacity: int = 1024) -> None:
        self._data = np.empty(capacity)
        self.n = 0

    def extend(self, values: list[float] | np.ndarray) -> None:
        values = np.asarray(values, dtype=float)
        need = self.n + values.size
        if need > self._data.size:
            grown = np.empty(max(need, 2 * self._data.size))
            grown[: self.n] = self._data[: self.n]
            self._data = grown
        self._data[self.n : need] = values
        self.n = need

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.n]

    def clear(self) -> None:
        self.n = 0


class Smoother:
    """Exponential moving average with bias correction (as TensorBoard smooths), computed
    incrementally so each redraw costs only the new points."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.acc = 0.0
        self.weight = 0.0

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = np.empty(len(values))
        a = self.alpha
        for i, v in enumerate(values):
            self.acc = (1 - a) * self.acc + a * v
            self.weight = (1 - a) * self.weight + a
            out[i] = self.acc / self.weight
        return out


class LossPlot(QWidget):
    """Training loss per step (raw and smoothed), validation loss and accuracy per epoch, and
    the learning rate."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.view = pg.GraphicsLayoutWidget()
        layout.addWidget(self.view)
        self.loss = self.view.addPlot(row=0, col=0)
        self.loss.setLabel("left", "loss")
        self.loss.showGrid(x=True, y=True, alpha=0.2)
        # A light backing keeps the legend readable where a curve passes under it.
        self.legend = self.loss.addLegend(offset=(-10, 10), brush=pg.mkBrush(255, 255, 255, 210))
        self.raw = self.loss.plot(pen=pg.mkPen("#b0bec5", width=1), name="train loss (step)")
        self.smooth = self.loss.plot(
            pen=pg.mkPen("#1565c0", width=2.5), name="train loss (smoothed)"
        )
        self.val = self.loss.plot(
            pen=pg.mkPen("#ef6c00", width=2),
            symbol="o",
            symbolSize=7,
            symbolBrush="#ef6c00",
            name="val loss",
        )
        for item in (self.raw, self.smooth):
            item.setClipToView(True)
            item.setDownsampling(auto=True, method="peak")
        # Validation accuracy on its own right-hand axis, 0..1.
        self.acc_box = pg.ViewBox()
        self.loss.showAxis("right")
        self.loss.scene().addItem(self.acc_box)
        self.loss.getAxis("right").linkToView(self.acc_box)
        self.loss.getAxis("right").setLabel("val accuracy", color="#2e7d32")
        self.acc_box.setXLink(self.loss)
        self.acc_box.setYRange(0, 1.0, padding=0.02)
        self.acc = pg.PlotDataItem(
            pen=pg.mkPen("#2e7d32", width=2), symbol="s", symbolSize=7, symbolBrush="#2e7d32"
        )
        self.acc_box.addItem(self.acc)
        self.legend.addItem(self.acc, "val accuracy")
        self.loss.vb.sigResized.connect(
            lambda: self.acc_box.setGeometry(self.loss.vb.sceneBoundingRect())
        )

        self.lr_plot = self.view.addPlot(row=1, col=0)
        self.lr_plot.setLabel("left", "learning rate")
        self.lr_plot.setLabel("bottom", "step")
        self.lr_plot.setXLink(self.loss)
        self.lr_plot.showGrid(x=True, y=True, alpha=0.2)
        self.lr_plot.addLegend(offset=(-10, 5), brush=pg.mkBrush(255, 255, 255, 210))
        self.lr_curve = self.lr_plot.plot(pen=pg.mkPen("#6a1b9a", width=2), name="learning rate")
        self.lr_curve.setClipToView(True)
        self.view.ci.layout.setRowStretchFactor(0, 3)
        self.view.ci.layout.setRowStretchFactor(1, 1)
        self.steps, self.losses, self.lrs, self.smoothed = Series(), Series(), Series(), Series()
        self.smoother = Smoother()
        self.epoch_steps, self.val_losses, self.val_accs = Series(64), Series(64), Series(64)
        self.plan_marks: list[pg.InfiniteLine] = []
        self.dirty = False

    def mark_plan_change(self, step: int, label: str) -> None:
        """A labelled vertical line where the freeze plan changed (x: the first step trained
        with the new plan)."""
        # Labels step down the plot so that changes close together do not overlap, and stay
        # below the legend in the top right corner.
        position = 0.55 - 0.12 * (len(self.plan_marks) % 4)
        line = pg.InfiniteLine(
            pos=step - 0.5,
            angle=90,
            pen=pg.mkPen("#8e24aa", width=1.5, style=Qt.PenStyle.DashLine),
            label=label,
            labelOpts={"position": position, "color": "#6a1b9a", "fill": (255, 255, 255, 210)},
        )
        line.setToolTip(f"step {step}: {label}")
        self.loss.addItem(line)
        self.plan_marks.append(line)

    def clear(self) -> None:
        for line in self.plan_marks:
            self.loss.removeItem(line)
        self.plan_marks.clear()
        for s in (
            self.steps,
            self.losses,
            self.lrs,
            self.smoothed,
            self.epoch_steps,
            self.val_losses,
            self.val_accs,
        ):
            s.clear()
        self.smoother = Smoother()
        for item in (self.raw, self.smooth, self.val, self.acc, self.lr_curve):
            item.setData([], [])

    def add_steps(self, steps: list[int], losses: list[float], lrs: list[float]) -> None:
        """Store new points; they are drawn at the next redraw()."""
        self.steps.extend(steps)
        self.losses.extend(losses)
        self.lrs.extend(lrs)
        self.smoothed.extend(self.smoother(np.asarray(losses, dtype=float)))
        self.dirty = True

    def add_epoch(self, step: int, val_loss: float | None, val_acc: float | None) -> None:
        if val_loss is None or val_acc is None:
            return
        self.epoch_steps.extend([step])
        self.val_losses.extend([val_loss])
        self.val_accs.extend([val_acc])
        self.dirty = True

    def redraw(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        x = self.steps.values
        self.raw.setData(x, self.losses.values)
        self.smooth.setData(x, self.smoothed.values)
        self.lr_curve.setData(x, self.lrs.values)
        self.val.setData(self.epoch_steps.values, self.val_losses.values)
        self.acc.setData(self.epoch_steps.values, self.val_accs.values)


class LayerAxis(pg.AxisItem):
    """An axis labelled with names (layers or classes): as many as fit without overlapping at
    the current zoom, the full name in a tooltip. A bottom axis can stand its labels upright,
    so that one fits every line height instead of every label width.

    Layer paths are shortened to distinct tails (`layer_labels`), class names kept whole;
    either is elided in the middle past `max_label_px`.
    """

    def __init__(
        self,
        orientation: str,
        pixels_per_label: int | None = None,
        rotate: bool = False,
        paths: bool = True,
        max_label_px: int = 170,
    ) -> None:
        super().__init__(orientation)
        self.rotate = rotate and orientation in ("bottom", "top")
        self.paths = paths
        self.max_label_px = max_label_px
        self._pixels_per_label = pixels_per_label
        self._names: list[str] = []
        self.labels: list[str] = []  # what is drawn for each name
        self._extent = 0  # pixels the upright labels reach below the axis line
        self.offset = 0.0  # heat-map rows and matrix cells are centred on i + 0.5
        self.setAcceptHoverEvents(True)

    @property
    def names(self) -> list[str]:
        return self._names

    @names.setter
    def names(self, names: list[str]) -> None:
        self._names = list(names)
        fm = self.metrics()
        shortened = layer_labels(self._names) if self.paths else self._names
        self.labels = elide_distinct(shortened, fm, self.max_label_px)
        self._extent = max((fm.horizontalAdvance(label) for label in self.labels), default=0) + 6
        if self.rotate:
            self._updateMaxTextSize(self._extent)
        self.picture = None
        self.update()

    def metrics(self) -> QFontMetrics:
        font = self.style["tickFont"]
        return QFontMetrics(font if isinstance(font, QFont) else QApplication.font())

    @property
    def pixels_per_label(self) -> int:
        """Pixels along the axis one label needs (a line's height when the labels read across
        the axis' direction, else the widest label)."""
        if self._pixels_per_label is not None:
            return self._pixels_per_label
        fm = self.metrics()
        if self.orientation in ("left", "right") or self.rotate:
            return fm.height() + 2
        widest = max((fm.horizontalAdvance(label) for label in self.labels), default=40)
        return widest + 12

    @pixels_per_label.setter
    def pixels_per_label(self, value: int | None) -> None:
        self._pixels_per_label = value

    def index_at(self, value: float) -> int | None:
        """The name under an axis coordinate, or None."""
        i = round(value - self.offset)
        return i if 0 <= i < len(self._names) else None

    def tickValues(self, minVal: float, maxVal: float, size: float):
        if not self._names:
            return super().tickValues(minVal, maxVal, size)
        minVal, maxVal = sorted((minVal, maxVal))  # the heat map's y axis is inverted
        lo, hi = (
            max(0, math.ceil(minVal - self.offset)),
            min(len(self._names) - 1, math.floor(maxVal - self.offset)),
        )
        if hi < lo:
            return []
        fits = max(1, int(size / self.pixels_per_label))
        spacing = max(1, math.ceil((hi - lo + 1) / fits))
        first = math.ceil(lo / spacing) * spacing
        return [(spacing, [i + self.offset for i in range(first, hi + 1, spacing)])]

    def tickStrings(self, values, scale, spacing):
        if not self._names:
            return super().tickStrings(values, scale, spacing)
        out = []
        for v in values:
            i = self.index_at(v)
            if i is None:
                out.append("")
            elif self.rotate:
                # A narrow stand-in that pyqtgraph measures and places; drawPicture draws the
                # label itself, upright.
                out.append(str(i))
            else:
                out.append(self.labels[i])
        return out

    def _updateMaxTextSize(self, x: int) -> None:
        # Upright labels need their width below the axis, whatever pyqtgraph measured.
        super()._updateMaxTextSize(self._extent if self.rotate and self._names else x)

    def drawPicture(self, p: QPainter, axisSpec, tickSpecs, textSpecs) -> None:
        if not (self.rotate and self._names):
            super().drawPicture(p, axisSpec, tickSpecs, textSpecs)
            return
        super().drawPicture(p, axisSpec, tickSpecs, [])
        height = self.metrics().height()
        for rect, _flags, text in textSpecs:
            if not text.isdigit() or int(text) >= len(self.labels):
                continue
            p.save()
            # Turned a quarter left, the label reads upwards and ends at the tick.
            p.translate(rect.center().x(), rect.top())
            p.rotate(-90)
            p.drawText(
                QRectF(-self._extent, -height / 2, self._extent, height),
                int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                self.labels[int(text)],
            )
            p.restore()

    def hoverEvent(self, ev) -> None:
        """The full name of the label under the mouse, as a tooltip."""
        view = self.linkedView()
        if ev.isExit() or view is None:
            self.setToolTip("")
            return
        point = view.mapSceneToView(self.mapToScene(ev.pos()))
        i = self.index_at(point.x() if self.orientation in ("bottom", "top") else point.y())
        self.setToolTip(display_name(self._names[i]) if i is not None else "")


class _LayerHover:
    """Shared hover/click handling: a layer index under the mouse -> name and values."""

    def _setup_hover(self, plot: pg.PlotItem) -> None:
        self._plot = plot
        self.hover = pg.TextItem(
            anchor=(0, 1), color="#111", fill=pg.mkBrush(255, 255, 255, 230), border="#999"
        )
        self.hover.setZValue(100)
        self.hover.hide()
        plot.addItem(self.hover, ignoreBounds=True)
        self.marker = pg.InfiniteLine(
            angle=90, pen=pg.mkPen("#d81b60", width=1.5, style=Qt.PenStyle.DashLine)
        )
        self.marker.hide()
        plot.addItem(self.marker, ignoreBounds=True)
        plot.scene().sigMouseMoved.connect(self._moved)
        plot.scene().sigMouseClicked.connect(self._clicked)

    def _point(self, scene_pos: QPointF) -> QPointF | None:
        if not self._plot.sceneBoundingRect().contains(scene_pos):
            return None
        return self._plot.vb.mapSceneToView(scene_pos)


class GradientFlowPlot(QWidget, _LayerHover):
    """Per-layer bars of mean and max |grad| (log scale); frozen layers sit at exactly zero in
    their own colour."""

    layerClicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.caption = QLabel(self.CAPTION)
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        # Upright layer names: one fits every line height, so all of them show until the
        # layers get denser than that (then every k-th; zoom in for the rest).
        self.axis = LayerAxis("bottom", rotate=True)
        self.view = pg.GraphicsLayoutWidget()
        layout.addWidget(self.view)
        # The legend sits in a row of its own above the plot, where no bar can hide under it.
        self.legend = pg.LegendItem(colCount=3)
        self.view.addItem(self.legend, row=0, col=0)
        plot = self.view.addPlot(row=1, col=0, axisItems={"bottom": self.axis})
        self.plot = plot
        plot.setLabel("left", "log10 |grad|")
        plot.setLabel("bottom", "layer (input → output)")
        plot.showGrid(y=True, alpha=0.2)
        self.max_bars = pg.BarGraphItem(
            x=[], height=[], width=0.8, brush=pg.mkBrush(*MAX_BAR_RGB), pen=pg.mkPen(None)
        )
        self.mean_bars = pg.BarGraphItem(
            x=[], height=[], width=0.45, brush=pg.mkBrush(*MEAN_BAR_RGB), pen=pg.mkPen(None)
        )
        self.frozen = pg.ScatterPlotItem(
            symbol="s", size=9, brush=pg.mkBrush(*FROZEN_PLOT_RGB), pen=pg.mkPen(70, 70, 70)
        )
        for item in (self.max_bars, self.mean_bars, self.frozen):
            plot.addItem(item)
        self.legend.addItem(self.max_bars, "max |grad|")
        self.legend.addItem(self.mean_bars, "mean |grad|")
        self.legend.addItem(self.frozen, "frozen: no gradient (exactly 0)")
        self._setup_hover(plot)
        self.names: list[str] = []
        self._mean = self._max = np.zeros(0)
        self._trainable = np.zeros(0, dtype=bool)
        self.dirty = False

    def set_layers(self, names: list[str]) -> None:
        self.names = list(names)
        self._mean = self._max = np.zeros(len(names))
        self._trainable = np.zeros(len(names), dtype=bool)
        self.axis.names = self.names

    CAPTION = (
        "Gradient flow: per-layer |grad| at the last telemetry step. Frozen layers get no "
        "gradient: exactly 0."
    )
    STALE_CAPTION = (
        "<span style='color:#777'>Gradient flow measured under an earlier freeze plan (greyed): "
        "not the plan shown now. Train again to measure this plan.</span>"
    )

    def set_stale(self, stale: bool) -> None:
        """Grey the bars when they were measured under another plan than the one shown."""
        grey = stale
        self.max_bars.setOpts(brush=pg.mkBrush(210, 210, 210) if grey else pg.mkBrush(*MAX_BAR_RGB))
        self.mean_bars.setOpts(
            brush=pg.mkBrush(150, 150, 150) if grey else pg.mkBrush(*MEAN_BAR_RGB)
        )
        self.frozen.setBrush(pg.mkBrush(*(STALE_FROZEN_RGB if grey else FROZEN_PLOT_RGB)))
        self.caption.setText(self.STALE_CAPTION if grey else self.CAPTION)

    def clear_values(self) -> None:
        """Drop bars measured under a plan that is no longer the one shown."""
        self._mean = self._max = np.zeros(len(self.names))
        self._trainable = np.zeros(len(self.names), dtype=bool)
        self.max_bars.setOpts(x=[], height=[])
        self.mean_bars.setOpts(x=[], height=[])
        self.frozen.setData(x=[], y=[])
        self.set_stale(False)
        self.dirty = False

    def update_values(
        self, mean_abs: np.ndarray, max_abs: np.ndarray, trainable: np.ndarray
    ) -> None:
        """Store the latest statistics; they are drawn at the next redraw()."""
        self._mean, self._max, self._trainable = mean_abs, max_abs, trainable
        self.dirty = True

    def redraw(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        mean_abs, max_abs = self._mean, self._max
        positive = max_abs[max_abs > 0]
        floor = math.floor(math.log10(positive.min())) - 1 if positive.size else -8
        x = np.arange(len(max_abs), dtype=float)
        has = max_abs > 0
        log_max = np.where(has, np.log10(np.where(has, max_abs, 1)), floor)
        log_mean = np.where(mean_abs > 0, np.log10(np.where(mean_abs > 0, mean_abs, 1)), floor)
        self.max_bars.setOpts(x=x[has], y0=floor, height=(log_max - floor)[has])
        self.mean_bars.setOpts(x=x[has], y0=floor, height=(log_mean - floor)[has])
        zero = ~has
        self.frozen.setData(x=x[zero], y=np.full(zero.sum(), floor))
        self.plot.setYRange(floor, max(floor + 1, float(log_max.max()) + 0.3), padding=0)
        self.plot.setXRange(-1, len(max_abs), padding=0)

    def select(self, name: str) -> None:
        if name in self.names:
            self.marker.setValue(self.names.index(name))
            self.marker.show()

    def _moved(self, pos: QPointF) -> None:
        point = self._point(pos)
        i = round(point.x()) if point is not None else -1
        if point is None or not 0 <= i < len(self.names) or i >= self._max.size:
            self.hover.hide()
            return
        if self._max[i] == 0:
            detail = (
                "frozen: no gradient, exactly 0" if not self._trainable[i] else "gradient exactly 0"
            )
        else:
            detail = f"mean |grad| {self._mean[i]:.3e}\nmax |grad| {self._max[i]:.3e}"
        self.hover.setText(f"{display_name(self.names[i])}\n{detail}")
        self.hover.setPos(point)
        self.hover.show()

    def _clicked(self, event) -> None:
        point = self._point(event.scenePos())
        if point is not None and 0 <= round(point.x()) < len(self.names):
            self.layerClicked.emit(self.names[round(point.x())])


class UpdateHeatmap(QWidget, _LayerHover):
    """Layers × telemetry steps of log10(||Δw|| / ||w||); frozen rows are flat in their own colour."""

    layerClicked = Signal(str)
    LOW, HIGH = -7.0, -0.5  # colour range of log10(update ratio)
    CAPACITY = 400  # columns kept; when full, neighbouring columns are merged

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.caption = QLabel(
            "Weight updates: log10(||Δw|| / ||w||) per layer (rows, input at the top) and telemetry step "
            "(columns). Frozen layers are never updated: their rows stay flat grey."
        )
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self.axis = LayerAxis("left")
        self.axis.offset = 0.5
        self.view = pg.GraphicsLayoutWidget()
        layout.addWidget(self.view)
        # A legend row above the map (an overlay would hide rows): the frozen grey; the
        # colour bar at the right is the legend of the scale.
        self.legend = pg.LegendItem(colCount=2)
        self.view.addItem(self.legend, row=0, col=0)
        plot = self.view.addPlot(row=1, col=0, axisItems={"left": self.axis})
        self.plot = plot
        self.frozen_sample = pg.ScatterPlotItem(
            symbol="s", size=11, brush=pg.mkBrush(*FROZEN_CELL_RGB), pen=pg.mkPen(150, 150, 150)
        )
        self.legend.addItem(self.frozen_sample, "frozen: never updated")
        self.update_sample = pg.ScatterPlotItem(
            symbol="s", size=11, brush=pg.mkBrush(*pg.colormap.get("viridis").map(0.6, "byte"))
        )
        # Short: two entries side by side must fit the pane at the window's default width.
        self.legend.addItem(self.update_sample, "trainable: log10 ratio (scale at right)")
        plot.setLabel("bottom", "step")
        plot.setLabel("left", "layer")
        plot.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        plot.addItem(self.image)
        lut = pg.colormap.get("viridis").getLookupTable(nPts=255)
        self.image.setLookupTable(
            np.vstack([np.array([FROZEN_CELL_RGB]), lut[:, :3]]).astype(np.uint8)
        )
        self.image.setLevels([self.LOW - (self.HIGH - self.LOW) / 254, self.HIGH])
        self.colorbar = pg.ColorBarItem(
            values=(self.LOW, self.HIGH),
            colorMap=pg.colormap.get("viridis"),
            label="log10 update ratio",
            interactive=False,
        )
        self.colorbar.setImageItem(self.image, insert_in=plot)
        self.image.setLookupTable(
            np.vstack([np.array([FROZEN_CELL_RGB]), lut[:, :3]]).astype(np.uint8)
        )
        self._setup_hover(plot)
        self.names: list[str] = []
        self._cols: list[np.ndarray] = []
        self._steps: list[int] = []
        self._frozen_cols: list[np.ndarray] = []
        self._stride = 1
        self.dirty = False

    def set_layers(self, names: list[str]) -> None:
        self.names = list(names)
        self._cols, self._steps, self._frozen_cols = [], [], []
        self._stride = 1
        self.axis.names = self.names
        self.image.clear()

    def add(self, step: int, ratio: np.ndarray, trainable: np.ndarray) -> None:
        values = np.where(ratio > 0, np.log10(np.where(ratio > 0, ratio, 1.0)), self.LOW)
        values = np.clip(values, self.LOW, self.HIGH)
        self._cols.append(values)
        self._frozen_cols.append(~trainable)
        self._steps.append(step)
        self.dirty = True
        if len(self._cols) > self.CAPACITY:
            # Merge pairs: time resolution halves, memory and drawing cost stay bounded.
            self._cols = [np.maximum(a, b) for a, b in zip(self._cols[::2], self._cols[1::2])] + (
                [self._cols[-1]] if len(self._cols) % 2 else []
            )
            self._frozen_cols = [
                a & b for a, b in zip(self._frozen_cols[::2], self._frozen_cols[1::2])
            ] + ([self._frozen_cols[-1]] if len(self._frozen_cols) % 2 else [])
            self._steps = self._steps[::2]
            self._stride *= 2

    def redraw(self) -> None:
        if not self._cols or not self.dirty:
            return
        self.dirty = False
        data = np.stack(self._cols, axis=1)
        frozen = np.stack(self._frozen_cols, axis=1)
        data = np.where(frozen, self.LOW - 1.0, data)  # below the range: the frozen colour
        self.image.setImage(data, autoLevels=False)
        self.image.setLevels([self.LOW - (self.HIGH - self.LOW) / 254, self.HIGH])
        first, last = self._steps[0], self._steps[-1]
        width = (
            max(1.0, (last - first) * len(self._steps) / max(1, len(self._steps) - 1))
            if len(self._steps) > 1
            else 1.0
        )
        self.image.setRect(first, 0, width, len(self.names))

    def select(self, name: str) -> None:
        if name in self.names:
            self.marker.setAngle(0)
            self.marker.setValue(self.names.index(name) + 0.5)
            self.marker.show()

    def _cell(self, pos: QPointF) -> tuple[int, int, QPointF] | None:
        point = self._point(pos)
        if point is None or not self._cols:
            return None
        row = math.floor(point.y())
        rect = self.image.mapRectToParent(self.image.boundingRect())
        if rect.width() <= 0 or not 0 <= row < len(self.names):
            return None
        col = int((point.x() - rect.left()) / rect.width() * len(self._cols))
        if not 0 <= col < len(self._cols):
            return None
        return row, col, point

    def _moved(self, pos: QPointF) -> None:
        cell = self._cell(pos)
        if cell is None:
            self.hover.hide()
            return
        row, col, point = cell
        if self._frozen_cols[col][row]:
            value = "frozen: not updated (Δw = 0)"
        else:
            v = self._cols[col][row]
            value = "update ratio 0" if v <= self.LOW else f"update ratio {10**v:.2e}"
        self.hover.setText(f"{display_name(self.names[row])}\nstep {self._steps[col]}\n{value}")
        self.hover.setPos(point)
        self.hover.show()

    def _clicked(self, event) -> None:
        cell = self._cell(event.scenePos())
        if cell is not None:
            self.layerClicked.emit(self.names[cell[0]])


def elide_distinct(texts: list[str], fm: QFontMetrics, pixels: int) -> list[str]:
    """Texts elided in the middle to `pixels`, still telling each other apart: texts that
    would elide alike drop the start they share instead (…or_squares_on… vs …or_stripes_on…),
    and their end too when the room is too small for both (…er_00…); any still alike are kept
    whole."""
    middle = Qt.TextElideMode.ElideMiddle
    labels = [fm.elidedText(t, middle, pixels) for t in texts]
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    for members in groups.values():
        if len(members) < 2 or len({texts[i] for i in members}) < len(members):
            continue
        group = [texts[i] for i in members]
        shared = next(
            (k for k, chars in enumerate(zip(*group)) if len(set(chars)) > 1),
            min(len(t) for t in group),
        )
        start = max(0, shared - 3)  # a few shared characters as context
        tails = ["…" + texts[i][start:] for i in members]
        elided = [fm.elidedText(t, middle, pixels) for t in tails]
        if len(set(elided)) < len(elided):
            # Too narrow for the difference and the end: keep the difference, drop the end.
            right = Qt.TextElideMode.ElideRight
            elided = [fm.elidedText("…" + texts[i][shared:], right, pixels) for i in members]
        for i, label in zip(members, elided):
            labels[i] = label
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [t if counts[label] > 1 else label for t, label in zip(texts, labels)]


def layer_labels(names: list[str], width: int = 22) -> list[str]:
    """Short labels for module paths that still tell every layer apart, in one style per model.

    A leading component that every path shares (model.) is dropped. When any path is still
    longer than `width`, every path's components but the last two shrink to their initial and
    number (stages.2.blocks.1.mlp.fc1 -> s.2.b.1.mlp.fc1, layer3.0.downsample.1 ->
    l3.0.downsample.1), so that equal endings (three ….downsample.1) keep what tells them
    apart. Paths whose labels would still be equal are shown whole.
    """
    split = [name.split(".") for name in names]
    # A leading component shared by all paths tells none apart (two stay: a.0, not 0).
    while split and all(len(p) > 2 for p in split) and len({p[0] for p in split}) == 1:
        split = [p[1:] for p in split]
    labels = [".".join(p) for p in split]
    if any(len(label) > width for label in labels):
        labels = [".".join([_initial(c) for c in p[:-2]] + p[-2:]) for p in split]
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [
        display_name(name if counts[label] > 1 else label) for name, label in zip(names, labels)
    ]


def display_name(path: str) -> str:
    """A module path as shown; the model itself (parameters of its own, such as a ViT's
    cls_token) has the empty path."""
    return path or "(top level)"


def _initial(component: str) -> str:
    """A path component shortened to its first letter and its number (layer3 -> l3); an
    index stays whole."""
    if component.isdigit() or not component:
        return component
    digits = len(component) - len(component.rstrip("0123456789"))
    return component[0] + (component[-digits:] if digits else "")


def colour_hex(colour: QColor) -> str:
    return colour.name()


PASS_COLOUR = TRAINABLE_COLOUR
