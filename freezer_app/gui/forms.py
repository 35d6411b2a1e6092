"""Forms generated from the project schema: one editor per setting, nothing written by hand.

An editor shows the project's value when the project controller says that key changed, and
sends the user's value back as an undoable edit; showing a value the project already holds
sends nothing, so there is no signal ping-pong to guard against. Numbers are exact: floats are
typed as text (1e-5 and 0.00001 both work) and shown with repr, so nothing is rounded.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core import settings as schema
from freezer_app.core.device import available_devices, device_label
from freezer_app.core.errors import FreezerError
from freezer_app.core.freeze import Phase
from freezer_app.core.settings import Setting
from freezer_app.gui.project_controller import ProjectController, touches

INVALID_STYLE = "border: 1px solid #c62828; background: #ffebee;"


def tooltip(s: Setting) -> str:
    lines = [textwrap.fill(s.spec.help + ".", 80)]  # plain-text tooltips do not wrap
    allowed = schema.range_text(s)
    if allowed:
        lines.append(f"Allowed: {allowed}{f' {s.spec.unit}' if s.spec.unit else ''}.")
    if s.nullable and s.spec.none:
        lines.append(f"Empty or '{s.spec.none_word}': {s.spec.none}.")
    if s.spec.zero:
        lines.append(f"0: {s.spec.zero}.")
    lines.append(f"Project key: {s.key}")
    return "\n".join(lines)


class Editor:
    """What every generated editor does: show a value, report a new one."""

    widget: QWidget

    def __init__(self, setting: Setting, commit) -> None:
        self.setting = setting
        self._commit = commit

    def show(self, value: Any) -> None:
        raise NotImplementedError

    def commit(self, value: Any) -> None:
        self._commit(self.setting, value)


class ChoiceEditor(Editor):
    def __init__(self, setting: Setting, commit) -> None:
        super().__init__(setting, commit)
        self.widget = combo = QComboBox()
        choices = list(setting.spec.choices)
        if setting.key == "train.device":
            choices = available_devices()
        for choice in choices:
            combo.addItem(device_label(choice) if setting.key == "train.device" else choice, choice)
        combo.currentIndexChanged.connect(lambda i: self.commit(combo.itemData(i)))

    def show(self, value: Any) -> None:
        combo: QComboBox = self.widget  # type: ignore[assignment]
        index = combo.findData(str(value))
        if index < 0:
            combo.addItem(str(value), str(value))  # e.g. a device this machine lacks
            index = combo.count() - 1
        combo.setCurrentIndex(index)


class IntEditor(Editor):
    """A spin box; a nullable setting's null (or a count's 0) is its special lowest value."""

    def __init__(self, setting: Setting, commit) -> None:
        super().__init__(setting, commit)
        spec = setting.spec
        self.widget = spin = QSpinBox()
        low = int(spec.minimum if spec.minimum is not None else -(2**31) + 1)
        high = int(spec.maximum if spec.maximum is not None else 2**31 - 1)
        self.null_value = low - 1 if setting.nullable else None
        spin.setRange(self.null_value if self.null_value is not None else low, high)
        # "512 MB", "224 px" (a special value below shows alone); a count's word ("epochs")
        # would read "1 epochs": the tooltip names it instead.
        if spec.unit and not (spec.unit.isalpha() and spec.unit.islower() and len(spec.unit) > 2):
            spin.setSuffix(f" {spec.unit}")
        if setting.nullable:
            spin.setSpecialValueText(spec.none_word)
        elif spec.zero and low == 0:
            spin.setSpecialValueText(spec.zero)
        spin.setKeyboardTracking(False)  # one edit when typing stops, not one per digit
        spin.valueChanged.connect(self._changed)

    def _changed(self, value: int) -> None:
        self.commit(None if value == self.null_value else value)

    def show(self, value: Any) -> None:
        spin: QSpinBox = self.widget  # type: ignore[assignment]
        spin.setValue(self.null_value if value is None else int(value))


class TextEditor(Editor):
    """Floats and text: typed, checked by the schema when editing finishes, shown exactly."""

    def __init__(self, setting: Setting, commit, error) -> None:
        super().__init__(setting, commit)
        self.error = error
        self.widget = line = QLineEdit()
        if setting.nullable and setting.spec.none:
            line.setPlaceholderText(f"{setting.spec.none_word}: {setting.spec.none}")
        line.editingFinished.connect(self._finished)
        line.textEdited.connect(lambda _t: line.setStyleSheet(""))

    def _finished(self) -> None:
        line: QLineEdit = self.widget  # type: ignore[assignment]
        try:
            value = schema.parse_text(self.setting, line.text())
        except ValueError as e:
            line.setStyleSheet(INVALID_STYLE)
            message = f"{self.setting.label}: {e}"
            line.setToolTip(message + "\n\n" + tooltip(self.setting))
            self.error(message)
            return
        line.setStyleSheet("")
        line.setToolTip(tooltip(self.setting))
        self.commit(value)

    def show(self, value: Any) -> None:
        line: QLineEdit = self.widget  # type: ignore[assignment]
        text = "" if value is None else schema.format_value(self.setting, value)
        if line.text() != text:
            line.setText(text)
        line.setStyleSheet("")


class BoolEditor(Editor):
    def __init__(self, setting: Setting, commit) -> None:
        super().__init__(setting, commit)
        self.widget = box = QCheckBox()
        box.toggled.connect(self.commit)

    def show(self, value: Any) -> None:
        self.widget.setChecked(bool(value))  # type: ignore[attr-defined]


class SettingsForm(QWidget):
    """A form over some of the project's settings, generated from the schema."""

    error = Signal(str)  # a refusal for the status bar; "" when a value is accepted

    def __init__(
        self, controller: ProjectController, settings: list[Setting], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.layout_ = QFormLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.editors: dict[str, Editor] = {}
        self._ready = False  # building widgets emits change signals: not user edits
        for s in settings:
            editor = self._editor(s)
            editor.widget.setToolTip(tooltip(s))
            editor.widget.setObjectName(s.key)
            self.layout_.addRow(s.label, editor.widget)
            self.editors[s.key] = editor
        controller.changed.connect(self._project_changed)
        self._project_changed({"*"})
        self._ready = True

    def _editor(self, s: Setting) -> Editor:
        if s.spec.choices:
            return ChoiceEditor(s, self._commit)
        if s.kind is bool:
            return BoolEditor(s, self._commit)
        if s.kind is int:
            return IntEditor(s, self._commit)
        return TextEditor(s, self._commit, self.error.emit)

    def _commit(self, setting: Setting, value: Any) -> None:
        if not self._ready:
            return
        try:
            self.controller.set_value(setting.key, value)
        except FreezerError as e:
            self.error.emit(e.message)
            self.editors[setting.key].show(self.controller.value(setting.key))
            return
        self.error.emit("")  # accepted: a refusal still on show is no longer the case

    def _project_changed(self, keys: set[str]) -> None:
        for key, editor in self.editors.items():
            if touches(keys, key):
                editor.show(self.controller.value(key))

    def editor(self, key: str) -> QWidget:
        return self.editors[key].widget


def form_settings(cls: type, sections: tuple[str, ...]) -> list[Setting]:
    """The settings of these sections (in that order) that the window shows in a form."""
    shown = [s for s in schema.all_settings(cls) if s.section in sections and s.spec.form]
    return sorted(shown, key=lambda s: sections.index(s.section))


# ---------------------------------------------------------------------- the unfreezing schedule
SCHEDULE_COLUMNS = ("After epoch", "Preset", "Freeze", "Unfreeze")


class ScheduleEditor(QWidget):
    """The gradual-unfreezing phases of the project's plan: every field of every phase is a
    cell, so editing one never drops another's selectors."""

    fineTuneRequested = Signal()  # "head first, then all"
    error = Signal(str)

    def __init__(self, controller: ProjectController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(SCHEDULE_COLUMNS))
        self.table.setHorizontalHeaderLabels(SCHEDULE_COLUMNS)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setMaximumHeight(140)
        self.table.setToolTip(
            "From the start of the epoch after 'After epoch' epochs, train with this selection: "
            "the preset, then the freeze selectors, then the unfreeze selectors (comma-separated)."
        )
        layout.addWidget(self.table)
        buttons = QHBoxLayout()
        self.add_phase = QPushButton("Add step")
        self.remove_phase = QPushButton("Remove")
        self.fine_tune = QPushButton("Head first, then all")
        self.fine_tune.setToolTip("fastai's fine_tune: the head alone for 1 epoch, then everything")
        for b in (self.add_phase, self.remove_phase, self.fine_tune):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        # Edits recorded during a run (a run's project.json opened here) replay at their steps
        # when this project trains: say so, and let them be dropped.
        edits_row = QHBoxLayout()
        self.edits_note = QLabel()
        self.edits_note.setWordWrap(True)
        self.clear_edits = QPushButton("Clear recorded edits")
        self.clear_edits.setToolTip("Train with the plan and schedule only (undoable)")
        edits_row.addWidget(self.edits_note, 1)
        edits_row.addWidget(self.clear_edits)
        layout.addLayout(edits_row)
        self.clear_edits.clicked.connect(
            lambda: self._set_value("plan.edits", [], "Clear recorded freeze edits")
        )
        # Set by the window: {row: why that phase does not fit the model}.
        self.check_phases: Callable[[list[Phase]], dict[int, str]] | None = None
        self.add_phase.clicked.connect(self._add)
        self.remove_phase.clicked.connect(self._remove)
        self.fine_tune.clicked.connect(self.fineTuneRequested)
        self.table.itemChanged.connect(self._edited)
        self._filling = False  # rows being rebuilt from the project are not user edits
        controller.changed.connect(self._project_changed)
        self._project_changed({"*"})

    # ------------------------------------------------------------------ showing
    def phases(self) -> list[Phase]:
        return self.controller.value("plan.schedule")

    def _project_changed(self, keys: set[str]) -> None:
        if touches(keys, "plan.edits"):
            edits = self.controller.value("plan.edits")
            steps = ", ".join(str(e.step) for e in edits[:8]) + (", …" if len(edits) > 8 else "")
            self.edits_note.setText(
                f"Replays {len(edits)} freeze edit(s) recorded during a run, at step(s) {steps}."
                if edits
                else ""
            )
            self.edits_note.setVisible(bool(edits))
            self.clear_edits.setVisible(bool(edits))
        if not touches(keys, "plan.schedule"):
            return
        self._filling = True
        try:
            phases = self.phases()
            self.table.setRowCount(len(phases))
            for row, p in enumerate(phases):
                cells = (str(p.epoch), p.preset, ", ".join(p.freeze), ", ".join(p.unfreeze))
                for col, text in enumerate(cells):
                    item = self.table.item(row, col)
                    if item is None:
                        self.table.setItem(row, col, QTableWidgetItem(text))
                    elif item.text() != text:
                        item.setText(text)
            self.mark_problems()
        finally:
            self._filling = False

    def mark_problems(self) -> None:
        """Phases that do not fit the model are marked where they are, not only at Train."""
        problems = self.check_phases(self.phases()) if self.check_phases else {}
        was = self._filling
        self._filling = True
        try:
            for row in range(self.table.rowCount()):
                message = problems.get(row, "")
                for col in range(self.table.columnCount()):
                    item = self.table.item(row, col)
                    if item is None:
                        continue
                    item.setBackground(QColor("#ffebee") if message else QColor(0, 0, 0, 0))
                    item.setToolTip(message)
        finally:
            self._filling = was
        if problems:
            self.error.emit(next(iter(problems.values())))

    # ------------------------------------------------------------------ editing
    def _set(self, phases: list[Phase], text: str) -> None:
        self._set_value("plan.schedule", phases, text)

    def _set_value(self, key: str, value: Any, text: str) -> None:
        try:
            self.controller.set_value(key, value, text)
        except FreezerError as e:
            self.error.emit(e.message)
            self._project_changed({key})

    def _edited(self, item: QTableWidgetItem) -> None:
        if self._filling:
            return
        phases = self.phases()
        row, col = item.row(), item.column()
        if row >= len(phases):
            return
        phase = phases[row]
        text = item.text().strip()
        if col == 0:
            if not text.isdigit():
                self.error.emit(f"'After epoch' must be a whole number of epochs, not {text!r}.")
                self._project_changed({"plan.schedule"})
                return
            phase.epoch = int(text)
        elif col == 1:
            if not text:
                self.error.emit("A phase needs a preset, e.g. train-all or train-last:1.")
                self._project_changed({"plan.schedule"})
                return
            phase.preset = text
        else:
            selectors = [s.strip() for s in text.split(",") if s.strip()]
            if col == 2:
                phase.freeze = selectors
            else:
                phase.unfreeze = selectors
        self._set(phases, f"Edit unfreezing phase {row + 1}")

    def _add(self) -> None:
        phases = self.phases()
        epoch = max((p.epoch for p in phases), default=0) + 1
        self._set([*phases, Phase(epoch, "train-all")], "Add unfreezing phase")

    def _remove(self) -> None:
        phases = self.phases()
        rows = {i.row() for i in self.table.selectedIndexes()} or {len(phases) - 1}
        kept = [p for i, p in enumerate(phases) if i not in rows]
        if len(kept) != len(phases):
            self._set(kept, "Remove unfreezing phase")


__all__ = ["ScheduleEditor", "SettingsForm", "form_settings"]
