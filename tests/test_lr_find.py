"""The learning-rate finder: core range test, `freezer-app lr-find`, and the window's dialog."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, make_project

from freezer_app.cli import main
from freezer_app.core import lr_find, timeline
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.lr_find import (
    CANCELLED,
    COMPLETED,
    DIVERGED,
    NON_FINITE,
    find_lr,
    prepare_parts,
    range_test,
    steepest,
    valley,
)

STEPS = 30  # enough for a curve on the demo data, quick on the CPU


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    return {name: t.detach().clone() for name, t in tensors.items()}


def _bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():  # NaN-safe and sign-of-zero exact: compare the bytes
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


# ---------------------------------------------------------------------- suggestions
def test_suggestions_on_a_known_curve() -> None:
    """A loss that is flat, falls fastest around 1e-3, bottoms out and blows up."""
    lrs = np.logspace(-7, 1, 100)
    x = np.log10(lrs)
    losses = 2.0 - 1.5 / (1 + np.exp(-3 * (x + 3))) + np.exp(3 * (x - 0.5))
    s = steepest(lrs, losses)
    v = valley(lrs, losses)
    assert s is not None and v is not None
    assert 3e-4 < s < 3e-3  # the inflection of the falling sigmoid, at 1e-3
    # The valley sits inside the long fall, before the minimum.
    assert lrs[0] < v < lrs[int(np.argmin(losses))]
    assert steepest(lrs[:1], losses[:1]) is None


def test_range_checks() -> None:
    from freezer_app.core.errors import FreezerError

    with pytest.raises(FreezerError, match="5 to"):
        lr_find.check_range(2, 1e-7, 10)
    with pytest.raises(FreezerError, match="grow"):
        lr_find.check_range(50, 1.0, 0.1)
    assert lr_find.lr_at(0, 100, 1e-7, 10) == pytest.approx(1e-7)
    assert lr_find.lr_at(99, 100, 1e-7, 10) == pytest.approx(10)


# ---------------------------------------------------------------------- the range test
def _parts_and_plan(demo_data: Path, **train: object):
    project = make_project(demo_data, **train)
    parts = prepare_parts(project)
    entries = timeline.entries(project.plan, parts.steps_per_epoch)
    return parts, timeline.entry_at(entries, 1).plan


def test_weights_and_buffers_are_bit_identical_after_the_test(demo_data: Path) -> None:
    # Train-all: every BatchNorm trains, so its running statistics move during the test.
    parts, plan = _parts_and_plan(demo_data, plan=FreezePlan("train-all"))
    model = parts.model
    before = _state(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    moved: list[bool] = []

    def on_point(point: lr_find.LrPoint) -> None:
        if point.step == 5:
            moved.append(not torch.equal(bn.running_mean, before[_name_of(model, bn)]))

    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    result = range_test(parts, plan, steps=STEPS, on_point=on_point)
    assert moved == [True]  # the test did train (and update BN statistics) ...
    after = _state(model)
    assert before.keys() == after.keys()
    # ... and every parameter and buffer (running stats, num_batches_tracked) is back.
    changed = [n for n in before if not _bit_identical(before[n], after[n])]
    assert not changed, changed
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    # The random number generators are as they were.
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert len(result.points) >= 10


def _name_of(model: torch.nn.Module, bn: torch.nn.Module) -> str:
    prefix = next(n for n, m in model.named_modules() if m is bn)
    return f"{prefix}.running_mean"


def test_suggestion_is_in_range_and_sensible(demo_data: Path) -> None:
    project = make_project(demo_data)  # train-all: this tiny model's head alone learns little
    points: list[lr_find.LrPoint] = []
    before = project.to_dict()
    result = find_lr(project, steps=STEPS, on_point=points.append)
    assert project.to_dict() == before  # the project is not changed
    assert points == result.points and len(points) >= 10
    assert [p.step for p in points] == list(range(1, len(points) + 1))
    lrs = [p.lr for p in points]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-7)
    assert all(math.isfinite(p.loss) and math.isfinite(p.smoothed) for p in points)
    assert result.suggested_lr == result.valley_lr
    for lr in (result.suggested_lr, result.steepest_lr):
        assert lr is not None and 1e-7 <= lr <= 10
    # Where this small model learns: neither the flat start nor the blow-up.
    assert 1e-5 <= result.suggested_lr <= 1.0
    # On the falling side: the smoothed loss is lowest at a larger rate than the suggestion.
    lowest = min(points, key=lambda p: p.smoothed)
    assert result.suggested_lr < lowest.lr
    assert result.stopped in (COMPLETED, DIVERGED)


def test_the_groups_keep_their_multipliers(demo_data: Path) -> None:
    parts, plan = _parts_and_plan(demo_data, head_lr_mult=10.0, plan=FreezePlan("train-all"))
    seen: list[list[float]] = []

    def on_point(point: lr_find.LrPoint) -> None:
        seen.append([g["lr"] / point.lr for g in parts.optimizer.param_groups])

    range_test(parts, plan, steps=6, on_point=on_point)
    scales = sorted({round(s, 6) for row in seen for s in row})
    assert scales == [1.0, 10.0]


def test_divergence_stops_early(demo_data: Path) -> None:
    parts, plan = _parts_and_plan(demo_data, plan=FreezePlan("train-all"), grad_clip=None)
    result = range_test(parts, plan, steps=60, start_lr=1.0, end_lr=1e6)
    assert result.stopped in (DIVERGED, NON_FINITE)
    assert len(result.points) < 60
    if result.stopped == DIVERGED:
        best = min(p.smoothed for p in result.points)
        assert result.points[-1].smoothed > 4 * best


def test_cancel_stops_at_the_next_step(demo_data: Path) -> None:
    points: list[lr_find.LrPoint] = []
    result = find_lr(
        make_project(demo_data),
        steps=STEPS,
        on_point=points.append,
        should_cancel=lambda: len(points) >= 3,
    )
    assert result.stopped == CANCELLED
    assert len(result.points) == 3


def test_a_plan_that_trains_nothing_is_refused(demo_data: Path) -> None:
    from freezer_app.core.errors import FreezerError

    project = make_project(demo_data, plan=FreezePlan("head-only", freeze=["*"]))
    with pytest.raises(FreezerError, match="nothing to train"):
        find_lr(project, steps=STEPS)


# ---------------------------------------------------------------------- the command
def test_cli_json(demo_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "lr-find",
            "--model",
            "timm:test_resnet",
            "--data",
            str(demo_data),
            "--preset",
            "head-only",
            "--steps",
            str(STEPS),
            "--json",
            "--quiet",
            *FAST,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert isinstance(data["suggested_lr"], float) and 1e-7 <= data["suggested_lr"] <= 10
    assert data["valley_lr"] == data["suggested_lr"]
    assert isinstance(data["steepest_lr"], float)
    assert len(data["curve"]) >= 10
    assert set(data["curve"][0]) >= {"lr", "loss", "smoothed"}


def test_cli_summary_and_errors(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(demo_data)
    path = tmp_path / "project.json"
    project.save(path)
    assert main(["lr-find", str(path), "--steps", "12", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "suggested:" in out and f"freezer-app train {path} --lr " in out
    # No data, a missing project file, a bad range: a message on stderr, exit 2.
    for argv in (
        ["lr-find", "--model", "timm:test_resnet"],
        ["lr-find", str(tmp_path / "missing.json")],
        ["lr-find", "--model", "timm:test_resnet", "--data", str(tmp_path / "none")],
        ["lr-find", str(path), "--start-lr", "1", "--end-lr", "0.1"],
    ):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: "), argv


# ---------------------------------------------------------------------- the window
@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, monkeypatch):
    from conftest import close_windows, shown_window

    project = make_project(demo_data, plan=FreezePlan("head-only"))
    w = shown_window(qtbot, tmp_path, project, monkeypatch)
    yield w
    close_windows(qtbot, [w])


def test_window_button_finds_plots_and_applies_an_undoable_rate(qtbot, window, monkeypatch) -> None:
    from PySide6.QtCore import Qt

    from freezer_app.gui.lr_find_view import LrFindDialog, rounded_lr, short_lr

    monkeypatch.setattr(LrFindDialog, "steps", STEPS)
    w = window
    w.left.setCurrentWidget(w.settings_panel)
    button = w.settings_panel.find_lr
    assert button.isVisible() and button.isEnabled()
    old_lr = w.project.train.lr
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    dialog = w.findChild(LrFindDialog)
    assert dialog is not None and dialog.running
    # The test runs off the GUI thread: the window keeps answering, points arrive live.
    qtbot.waitUntil(lambda: dialog.plot.lrs.n >= 3, timeout=60_000)
    assert dialog.running
    qtbot.waitUntil(lambda: not dialog.running, timeout=120_000)
    result = dialog.result
    assert result is not None and result.suggested_lr is not None
    xs, _ys = dialog.plot.smooth.getData()
    assert xs is not None and len(xs) == len(result.points) >= 10
    # Both suggestions are marked, and named in the legend.
    assert len(dialog.plot.valley.getData()[0]) == 1
    assert len(dialog.plot.steepest.getData()[0]) == 1
    labels = [label.text for _sample, label in dialog.plot.legend.items]
    assert any(t.startswith("valley") for t in labels)
    assert any(t.startswith("steepest") for t in labels)
    # One click sets the suggestion; Ctrl+Z (the window's Undo) restores the old rate.
    lr = rounded_lr(result.suggested_lr)
    assert dialog.use_button.text() == f"Use {short_lr(lr)}"
    qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)
    assert w.project.train.lr == lr != old_lr
    dialog.close()
    assert w.act_undo.shortcut().toString() == "Ctrl+Z"
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=5_000)
    qtbot.keyClick(w.tree_panel, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert w.project.train.lr == old_lr


def test_window_finder_can_be_stopped(qtbot, window, monkeypatch) -> None:
    from PySide6.QtCore import Qt

    from freezer_app.gui.lr_find_view import LrFindDialog, open_lr_finder

    monkeypatch.setattr(LrFindDialog, "steps", 200)
    dialog = open_lr_finder(window)
    assert dialog is not None
    qtbot.waitUntil(lambda: dialog.plot.lrs.n >= 2, timeout=60_000)
    qtbot.mouseClick(dialog.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=60_000)
    assert dialog.result is not None and dialog.result.stopped == CANCELLED
    assert len(dialog.result.points) < 200
    dialog.close()


def test_mixup_and_accumulation_as_training_does(demo_data: Path) -> None:
    """Soft mixup targets reach the soft-target loss; a step spans accum_steps batches."""
    parts, plan = _parts_and_plan(demo_data, mixup=0.4, accum_steps=2)
    assert parts.mixup is not None and parts.accum_steps == 2
    before = _state(parts.model)
    result = range_test(parts, plan, steps=8)
    assert len(result.points) == 8
    assert all(math.isfinite(p.loss) for p in result.points)
    after = _state(parts.model)
    assert all(_bit_identical(before[n], after[n]) for n in before)


def test_no_run_starts_until_a_closed_test_has_ended(qtbot, window, monkeypatch) -> None:
    """Closing the dialog cancels the test, but its thread ends only at its next step: until
    then Train and a second test wait (same device, same random generators)."""
    from freezer_app.gui.lr_find_view import LR_TEST_STOPPING, LrFindDialog, open_lr_finder

    monkeypatch.setattr(LrFindDialog, "steps", 200)
    dialog = open_lr_finder(window)
    assert dialog is not None and window.lr_find_task is dialog.task
    task = dialog.task
    dialog.close()
    # Building the model and loaders alone takes longer than getting here.
    assert window.lr_find_task is task
    window.act_train.trigger()
    assert window.session is None
    assert window.statusBar().currentMessage() == LR_TEST_STOPPING
    assert open_lr_finder(window) is None
    qtbot.waitUntil(lambda: window.lr_find_task is None, timeout=60_000)
    window.act_train.trigger()
    assert window.session is not None
    window.stop_training()
    qtbot.waitUntil(lambda: window.session is None, timeout=60_000)


def test_escape_stops_the_test_and_run_again_is_tracked(qtbot, window, monkeypatch) -> None:
    from PySide6.QtCore import Qt

    from freezer_app.gui.lr_find_view import LrFindDialog, open_lr_finder

    monkeypatch.setattr(LrFindDialog, "steps", 200)
    dialog = open_lr_finder(window)
    assert dialog is not None
    first = dialog.task
    dialog.cancel()
    qtbot.waitUntil(lambda: not dialog.running, timeout=60_000)
    qtbot.waitUntil(lambda: window.lr_find_task is None, timeout=60_000)
    dialog.start()  # Run again: the window tracks this test too
    second = dialog.task
    assert second is not None and second is not first and window.lr_find_task is second
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    assert second.cancelled.is_set() and not dialog.isVisible()
    qtbot.waitUntil(lambda: window.lr_find_task is None, timeout=60_000)
