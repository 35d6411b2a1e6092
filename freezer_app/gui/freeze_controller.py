"""Clicks in the model tree become freeze plans; the tree shows the one plan in effect.

Idle, the plan in effect is the project's: an edit is an undoable project command (undo and
redo live in the project controller). During a run it is the run's, as its PlanApplied events
report it: an edit goes to the run (`editForRun`) and its rows show as pending until the run
applies it at the next step, or refuses it (nothing left to train) and the tree returns to the
plan in effect. The tree's boxes, the summary line and the status bar all read `plan`/`tree`.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QObject, Signal

from freezer_app.core.errors import FreezerError
from freezer_app.core.freeze import FreezePlan, edit_plan, plan_code, plan_for_mask, resolve
from freezer_app.core.tree import ModelTree
from freezer_app.gui.project_controller import ProjectController, touches
from freezer_app.gui.tree_model import FreezeTreeModel


class FreezeController(QObject):
    planChanged = Signal(object)  # the plan shown changed (FreezePlan)
    editForRun = Signal(object)  # a FreezePlan for the live run
    error = Signal(str)  # a message for the status bar

    def __init__(
        self, model: FreezeTreeModel, project: ProjectController, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.model = model
        self.project = project
        self.tree: ModelTree | None = None
        self.live: FreezePlan | None = None  # the run's plan in effect; None while idle
        self.requested: FreezePlan | None = None  # sent to the run, not applied yet
        self.misfit = ""  # why the plan shown does not fit the model (then nothing is ticked)
        model.editRequested.connect(self.edit)
        model.lrMultRequested.connect(self.set_lr_mult)
        project.changed.connect(self._project_changed)

    @property
    def undo_stack(self):
        return self.project.undo_stack

    @property
    def running(self) -> bool:
        return self.live is not None

    @property
    def plan(self) -> FreezePlan:
        """The plan the tree shows: the project's, or during a run the run's (or the edit
        on its way to it)."""
        if self.live is not None:
            return self.requested or self.live
        return self.project.project.plan

    # ------------------------------------------------------------------ showing
    def set_tree(self, tree: ModelTree | None) -> None:
        """A new model (or class count): rebuild the tree and show the plan on it."""
        self.tree = tree
        self.model.set_tree(tree)
        self._show()

    def _show(self) -> None:
        plan = self.plan
        if self.tree is not None:
            self.misfit = ""
            try:
                self.tree.trainable = resolve(plan, self.tree)
            except FreezerError as e:
                # The plan names modules this model lacks: the summary says so in place of
                # counts, and Train refuses it with the same message.
                self.tree.trainable = np.ones(len(self.tree.params), dtype=bool)
                self.misfit = f"The freeze plan does not fit this model: {e.message}"
                self.error.emit(self.misfit)
        self.model.set_lr_mults(self.project.project.plan.lr_mults())
        self.model.refresh_states()
        self.planChanged.emit(plan)

    def _project_changed(self, keys: set[str]) -> None:
        if touches(keys, "plan"):
            self.model.set_lr_mults(self.project.project.plan.lr_mults())
        if self.live is None and touches(keys, "plan"):
            self._show()

    def phase_problems(self, phases: list) -> dict[int, str]:
        """{row: why} for schedule phases whose selection does not fit the model shown."""
        problems: dict[int, str] = {}
        if self.tree is None:
            return problems
        base = self.project.project.plan
        for row, phase in enumerate(phases):
            try:
                resolve(base.with_selection(phase.preset, phase.freeze, phase.unfreeze), self.tree)
            except FreezerError as e:
                problems[row] = f"Phase {row + 1} (after epoch {phase.epoch}): {e.message}"
        return problems

    def code(self) -> str:
        assert self.tree is not None
        return plan_code(self.tree, self.tree.trainable, self.plan)

    # ------------------------------------------------------------------ the run
    def run_started(self, plan: FreezePlan) -> None:
        self.live, self.requested = plan, None
        self.model.lr_editable = False  # the run's groups are built: multipliers are fixed

    def follow_run(self, plan: FreezePlan, mask: np.ndarray | None, reason: str) -> None:
        """The run's plan in effect (it changed, or a change was refused)."""
        self.live = plan
        if reason in ("edit", "refused", "start", "resume"):
            self.requested = None
        if self.tree is None:
            return
        if mask is not None and mask.shape == self.tree.trainable.shape:
            applied = mask
        else:
            applied = resolve(plan, self.tree)
        self.model.set_applied_mask(applied)
        self.tree.trainable = resolve(self.requested, self.tree) if self.requested else applied
        self.model.refresh_states()
        self.planChanged.emit(self.plan)

    def run_ended(self) -> None:
        """Back to the project's plan; live values measured under another plan are dropped."""
        self.live = self.requested = None
        self.model.lr_editable = True
        self.model.set_applied_mask(None)
        self._show()

    # ------------------------------------------------------------------ edits
    def apply(self, plan: FreezePlan, text: str) -> None:
        if self.tree is None:
            return
        try:
            mask = resolve(plan, self.tree)
        except FreezerError as e:
            self.error.emit(str(e.message))
            return
        if self.live is not None:
            if not mask.any():
                self.error.emit(
                    f"{text}: that would leave nothing to train, so it was not sent to the run."
                )
                self.model.refresh_states()  # the clicked box goes back to what trains
                return
            if plan.same_selection(self.plan):
                return
            self.requested = plan.selection()
            self.tree.trainable = mask
            self.model.refresh_states()
            self.planChanged.emit(self.plan)
            self.editForRun.emit(self.requested)
            return
        if plan.to_dict() == self.project.project.plan.to_dict():
            return
        self.project.set_values({"plan": plan}, text)

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
        self.apply(self.plan.with_selection(preset, [], []), f"Preset {preset}")

    def train_only(self, selector: str) -> None:
        self.apply(
            self.plan.with_selection(self.plan.preset, ["*"], [selector]), f"Train only {selector}"
        )

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

    def set_lr_mult(self, path: str, text: str) -> None:
        """A learning-rate multiplier typed in the tree's LR × column (empty: reset), as one
        undoable project edit."""
        if self.running:
            self.error.emit(
                "Learning-rate multipliers are fixed while a run trains: set them before the next."
            )
            return
        text = text.strip().lstrip("×x*").strip()
        mult: float | None = None
        if text:
            try:
                mult = float(text)
            except ValueError:
                mult = math.nan
            if not 0 < mult <= 10_000:
                self.error.emit(f"LR × of {path}: {text!r} is not a number in (0, 10000].")
                self.model.set_lr_mults(self.project.project.plan.lr_mults())
                return
        plan = self.project.project.plan
        edited = plan.with_lr_mult(path, mult)
        if edited.lr_mult == plan.lr_mult:
            return
        words = f"Set LR × {mult:g} on {path}" if mult is not None else f"Reset LR × of {path}"
        self.project.set_values({"plan": edited}, words)
