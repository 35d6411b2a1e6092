"""A QAbstractItemModel over the core's ModelTree: one row per module and per parameter.

Checked = trainable, unchecked = frozen, partly checked = some children frozen. The model only
displays; a check-box click becomes an `editRequested(selector, trainable)` signal that the
FreezeController turns into a new freeze plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QAbstractItemModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont

from freezer_app.core.freeze import mult_of
from freezer_app.core.tree import ModelTree, ModuleNode, ParamEntry, State

NAME, TYPE, PARAMS, TRAINABLE, GRAD, UPDATE = range(6)
HEADERS = ("Module", "Type", "Parameters", "Trainable", "Grad norm", "Update ratio")
HEADER_TIPS = (
    "Tick to train, untick to freeze. A partly ticked box has frozen and trainable children.",
    "The module's class",
    "Parameters in this module and below (shared parameters counted once)",
    "How many of them train",
    "Gradient L2 norm at the last telemetry step (frozen: exactly 0)",
    "||Δw|| / ||w|| at the last telemetry step (frozen: exactly 0)",
)
# The plan's per-layer learning-rate multiplier, edited on its row; last, so the columns
# before it keep their numbers.
LR_MULT = len(HEADERS)
HEADERS += ("LR ×",)
HEADER_TIPS += (
    "Per-layer learning-rate multiplier (× the head's and layer decay's), saved in the plan. "
    "Double-click to type one; empty resets to the one inherited (grey) from above",
)
INHERITED_COLOUR = QColor("#8a8a8a")

TRAINABLE_COLOUR = QColor("#2e7d32")
FROZEN_COLOUR = QColor("#1f5fa8")
PARTIAL_COLOUR = QColor("#b26a00")
PENDING_BACKGROUND = QColor(255, 236, 179)
STATE_COLOURS = {
    State.TRAINABLE: TRAINABLE_COLOUR,
    State.FROZEN: FROZEN_COLOUR,
    State.PARTIAL: PARTIAL_COLOUR,
}
# What the tree's colours mean, for its legend (derived from the colours above, never retyped).
LEGEND: tuple[tuple[QColor, str, str], ...] = (
    (TRAINABLE_COLOUR, "trainable", "ticked: every parameter below trains"),
    (FROZEN_COLOUR, "frozen", "unticked: requires_grad=False, no gradient, never updated"),
    (PARTIAL_COLOUR, "partly frozen", "some children frozen, some trainable"),
    (PENDING_BACKGROUND, "pending", "edited during a run: takes effect at the next step"),
)

# Custom roles the views use.
PathRole = Qt.ItemDataRole.UserRole + 1  # selector for this row (module path / parameter name)
BarRole = Qt.ItemDataRole.UserRole + 2  # (value, frozen) for the live bar columns
StaleRole = Qt.ItemDataRole.UserRole + 3  # True: the bar was measured under another plan


def human(n: float) -> str:
    """1234 -> 1.2K, 11689512 -> 11.7M."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(eq=False)
