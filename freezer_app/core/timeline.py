"""The freeze timeline: which selection trains at each optimizer step of a run.

A plan's own selection trains from step 1; a schedule phase keyed by epoch E takes over at the
first step of epoch E + 1 (step E × steps_per_epoch + 1); an edit keyed by step N takes over at
step N. The latest entry to start wins; at the same step an edit (made while that step was
about to run) wins over a phase. The trainer, `inspect`, the window and the run's
`plans.jsonl` all read the timeline through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from freezer_app.core.errors import FreezerError, SelectorError
from freezer_app.core.freeze import Edit, FreezePlan, Phase, resolve
from freezer_app.core.tree import ModelTree

_ORDER = {"start": 0, "schedule": 1, "edit": 2}


@dataclass(frozen=True)
class Entry:
    """One selection of the timeline and the first step it trains."""

    start_step: int
    kind: str  # "start" | "schedule" | "edit"
    index: int  # position among the plan's phases or edits
    plan: FreezePlan  # the selection (preset, freeze, unfreeze) with the plan's BN policy

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.index)

    def label(self) -> str:
        if self.kind == "start":
            return "the plan"
        if self.kind == "schedule":
            return f"schedule phase {self.index + 1}"
        return f"edit {self.index + 1} (step {self.start_step})"


def _selection(plan: FreezePlan, item: Phase | Edit) -> FreezePlan:
    return FreezePlan(item.preset, list(item.freeze), list(item.unfreeze), plan.bn_policy)


def entries(plan: FreezePlan, steps_per_epoch: int) -> list[Entry]:
    """Every selection of the plan's timeline, in the order they take effect."""
    out = [Entry(1, "start", 0, plan.selection())]
    out += [
        Entry(p.epoch * steps_per_epoch + 1, "schedule", i, _selection(plan, p))
        for i, p in enumerate(plan.schedule)
    ]
    out += [Entry(e.step, "edit", i, _selection(plan, e)) for i, e in enumerate(plan.edits)]
    return sorted(out, key=lambda e: (e.start_step, _ORDER[e.kind], e.index))


def entry_at(timeline: list[Entry], step: int) -> Entry:
    """The entry in force for optimizer step `step` (1-based)."""
    current = timeline[0]
    for entry in timeline:
        if entry.start_step <= step:
            current = entry
    return current


def plan_at(plan: FreezePlan, step: int, steps_per_epoch: int) -> FreezePlan:
    return entry_at(entries(plan, steps_per_epoch), step).plan


def check(plan: FreezePlan, tree: ModelTree) -> dict[tuple[str, int], np.ndarray]:
    """Resolve every selection of the timeline against the model, so an unknown preset or a
    selector that matches nothing fails before anything trains. Returns the masks by entry key.

    The error names the phase or edit; a selection that leaves nothing to train is not an
    error here (the run refuses it when its time comes and goes on with the plan in force),
    except for the plan's own selection, which must train something.
    """
    epochs = [p.epoch for p in plan.schedule]
    twice = sorted({e for e in epochs if epochs.count(e) > 1})
    if twice:
        # Both would take over at the same step and only the last would count.
        raise SelectorError(
            f"The gradual-unfreezing schedule has two phases after epoch {twice[0]}.",
            "Keep one phase per epoch (e.g. --unfreeze-schedule 1:train-last:1,3:train-all).",
        )
    masks: dict[tuple[str, int], np.ndarray] = {}
    for entry in entries(plan, 1):
        try:
            masks[entry.key] = resolve(entry.plan, tree)
        except FreezerError as e:
            if entry.kind == "schedule":
                epoch = plan.schedule[entry.index].epoch
                where = f"Gradual-unfreezing phase {entry.index + 1} (after epoch {epoch})"
            elif entry.kind == "edit":
                where = f"Freeze edit {entry.index + 1} (step {entry.start_step})"
            else:
                where = "The freeze plan"
            raise SelectorError(f"{where}: {e.message}", e.hint) from None
    first = entry_at(entries(plan, 1), 1)  # what trains the first step (a phase at epoch 0)
    if not masks[first.key].any():
        raise SelectorError(
            "The freeze plan freezes every parameter, so there is nothing to train.",
            "Unfreeze at least the head (e.g. the head-only preset).",
        )
    return masks


_SCHEDULE_ENTRY = re.compile(r"^\s*(\d+)\s*:\s*(\S.*?)\s*$")


def parse_schedule(text: str) -> list[Phase]:
    """`1:train-last:1,3:train-all` -> after 1 epoch train-last:1, after 3 epochs train-all."""
    phases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _SCHEDULE_ENTRY.match(part)
        if not match:
            raise SelectorError(
                f"Bad schedule entry {part!r}.",
                "Write EPOCHS:PRESET pairs, e.g. --unfreeze-schedule 1:train-last:1,3:train-all "
                "(after 1 epoch train the last stage too, after 3 train everything).",
            )
        phases.append(Phase(epoch=int(match.group(1)), preset=match.group(2)))
    return phases
