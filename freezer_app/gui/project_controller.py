"""The window's one project model: every edit is an undoable command; views observe it.

Panels, forms and the tree never keep their own copy of a setting: they show
`controller.value(key)` when `changed` names that key, and send edits with `set_values`.
Undo/redo covers settings, the model choice and the freeze plan alike; "unsaved changes" is
the undo stack's clean state.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from freezer_app.core import settings as schema
from freezer_app.core.project import Project

EVERYTHING = "*"  # in `changed`: a new project, every key


class _SetValues(QUndoCommand):
    def __init__(self, controller: ProjectController, before: dict, after: dict, text: str) -> None:
        super().__init__(text)
        self.controller = controller
        self.before = before
        self.after = after

    def redo(self) -> None:
        self.controller._assign(self.after)

    def undo(self) -> None:
        self.controller._assign(self.before)


def touches(keys: set[str], *prefixes: str) -> bool:
    """Whether a change names a key under any of `prefixes` ("plan" covers "plan.bn_policy")."""
    if EVERYTHING in keys:
        return True
    return any(
        k == p or k.startswith(p + ".") or p.startswith(k + ".") for k in keys for p in prefixes
    )


class ProjectController(QObject):
    changed = Signal(object)  # set of keys ("train.lr", "plan", "model", …; "*": everything)
    dirtyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.project = Project()
        self.path: Path | None = None
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._clean_changed)

    def _clean_changed(self, clean: bool) -> None:
        self.dirtyChanged.emit(not clean)

    # ------------------------------------------------------------------ reading
    @property
    def dirty(self) -> bool:
        return not self.undo_stack.isClean()

    def value(self, key: str) -> Any:
        return copy.deepcopy(schema.get_value(self.project, key))

    def snapshot(self) -> Project:
        """A copy to hand to a run: the window's project is never shared with a thread."""
        return copy.deepcopy(self.project)

    # ------------------------------------------------------------------ editing
    def set_values(self, changes: dict[str, Any], text: str) -> bool:
        """One undoable edit of one or more keys. Values are checked against the schema first
        (a FreezerError says what is wrong); an edit that changes nothing is dropped."""
        for key, value in changes.items():
            try:
                setting = schema.find(Project, key)
            except KeyError:
                continue  # "plan" and other whole sections
            schema.check_value(setting, value)
        before = {k: self.value(k) for k in changes}
        after = {k: copy.deepcopy(v) for k, v in changes.items()}
        if before == after:
            return False
        self.undo_stack.push(_SetValues(self, before, after, text))
        return True

    def set_value(self, key: str, value: Any, text: str = "") -> bool:
        if not text:
            # The words the form shows ("Mixup α"), not the project key ("train.mixup").
            setting = schema.find(Project, key)
            text = f"Set {setting.label} to {schema.format_value(setting, value)}"
        return self.set_values({key: value}, text)

    def note(self, changes: dict[str, Any]) -> None:
        """Facts the window learns rather than edits the user makes (the dataset's classes):
        kept in the project and announced, but not undoable and not an unsaved change."""
        if all(self.value(k) == v for k, v in changes.items()):
            return
        for key, value in changes.items():
            schema.set_value(self.project, key, copy.deepcopy(value))
        self.changed.emit(set(changes))

    def _assign(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            schema.set_value(self.project, key, copy.deepcopy(value))
        self.changed.emit(set(values))

    # ------------------------------------------------------------------ files
    def replace(self, project: Project, path: Path | None) -> None:
        """A new or opened project: no undo history, nothing unsaved."""
        self.project = project
        self.path = path
        self.undo_stack.clear()
        self.undo_stack.setClean()
        self.changed.emit({EVERYTHING})
        self.dirtyChanged.emit(False)

    def save(self, path: Path) -> None:
        self.project.save(path)
        self.path = path
        self.undo_stack.setClean()
        self.dirtyChanged.emit(False)


__all__ = ["EVERYTHING", "ProjectController", "touches"]