class _Item:
    parent: int
    row: int
    node: ModuleNode | None = None
    entry: ParamEntry | None = None
    children: list[int] = field(default_factory=list)
    layer_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class FreezeTreeModel(QAbstractItemModel):
    editRequested = Signal(str, bool)  # selector, trainable
    lrMultRequested = Signal(str, str)  # module path or parameter name, the text typed
    telemetryStale = Signal(bool)  # live values measured under a plan other than the one shown

    def __init__(
        self, tree: ModelTree | None = None, show_empty: bool = False, parent=None
    ) -> None:
        super().__init__(parent)
        self.tree: ModelTree | None = None
        self.show_empty = show_empty
        self._items: list[_Item] = []
        self._by_path: dict[str, int] = {}
        self._applied: np.ndarray | None = None  # the mask a live run trains with
        self._grad: np.ndarray | None = None
        self._update: np.ndarray | None = None
        self._weight: np.ndarray | None = None
        self._layer_frozen: np.ndarray | None = None
        self._measured_mask: np.ndarray | None = None  # the plan the live values belong to
        self._measured_step = 0
        # Per parameter: trains differently now than when the live values were measured.
        self._changed: np.ndarray | None = None
        self.stale = False  # the live values belong to another plan than the one shown
        self._max_grad = 1.0
        self._max_ratio = 1.0
        self._lr_mults: dict[str, float] = {}  # the plan's {path: multiplier}
        self.lr_editable = True  # multipliers are fixed while a run trains
        if tree is not None:
            self.set_tree(tree)

    # ------------------------------------------------------------------ structure
    def set_tree(self, tree: ModelTree | None) -> None:
        self.beginResetModel()
        self.tree = tree
        self._items = []
        self._by_path = {}
        self._applied = None
        self.clear_telemetry(reset=False)
        if tree is not None:
            self._add(tree.root, -1, 0)
        self.endResetModel()

    def _add(self, node: ModuleNode, parent: int, row: int) -> int:
        index = len(self._items)
        item = _Item(parent, row, node=node)
        self._items.append(item)
        self._by_path[node.path] = index
        for entry in node.params:
            child = len(self._items)
            self._items.append(_Item(index, len(item.children), entry=entry))
            self._by_path.setdefault(entry.full_name, child)
            item.children.append(child)
        for child_node in node.children:
            if child_node.indices.size == 0 and not self.show_empty:
                continue
            item.children.append(self._add(child_node, index, len(item.children)))
        return index

    def index_for_path(self, path: str) -> QModelIndex:
        i = self._by_path.get(path)
        if i is None:
            return QModelIndex()
        return self.createIndex(self._items[i].row, 0, i)

    def item_of(self, index: QModelIndex) -> _Item | None:
        if not index.isValid():
            return None
        return self._items[index.internalId()]

    # ------------------------------------------------------------------ Qt model API
    def index(
        self, row: int, column: int, parent: QModelIndex | QPersistentModelIndex = QModelIndex()
    ) -> QModelIndex:
        if not self._items:
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, 0) if row == 0 else QModelIndex()
        children = self._items[parent.internalId()].children
        if 0 <= row < len(children):
            return self.createIndex(row, column, children[row])
        return QModelIndex()

    def parent(self, index: QModelIndex | QPersistentModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        item = self._items[index.internalId()]
        if item.parent < 0:
            return QModelIndex()
        return self.createIndex(self._items[item.parent].row, 0, item.parent)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        if not self._items:
            return 0
        if not parent.isValid():
            return 1
        if parent.column() != 0:
            return 0
        return len(self._items[parent.internalId()].children)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return len(HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ):
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return HEADERS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return HEADER_TIPS[section]
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        item = self._items[index.internalId()]
        if index.column() == NAME and (item.entry is not None or item.node.indices.size):
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        if index.column() == LR_MULT and self.lr_editable and self.lr_path(item):
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    # ------------------------------------------------------------------ data
    def _state(self, item: _Item) -> State:
        assert self.tree is not None
        if item.entry is not None:
            return self.tree.param_state(item.entry.info)
        return self.tree.state_of(item.node)

    def _indices(self, item: _Item) -> np.ndarray:
        if item.entry is not None:
            return np.array([item.entry.info.index])
        return item.node.indices

    def _pending(self, item: _Item) -> bool:
        if self._applied is None or self.tree is None:
            return False
        idx = self._indices(item)
        return bool(np.any(self._applied[idx] != self.tree.trainable[idx]))

    def selector_of(self, item: _Item) -> str:
        if item.entry is not None:
            return item.entry.full_name
        return item.node.path or "*"

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ):
        if not index.isValid() or self.tree is None:
            return None
        item = self._items[index.internalId()]
        col = index.column()
        if col == LR_MULT:
            return self._lr_data(item, role)
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(item, col)
        if role == Qt.ItemDataRole.CheckStateRole and col == NAME:
            state = self._state(item)
            if state is State.NONE:
                return None
            return {
                State.TRAINABLE: Qt.CheckState.Checked,
                State.FROZEN: Qt.CheckState.Unchecked,
                State.PARTIAL: Qt.CheckState.PartiallyChecked,
            }[state]
        if role == Qt.ItemDataRole.ForegroundRole and col in (NAME, TRAINABLE):
            colour = STATE_COLOURS.get(self._state(item))
            return QBrush(colour) if colour else None
        if role == Qt.ItemDataRole.BackgroundRole and self._pending(item):
            return QBrush(PENDING_BACKGROUND)
        if role == Qt.ItemDataRole.FontRole and col == NAME and item.entry is not None:
            font = QFont()
            font.setItalic(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (PARAMS, TRAINABLE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(item, col)
        if role == PathRole:
            return self.selector_of(item)
        if role == BarRole and col in (GRAD, UPDATE):
            return self._bar(item, col)
        if role == StaleRole and col in (GRAD, UPDATE):
            return self.stale
        return None

    def _moved(self, item: _Item) -> bool:
        """Whether this row trains differently now than when its live value was measured."""
        if self._changed is None:
            return False
        return bool(self._changed[self._indices(item)].any())

    def _display(self, item: _Item, col: int) -> str | None:
        tree = self.tree
        assert tree is not None
        if item.entry is not None:
            info = item.entry.info
            if col == NAME:
                return item.entry.local_name
            if col == TYPE:
                return "×".join(str(d) for d in info.shape) or "scalar"
            if col == PARAMS:
                return f"{info.numel:,}"
            if col == TRAINABLE:
                return f"{info.numel if tree.trainable[info.index] else 0:,}"
            return None
        node = item.node
        if col == NAME:
            return node.name or tree.label
        if col == TYPE:
            return node.type_name
        if node.indices.size == 0:
            return None
        if col == PARAMS:
            return f"{node.total:,}"
        if col == TRAINABLE:
            return f"{tree.trainable_in(node):,}"
        return None

    # ------------------------------------------------------------------ LR ×
    def lr_path(self, item: _Item) -> str:
        """The path a multiplier of this row is saved under ("" where none can be: the whole
        model, modules without parameters, a tied parameter's second name)."""
        if item.entry is not None:
            entry = item.entry
            return entry.full_name if entry.full_name == entry.info.name else ""
        return item.node.path if item.node.indices.size else ""

    def lr_mult_of(self, item: _Item) -> tuple[float, bool]:
        """(the row's multiplier, whether the plan sets it on this very row)."""
        path = self.lr_path(item)
        if path and path in self._lr_mults:
            return self._lr_mults[path], True
        name = item.entry.info.name if item.entry is not None else item.node.path
        return (mult_of(name, self._lr_mults) if name else 1.0), False

    def _lr_data(self, item: _Item, role: int):
        if role not in (
            Qt.ItemDataRole.DisplayRole,
            Qt.ItemDataRole.EditRole,
            Qt.ItemDataRole.ForegroundRole,
            Qt.ItemDataRole.TextAlignmentRole,
            Qt.ItemDataRole.ToolTipRole,
            PathRole,
        ):
            return None
        if role == PathRole:
            return self.selector_of(item)
        mult, own = self.lr_mult_of(item)
        if role == Qt.ItemDataRole.EditRole:
            return f"{mult:g}" if own else ""
        if role == Qt.ItemDataRole.DisplayRole:
            # Nothing where no multiplier applies, so the ones that do stand out.
            return f"{mult:g}" if own or mult != 1.0 else ""
        if role == Qt.ItemDataRole.ForegroundRole:
            return None if own else QBrush(INHERITED_COLOUR)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        path = self.lr_path(item)
        if own:
            return f"{path}: learning rate × {mult:g} (empty resets it)"
        if not path:
            return "No multiplier can be set here"
        return (
            f"{path}: learning rate × {mult:g}"
            + (" (inherited)" if mult != 1.0 else "")
            + "; double-click to set one"
        )

    def set_lr_mults(self, mults: dict[str, float]) -> None:
        """The plan's per-layer multipliers changed: repaint the column."""
        if mults == self._lr_mults:
            return
        self._lr_mults = dict(mults)
        self._emit_all(LR_MULT, LR_MULT)

    def _tooltip(self, item: _Item, col: int = NAME) -> str:
        tree = self.tree
        assert tree is not None
        if col in (GRAD, UPDATE) and self.stale and self._bar(item, col) is not None:
            if self._moved(item):
                return (
                    "Frozen in the plan shown: exactly 0. The value measured under an earlier "
                    "freeze plan (the run's), when it trained, is not shown."
                )
            return (
                "Measured under an earlier freeze plan (the run's), not the plan shown now: "
                "train again to see values for this plan."
            )
        if item.entry is not None:
            info = item.entry.info
            lines = [
                item.entry.full_name,
                f"{info.dtype} {list(info.shape)}, {info.numel:,} values",
            ]
            if item.entry.shared:
                others = [n for n in [info.name, *info.aliases] if n != item.entry.full_name]
                lines.append("shared (tied) with " + ", ".join(others) + ": frozen together")
        else:
            node = item.node
            lines = [node.path or tree.label, node.type_name]
            if node.indices.size:
                lines.append(f"{tree.trainable_in(node):,} of {node.total:,} parameters train")
            if node.has_running_stats:
                lines.append("norm layer: when frozen, its running statistics stay put (BN policy)")
        if self._pending(item):
            lines.append("pending: takes effect at the next training step")
        return "\n".join(lines)

    def _bar(self, item: _Item, col: int) -> tuple[float, bool] | None:
        if self._grad is None or item.node is None or item.layer_slots.size == 0:
            return None
        slots = item.layer_slots
        frozen = bool(self._layer_frozen[slots].all())
        if self._moved(item):
            # Its trainability changed since the value was measured: frozen now reads exactly
            # 0 (a fact of the plan, not a measurement); trainable now has no value yet.
            now = self._plan_in_effect()
            if now is not None and not now[self._indices(item)].any():
                return 0.0, True
            return None
        if col == GRAD:
            return float(np.sqrt(np.square(self._grad[slots]).sum())) / self._max_grad, frozen
        update = float(np.sqrt(np.square(self._update[slots]).sum()))
        weight = float(np.sqrt(np.square(self._weight[slots]).sum()))
        ratio = update / weight if weight > 0 else 0.0
        return ratio / self._max_ratio, frozen

    def bar_text(self, index: QModelIndex) -> str:
        value = self._bar(self._items[index.internalId()], index.column())
        if value is None:
            return ""
        scale = self._max_grad if index.column() == GRAD else self._max_ratio
        v = value[0] * scale
        return "0" if v == 0 else f"{v:.2e}"

    def setData(
        self,
        index: QModelIndex | QPersistentModelIndex,
        value,
        role: int = Qt.ItemDataRole.EditRole,
    ) -> bool:
        if role == Qt.ItemDataRole.EditRole and index.isValid() and index.column() == LR_MULT:
            path = self.lr_path(self._items[index.internalId()])
            if path:
                self.lrMultRequested.emit(path, str(value or ""))  # the controller checks it
            return bool(path)
        if role != Qt.ItemDataRole.CheckStateRole or not index.isValid() or index.column() != NAME:
            return False
        item = self._items[index.internalId()]
        trainable = Qt.CheckState(value) == Qt.CheckState.Checked
        self.editRequested.emit(self.selector_of(item), trainable)
        return True

    # ------------------------------------------------------------------ updates
    def refresh_states(self) -> None:
        """The trainable mask changed: repaint check boxes and counts of every row."""
        self._drop_stale_telemetry()
        self._emit_all(NAME, TRAINABLE)

    def set_applied_mask(self, mask: np.ndarray | None) -> None:
        """What a live run trains with; rows that differ from the edited plan show as pending."""
        self._applied = None if mask is None else mask.copy()
        self._drop_stale_telemetry()
        self._emit_all(NAME, UPDATE)

    def _plan_in_effect(self) -> np.ndarray | None:
        if self._applied is not None:
            return self._applied
        return None if self.tree is None else self.tree.trainable

    def _drop_stale_telemetry(self) -> None:
        """Live values belong to the plan they were measured under: when another plan is
        shown they are greyed (and say so), never drawn as current; a row whose trainability
        changed since shows what the plan shown says instead: `0 (frozen)` when frozen now,
        nothing when it trains now."""
        if self._grad is None or self._measured_mask is None:
            return
        now = self._plan_in_effect()
        same_shape = now is not None and now.shape == self._measured_mask.shape
        changed = (now != self._measured_mask) if same_shape else None
        stale = changed is None or bool(changed.any())
        kept = changed if stale else None  # None when current: nothing to repaint then
        moved = not _same(kept, self._changed)
        self._changed = kept
        if stale != self.stale or moved:
            self.stale = stale
            self._emit_all(GRAD, UPDATE)
            self.telemetryStale.emit(stale)

    def set_layer_names(self, names: list[str]) -> None:
        slot = {n: i for i, n in enumerate(names)}
        for item in reversed(self._items):  # children come after parents: fill bottom-up
            if item.node is None:
                continue
            own = [slot[item.node.path]] if item.node.path in slot else []
            kids = [
                self._items[c].layer_slots for c in item.children if self._items[c].node is not None
            ]
            item.layer_slots = (
                np.unique(np.concatenate([np.array(own, dtype=np.int64), *kids]))
                if (own or kids)
                else np.zeros(0, dtype=np.int64)
            )

    def update_telemetry(
        self,
        grad: np.ndarray,
        update: np.ndarray,
        weight: np.ndarray,
        trainable: np.ndarray,
        measured_mask: np.ndarray | None = None,
    ) -> None:
        """Per-layer values of one telemetry step, measured under `measured_mask` (the
        per-parameter plan in effect then)."""
        self._measured_mask = None if measured_mask is None else measured_mask.copy()
        self._changed = None
        if self.stale:
            self.stale = False
            self.telemetryStale.emit(False)
        self._grad, self._update, self._weight = grad, update, weight
        self._layer_frozen = ~trainable
        self._max_grad = float(grad.max()) or 1.0
        ratio = np.divide(update, weight, out=np.zeros_like(update), where=weight > 0)
        self._max_ratio = float(ratio.max()) or 1.0
        self._emit_all(GRAD, UPDATE)

    def clear_telemetry(self, reset: bool = True) -> None:
        self._grad = self._update = self._weight = self._layer_frozen = None
        self._measured_mask = None
        self._changed = None
        self.stale = False
        if reset:
            self._emit_all(GRAD, UPDATE)

    def _emit_all(self, first: int, last: int) -> None:
        """Announce that columns first..last of every row changed.

        One signal per parent would cost tens of milliseconds on a 1,000-module model; a view
        answers any multi-cell dataChanged by repainting its whole viewport, which re-reads
        every visible row, and nothing caches these roles. So the whole tree is announced with
        the top-level row's range, plus each expanded-by-default first level.
        """
        if not self._items:
            return
        self.dataChanged.emit(self.createIndex(0, first, 0), self.createIndex(0, last, 0))
        root = self._items[0]
        if root.children:
            top = self.createIndex(0, first, root.children[0])
            bottom = self.createIndex(len(root.children) - 1, last, root.children[-1])
            self.dataChanged.emit(top, bottom)
