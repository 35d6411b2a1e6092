"""Freeze edits with undo/redo: clicks and menu actions become new freeze plans (core logic)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from freezer_app.core.errors import FreezerError
from freezer_app.core.freeze import FreezePlan, edit_plan, plan_code, plan_for_mask, resolve
from freezer_app.core.tree import ModelTree
from freezer_app.gui.tree_model import FreezeTreeModel


class _PlanChange(QUndoCommand):
    def __init__(
        self, controller: FreezeController, before: FreezePlan, after: FreezePlan, text: str
    ) -> None:
        super().__init__(text)
        self.controller = controller
        self.before = before
        self.after = after

    def redo(self) -> None:
        self.controller._set(self.after)

    def undo(self) -> None:
        self.controller._set(self.before)


class FreezeController(QObject):
    """Owns the freeze plan being edited and keeps the tree model in step with it."""

    planChanged = Signal(object)  # FreezePlan
    error = Signal(str)  # a message for the status bar

    def __init__(self, model: FreezeTreeModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.tree: ModelTree | None = None
        self.plan = FreezePlan()
        self.undo_stack = QUndoStack(self)
        model.editRequested.connect(self.edit)

    # ------------------------------------------------------------------ state
    def set_tree(self, tree: ModelTree | None, plan: FreezePlan) -> None:
        """A new model: rebuild the tree and apply `plan` (falling back to train-all if it
        names modules this model does not have)."""
        self.tree = tree
        self.undo_stack.clear()
        self.model.set_tree(tree)
        try:
            self._set(plan)
        except FreezerError as e:
            self.error.emit(f"{e.message} The freeze plan was reset to train-all.")
            self._set(FreezePlan(bn_policy=plan.bn_policy, schedule=plan.schedule))

    def _set(self, plan: FreezePlan, announce: bool = True) -> None:
        if self.tree is not None:
            self.tree.trainable = resolve(plan, self.tree)
        self.plan = plan
        self.model.refresh_states()
        if announce:
            self.planChanged.emit(plan)

    def mask(self) -> np.ndarray:
        assert self.tree is not None
        return self.tree.trainable.copy()

    def code(self) -> str:
        assert self.tree is not None
        return plan_code(self.tree, self.tree.trainable, self.plan)

    # ------------------------------------------------------------------ edits
    def apply(self, plan: FreezePlan, text: str) -> None:
        if self.tree is None:
            return
        try:
            resolve(plan, self.tree)
        except FreezerError as e:
            self.error.emit(str(e.message))
            return
        if plan.to_dict() == self.plan.to_dict():
            return
        self.undo_stack.push(_PlanChange(self, self.plan, plan, text))

    def edit(self, selector: str, trainable: bool) -> None:
        """Freeze or unfreeze everything `selector` covers (a check-box click)."""
        if self.tree is None:
            return
        try:
            plan = edit_plan(self.tree, self.plan, selector, trainable)
        except FreezerError as e:
            self.error.emit(str(e.message))
            return
        verb = "Unfreeze" if trainable else "Freeze"
        self.apply(plan, f"{verb} {selector}")

    def set_preset(self, preset: str) -> None:
        self.apply(
            FreezePlan(preset, [], [], self.plan.bn_policy, list(self.plan.schedule)),
            f"Preset {preset}",
        )

    def train_only(self, selector: str) -> None:
        plan = FreezePlan(
            self.plan.preset, ["*"], [selector], self.plan.bn_policy, list(self.plan.schedule)
        )
        self.apply(plan, f"Train only {selector}")

    def freeze_before(self, path: str) -> None:
        """Freeze every parameter registered before this module (the layers that feed it)."""
        if self.tree is None or path not in self.tree.nodes:
            return
        node = self.tree.nodes[path]
        if node.indices.size == 0:
            return
        target = self.tree.trainable.copy()
        target[: int(node.indices.min())] = False
        self.apply(plan_for_mask(self.tree, target, self.plan), f"Freeze everything before {path}")

    def freeze_type(self, type_name: str, trainable: bool = False) -> None:
        self.edit(f"type:{type_name}", trainable)

    def set_bn_policy(self, policy: str) -> None:
        if policy != self.plan.bn_policy:
            plan = FreezePlan(
                self.plan.preset,
                list(self.plan.freeze),
                list(self.plan.unfreeze),
                policy,
                list(self.plan.schedule),
            )  # type: ignore[arg-type]
            self.apply(plan, f"BatchNorm policy {policy}")

    def set_schedule(self, schedule: list) -> None:
        plan = FreezePlan(
            self.plan.preset,
            list(self.plan.freeze),
            list(self.plan.unfreeze),
            self.plan.bn_policy,
            list(schedule),
        )
        self.apply(plan, "Unfreezing schedule")

    def follow_run(self, plan: FreezePlan) -> None:
        """A run switched plans on its own (gradual-unfreezing schedule): show what trains now.

        Silent: the project keeps its own plan (the schedule's start), nothing is sent back to
        the run, and there is no undo entry. Edits made now start from what is shown.
        """
        merged = FreezePlan(
            plan.preset,
            list(plan.freeze),
            list(plan.unfreeze),
            self.plan.bn_policy,
            list(self.plan.schedule),
        )
        self._set(merged, announce=False)

    def show_plan(self, plan: FreezePlan) -> None:
        """Back to the project's plan after a run (no undo entry, no change signal)."""
        self._set(plan, announce=False)
