"""The model tree panel: presets, filter, the checkable tree with live bars, summary, code."""

from __future__ import annotations

import html
import math

from PySide6.QtCore import (
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QSize,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QAction, QColor, QFontMetrics, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.freeze import available_presets
from freezer_app.core.tree import State
from freezer_app.gui.freeze_controller import FreezeController
from freezer_app.gui.tree_model import (
    FROZEN_COLOUR,
    GRAD,
    LEGEND,
    LR_MULT,
    NAME,
    PARAMS,
    PENDING_BACKGROUND,
    TRAINABLE,
    TYPE,
    UPDATE,
    BarRole,
    FreezeTreeModel,
    PathRole,
    StaleRole,
    human,
)


class TreeFilter(QSortFilterProxyModel):
    """Keeps rows whose path or type contains the filter text (and their ancestors)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        # The filter looks at names and types only, which never change: re-filtering on every
        # check-state change would cost hundreds of milliseconds on a 1,000-module model.
        self.setDynamicSortFilter(False)
        self.text = ""

    def set_text(self, text: str) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9
            self.beginFilterChange()
            self.text = text.strip().lower()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.text = text.strip().lower()
            self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:
        if not self.text:
            return True
        model = self.sourceModel()
        index = model.index(row, 0, parent)
        path = str(model.data(index, PathRole) or "").lower()
        type_name = str(model.data(model.index(row, TYPE, parent)) or "").lower()
        return self.text in path or self.text in type_name


STALE_BAR = QColor(170, 170, 170, 150)
STALE_TEXT = QColor("#8a8a8a")


FROZEN_TEXT = "0 (frozen)"
NUMBER_SAMPLE = "8.88e-88"  # the widest number a bar column shows (bar_text's format)
BAR_MIN = 30  # pixels: the shortest bar area worth drawing beside the number


class BarDelegate(QStyledItemDelegate):
    """Draws the live telemetry columns as small bars (log scale); frozen rows show an exact 0.

    Row height and text rect come from the font, so the numbers are never clipped whatever
    the font size (the bar, not the text, is inset)."""

    PAD = 2  # pixels around the text and the bar

    def sizeHint(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QSize:
        hint = super().sizeHint(option, index)
        fm = QFontMetrics(option.font)
        width = max(
            fm.horizontalAdvance(FROZEN_TEXT), fm.horizontalAdvance(NUMBER_SAMPLE) + BAR_MIN
        )
        return QSize(
            max(hint.width(), width + 4 * self.PAD), max(hint.height(), fm.height() + 2 * self.PAD)
        )

    def text_rect(self, option: QStyleOptionViewItem) -> QRect:
        """Where the number is drawn: the cell less side margins, never shorter than the font
        (centred on the row when a row is shorter than the font, which sizeHint prevents)."""
        rect = option.rect.adjusted(self.PAD, 0, -self.PAD, 0)
        height = max(rect.height(), QFontMetrics(option.font).height())
        return QRect(rect.left(), rect.center().y() - (height - 1) // 2, rect.width(), height)

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        super().paint(painter, option, index)
        value = index.data(BarRole)
        if value is None:
            return
        fraction, frozen = value
        source = index.model()
        while isinstance(source, QSortFilterProxyModel):
            index = source.mapToSource(index)
            source = source.sourceModel()
        text = source.bar_text(index)
        stale = bool(index.data(StaleRole))  # measured under another plan: greyed
        text_rect = self.text_rect(option)
        painter.save()
        painter.setFont(option.font)
        if frozen:
            painter.setPen(STALE_TEXT if stale else FROZEN_COLOUR)
            painter.drawText(
                text_rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, FROZEN_TEXT
            )
        else:
            # Log scale over four decades below the largest value; the number sits beside the
            # bar, which gets whatever width the number leaves.
            width = 0.0 if fraction <= 0 else max(0.03, min(1.0, (math.log10(fraction) + 4) / 4))
            text_width = QFontMetrics(option.font).horizontalAdvance(text)
            bar_space = max(4, text_rect.width() - text_width - 2 * self.PAD)
            inset = max(1, (option.rect.height() - QFontMetrics(option.font).height()) // 2 + 1)
            bar = QRect(
                text_rect.left(),
                option.rect.top() + inset,
                int(bar_space * width),
                max(2, option.rect.height() - 2 * inset),
            )
            painter.fillRect(bar, STALE_BAR if stale else QColor(66, 133, 244, 190))
            painter.setPen(STALE_TEXT if stale else QColor("#222"))
            painter.drawText(
                text_rect, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, text
            )
        painter.restore()


def legend_html() -> str:
    """The tree's colours and what they mean (from tree_model.LEGEND), as one line: state
    colours as coloured words (the tree colours its names so), pending as its background."""
    parts = []
    for colour, name, _meaning in LEGEND:
        if colour == PENDING_BACKGROUND:
            parts.append(f"<span style='background:{colour.name()}'>&nbsp;{name}&nbsp;</span>")
        else:
            parts.append(f"<span style='color:{colour.name()}'>&#9632;&nbsp;{name}</span>")
    return "&nbsp;&nbsp; ".join(parts)


def legend_tooltip() -> str:
    return "\n".join(f"{name}: {meaning}" for _colour, name, meaning in LEGEND) + (
        "\nGrad norm / Update ratio bars: log scale over four decades; "
        "grey: measured under an earlier freeze plan"
    )


class TreePanel(QWidget):
    """Presets as one-click buttons, filter and depth, the tree, and the summary line."""

    layerSelected = Signal(str)
    cancelRequested = Signal()  # the Cancel of the "building the model preview…" row

    def __init__(self, controller: FreezeController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.model: FreezeTreeModel = controller.model
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)

        presets = QHBoxLayout()
        presets.addWidget(QLabel("Presets:"))
        self.train_all = QPushButton("Train all")
        self.train_all.setToolTip("Every parameter trains")
        self.head_only = QPushButton("Head only")
        self.head_only.setToolTip("Only the classifier head trains")
        self.freeze_stages = QToolButton()
        self.freeze_stages.setText("Freeze stages ▾")
        self.freeze_stages.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.freeze_stages.setToolTip("Freeze the stem and the first K stages")
        self.train_last = QToolButton()
        self.train_last.setText("Train last ▾")
        self.train_last.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.train_last.setToolTip("Train only the last K stages and the head")
        for w in (self.train_all, self.head_only, self.freeze_stages, self.train_last):
            presets.addWidget(w)
        presets.addStretch(1)
        # Their actions are the window's Undo/Redo (set by the window).
        self.undo = QToolButton()
        self.redo = QToolButton()
        presets.addWidget(self.undo)
        presets.addWidget(self.redo)
        layout.addLayout(presets)
        self.train_all.clicked.connect(lambda: controller.set_preset("train-all"))
        self.head_only.clicked.connect(lambda: controller.set_preset("head-only"))

        tools = QHBoxLayout()
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by name or type (e.g. blocks.1, BatchNorm)…")
        self.filter.setClearButtonEnabled(True)
        tools.addWidget(self.filter, 1)
        tools.addWidget(QLabel("Depth"))
        self.depth = QSpinBox()
        self.depth.setRange(0, 20)
        self.depth.setValue(1)
        self.depth.setToolTip("Expand the tree to this depth")
        tools.addWidget(self.depth)
        layout.addLayout(tools)

        # Shown while the model preview is built in the background (the tree below is the
        # previous model's, greyed, or empty).
        self.busy = QWidget()
        busy = QHBoxLayout(self.busy)
        busy.setContentsMargins(0, 0, 0, 0)
        self.busy_label = QLabel()
        # A long model path is cut at the panel's edge rather than widening the panel.
        self.busy_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setMaximumWidth(140)
        self.busy_bar.setTextVisible(False)
        self.busy_cancel = QPushButton("Cancel")
        self.busy_cancel.setToolTip("Stop building this preview")
        busy.addWidget(self.busy_label, 1)
        busy.addWidget(self.busy_bar)
        busy.addWidget(self.busy_cancel)
        self.busy.setVisible(False)
        self.busy_cancel.clicked.connect(self.cancelRequested)
        layout.addWidget(self.busy)

        # The filter proxy sits between model and view only while a filter is typed: relaying
        # check-state changes of every row through it would make toggling a big model slow.
        self.proxy = TreeFilter(self)
        self.view = QTreeView()
        self.view.setModel(self.model)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.setItemDelegateForColumn(GRAD, BarDelegate(self.view))
        self.view.setItemDelegateForColumn(UPDATE, BarDelegate(self.view))
        header = self.view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.resizeSection(NAME, 215)
        self.fit_columns()
        self.view.viewport().installEventFilter(self)  # its width decides the Module column's
        layout.addWidget(self.view, 1)

        self.legend = QLabel(legend_html())
        self.legend.setToolTip(legend_tooltip())
        layout.addWidget(self.legend)

        bottom = QHBoxLayout()
        self.summary = QLabel()
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # A long plan wraps here; it never widens the window.
        self.summary.setWordWrap(True)
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        bottom.addWidget(self.summary, 1)
        self.copy_code = QPushButton("Copy PyTorch code")
        self.copy_code.setToolTip(
            "A requires_grad loop (and BatchNorm handling) that reproduces this plan in your own script"
        )
        bottom.addWidget(self.copy_code)
        layout.addLayout(bottom)

        self.filter.textChanged.connect(self._filter)
        self.depth.valueChanged.connect(self.expand_to_depth)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.copy_code.clicked.connect(self._copy_code)
        controller.planChanged.connect(lambda _plan: self.update_summary())
        self.model.modelReset.connect(self._model_reset)
        # Rows revealed by expanding may hold longer type names.
        self.view.expanded.connect(lambda _index: self._fit_type_column())

    # ------------------------------------------------------------------ updates
    def show_busy(self, text: str) -> None:
        """Say what is being built (empty: done); the tree shown meanwhile is greyed."""
        self.busy_label.setText(text)
        self.busy_label.setToolTip(text)
        self.busy.setVisible(bool(text))
        self.view.setEnabled(not text)
        self.update_summary()

    def _model_reset(self) -> None:
        self._build_preset_menus()
        self.expand_to_depth(self.depth.value())
        self.fit_columns()
        self.update_summary()

    MAX_TYPE_WIDTH = 240  # pixels: a longer class name is cut (it is in the row's tooltip)

    def fit_columns(self) -> None:
        """Columns as wide as their contents: counts from the widest one (the root's total,
        with separators), types from the rows shown, bars from the font."""
        header = self.view.header()
        fm = self.view.fontMetrics()
        margin = 12  # the cell's text margins, both sides
        tree = self.controller.tree
        widest = f"{tree.root.total:,}" if tree is not None else "0,000,000"
        for col in (PARAMS, TRAINABLE):
            header.resizeSection(
                col, max(header.sectionSizeHint(col), fm.horizontalAdvance(widest) + margin)
            )
        bar = BarDelegate.PAD * 4 + max(
            fm.horizontalAdvance(FROZEN_TEXT), fm.horizontalAdvance(NUMBER_SAMPLE) + BAR_MIN
        )
        for col in (GRAD, UPDATE):
            header.resizeSection(col, max(header.sectionSizeHint(col), bar))
        # LR ×: its header, or a multiplier such as 0.0001, whichever is wider.
        header.resizeSection(
            LR_MULT, max(header.sectionSizeHint(LR_MULT), fm.horizontalAdvance("0.0001") + margin)
        )
        self._fit_type_column(grow_only=False)
        self._fit_name_column()

    MIN_NAME_WIDTH = 170  # pixels: below this the Module column stops shrinking (scroll)

    def _fit_name_column(self) -> None:
        """The Module column takes the width the others leave, so that every column shows
        without scrolling while there is room."""
        header = self.view.header()
        others = sum(header.sectionSize(c) for c in range(header.count()) if c != NAME)
        header.resizeSection(NAME, max(self.MIN_NAME_WIDTH, self.view.viewport().width() - others))

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.view.viewport() and event.type() == QEvent.Type.Resize:
            self._fit_name_column()
        return super().eventFilter(watched, event)

    def _fit_type_column(self, grow_only: bool = True) -> None:
        header = self.view.header()
        wanted = max(header.sectionSizeHint(TYPE), self.view.sizeHintForColumn(TYPE) + 4)
        wanted = min(self.MAX_TYPE_WIDTH, wanted)
        # While one model is shown the column only grows: expanding and collapsing rows must
        # not make the columns to its right jump.
        if grow_only:
            wanted = max(wanted, header.sectionSize(TYPE))
        if wanted != header.sectionSize(TYPE):
            header.resizeSection(TYPE, wanted)
            self._fit_name_column()

    def _build_preset_menus(self) -> None:
        tree = self.controller.tree
        for button, family in (
            (self.freeze_stages, "freeze-stages"),
            (self.train_last, "train-last"),
        ):
            menu = QMenu(button)
            if tree is not None:
                for info in available_presets(tree):
                    if info.name.startswith(family + ":"):
                        pct = 100.0 * info.trainable_params / max(1, tree.total_params)
                        action = menu.addAction(
                            f"{info.name}   {info.description}   ({human(info.trainable_params)} train, {pct:.1f}%)"
                        )
                        action.triggered.connect(
                            lambda _=False, name=info.name: self.controller.set_preset(name)
                        )
            button.setMenu(menu)
            button.setEnabled(bool(menu.actions()))
        has_head = bool(tree and tree.layout.head)
        self.head_only.setEnabled(has_head)

    def update_summary(self) -> None:
        tree = self.controller.tree
        if tree is None:
            self.summary.setText(
                "No model yet." if self.busy.isVisibleTo(self) else "No model loaded."
            )
            return
        if self.controller.misfit:
            self.summary.setText(
                f"<span style='color:#b00020'>{html.escape(self.controller.misfit)} "
                "Pick a preset or fix the plan.</span>"
            )
            return
        t, n = tree.trainable_params, tree.total_params
        pct = 100.0 * t / n if n else 0.0
        self.summary.setText(
            f"<b>trainable {human(t)} / {human(n)} ({pct:.1f}%)</b> &nbsp; plan: {self.controller.plan.describe()}"
        )

    def expand_to_depth(self, depth: int) -> None:
        self.view.collapseAll()
        if depth > 0:
            self.view.expandToDepth(depth - 1)
        self.view.expand(self.view.model().index(0, 0))

    def _filter(self, text: str) -> None:
        filtering = bool(text.strip())
        if filtering != (self.view.model() is self.proxy):
            header = self.view.header().saveState()
            self.proxy.setSourceModel(self.model if filtering else None)
            self.view.setModel(self.proxy if filtering else self.model)
            self.view.header().restoreState(header)
            self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.proxy.set_text(text)
        if filtering:
            self.view.expandAll()
        else:
            self.expand_to_depth(self.depth.value())

    def view_index(self, source: QModelIndex) -> QModelIndex:
        """The view's index for a tree-model index (through the filter when one is active)."""
        return self.proxy.mapFromSource(source) if self.view.model() is self.proxy else source

    def source_index(self, index: QModelIndex) -> QModelIndex:
        return self.proxy.mapToSource(index) if self.view.model() is self.proxy else index

    def _copy_code(self) -> None:
        if self.controller.tree is not None:
            QApplication.clipboard().setText(self.controller.code())
            self.window().statusBar().showMessage(
                "PyTorch code for this freeze plan copied to the clipboard", 4000
            )

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        path = current.data(PathRole)
        if path:
            self.layerSelected.emit("" if path == "*" else path)

    def select_path(self, path: str) -> None:
        """Select and reveal a module (from a click in a plot)."""
        source = self.model.index_for_path(path)
        if not source.isValid():
            return
        index = self.view_index(source)
        if not index.isValid():
            self.filter.clear()
            index = self.view_index(source)
        self.view.blockSignals(True)
        self.view.setCurrentIndex(index)
        self.view.blockSignals(False)
        self.view.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    def _context_menu(self, pos) -> None:
        menu = self.menu_for(self.view.indexAt(pos))
        if menu is not None:
            menu.exec(self.view.viewport().mapToGlobal(pos))

    def menu_for(self, index: QModelIndex) -> QMenu | None:
        """The right-click menu of a row of the view (built anew for each click)."""
        if not index.isValid():
            return None
        item = self.model.item_of(self.source_index(index.siblingAtColumn(0)))
        if item is None:
            return None
        selector = self.model.selector_of(item)
        c = self.controller
        menu = QMenu(self)

        def add(text: str, slot, enabled: bool = True) -> None:
            action = QAction(text, menu)
            action.setEnabled(enabled)
            action.triggered.connect(slot)
            menu.addAction(action)

        state = self.model._state(item)
        add(f"Freeze {selector}", lambda: c.edit(selector, False), state is not State.FROZEN)
        add(f"Unfreeze {selector}", lambda: c.edit(selector, True), state is not State.TRAINABLE)
        if item.node is not None and item.node.path:
            path = item.node.path
            add("Freeze everything before this module", lambda: c.freeze_before(path))
            type_name = item.node.type_name
            add(f"Freeze all {type_name} modules", lambda: c.freeze_type(type_name, False))
            add(f"Unfreeze all {type_name} modules", lambda: c.freeze_type(type_name, True))
            add("Train only this", lambda: c.train_only(path))
        menu.addSeparator()
        add("Expand all below", lambda: self.view.expandRecursively(index))
        return menu
