"""One source of truth in the window: the project it edits is the project a run repeats.

Every test drives the real actions and widgets (QAction.trigger, clicks in the tree, typing
into the generated forms), never only the method behind them.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
from conftest import close_windows, make_project
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QMessageBox, QSpinBox
from test_gui import type_setting

from freezer_app.cli import main
from freezer_app.core import events as ev
from freezer_app.core import settings as schema
from freezer_app.core.freeze import FreezePlan, Phase
from freezer_app.core.project import Project
from freezer_app.core.run_folder import read_jsonl
from freezer_app.gui.forms import form_settings
from freezer_app.gui.main_window import MainWindow
from freezer_app.gui.tree_model import GRAD, BarRole, StaleRole, human


def _window(qtbot, tmp_path: Path, project: Project, monkeypatch) -> MainWindow:
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    w.set_project(project, None)
    w.resize(1400, 900)
    w.show()
    # The dataset check, then the model preview for its class count, run in the background.
    qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
    w._runs_root = lambda: tmp_path / "runs"
    return w


@pytest.fixture
def make_window(qtbot, tmp_path: Path, monkeypatch):
    windows: list[MainWindow] = []

    def make(project: Project) -> MainWindow:
        w = _window(qtbot, tmp_path, project, monkeypatch)
        windows.append(w)
        return w

    yield make
    close_windows(qtbot, windows)


def click_box(qtbot, w: MainWindow, path: str) -> None:
    """Click the check box of a module's row in the real tree view."""
    w.tree_panel.expand_to_depth(2)
    view = w.tree_panel.view
    index = w.tree_panel.view_index(w.tree_model.index_for_path(path))
    view.scrollTo(index)
    rect = view.visualRect(index)
    # The box sits after the branch indicator; its centre is a row height in from the left.
    pos = rect.topLeft() + type(rect.topLeft())(rect.height() // 2 + 2, rect.height() // 2)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def step_losses(run: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"
    ]


def pause_after(qtbot, w: MainWindow, step: int) -> None:
    """Press Pause as soon as the window has seen `step` (the run stops at its next step)."""

    def watch(batch: list) -> None:
        if not w.session.worker.control.paused and any(
            isinstance(e, ev.StepEvent) and e.step >= step for e in batch
        ):
            w.act_pause.trigger()

    w.session.events.connect(watch)
    qtbot.waitUntil(lambda: w.status_state.text() == "paused", timeout=60_000)
    w.session.events.disconnect(watch)


def wait_finished(qtbot, w: MainWindow, finished: list) -> ev.Finished:
    qtbot.waitUntil(lambda: bool(finished) and w.session is None, timeout=120_000)
    return finished[0]


def test_a_run_from_the_train_button_exports_resumes_and_repeats_with_its_edits(
    make_window, qtbot, demo_data: Path, tmp_path: Path
) -> None:
    w = make_window(make_project(demo_data, epochs=2, optimizer="adamw"))
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()  # what a click on Train, Ctrl+Return and Run ▸ Train all do
    assert w.session is not None
    pause_after(qtbot, w, 3)
    click_box(qtbot, w, "layer1")  # freeze layer1 while the run trains
    assert w.controller.plan.freeze == ["layer1"]
    w.act_pause.trigger()
    result = wait_finished(qtbot, w, finished)
    assert result.reason == "completed" and result.frozen_check_passed
    run = Path(result.run_dir)

    project = json.loads((run / "project.json").read_text())
    assert project["train"]["max_steps"] is None  # not `false` from the action's `checked`
    edits = project["plan"]["edits"]
    assert len(edits) == 1 and edits[0]["freeze"] == ["layer1"]
    edit_step = edits[0]["step"]
    assert 4 <= edit_step <= 16
    changes = read_jsonl(run / "plans.jsonl")
    assert [(c["reason"], c["step"]) for c in changes] == [("start", 1), ("edit", edit_step)]
    # The window's project keeps its own plan; the run folder has the edit.
    assert w.project.plan.edits == [] and w.controller.plan.freeze == []

    # Export works on the run the button started.
    assert main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 0

    # Repeat it headless: the same per-step losses, the edit at the same step.
    again = tmp_path / "again"
    assert main(["train", str(run / "project.json"), "--out", str(again), "--quiet"]) == 0
    assert step_losses(again) == step_losses(run)
    assert [(c["reason"], c["step"]) for c in read_jsonl(again / "plans.jsonl")] == [
        ("start", 1),
        ("edit", edit_step),
    ]

    # Stop a copy before the edit, resume it: the same losses again.
    part = tmp_path / "part"
    stop_at = str(edit_step - 2)
    args = ["train", str(run / "project.json"), "--out", str(part), "--quiet"]
    assert main([*args, "--max-steps", stop_at]) == 0
    moved = tmp_path / "moved"
    shutil.move(str(part), moved)  # a run folder is self-contained
    assert main(["train", "--resume", str(moved), "--quiet"]) == 0
    assert step_losses(moved) == step_losses(run)
    resumed = json.loads((moved / "project.json").read_text())
    assert resumed["resumes"][0]["changes"] == [f"train.max_steps: {stop_at} -> null"]


def awkward_value(s: schema.Setting) -> tuple[str, object]:
    """A valid value that a widget with a fixed precision would have rounded."""
    spec = s.spec
    if spec.choices:
        choice = spec.choices[-1] if s.key != "train.device" else "cpu"
        return choice, choice
    if s.kind is float:
        if s.nullable:
            return spec.none_word, None
        text = "0.125" if spec.maximum is not None and spec.maximum <= 1 else "1e-5"
        return text, float(text)
    if s.kind is int:
        value = int(spec.minimum) + 3 if s.nullable else int(spec.minimum or 0) + 7
        return str(value), value
    if s.kind is bool:
        value = not schema.get_value(Project(), s.key)  # the one that is not the default
        return ("on" if value else "off"), value
    if s.kind is str and s.key == "data.auto_augment":  # free text: a policy timm reads
        return "rand-m7-mstd0.5-inc1", "rand-m7-mstd0.5-inc1"
    raise AssertionError(s.key)


def test_every_form_setting_round_trips_exactly_through_the_window(
    make_window, qtbot, demo_data: Path, tmp_path: Path
) -> None:
    w = make_window(make_project(demo_data))
    expected = {}
    shown = form_settings(Project, ("data", "train", "plan"))
    assert {s.key for s in shown} >= {"train.lr", "train.weight_decay", "data.val_split"}
    for s in shown:
        text, value = awkward_value(s)
        type_setting(qtbot, w, s.key, text)
        expected[s.key] = value
    # The two defects users saw: nothing is rounded to a widget's precision.
    type_setting(qtbot, w, "train.weight_decay", "1e-5")
    type_setting(qtbot, w, "data.val_split", "0.125")
    type_setting(qtbot, w, "train.layer_decay", "0.125")
    expected.update(
        {"train.weight_decay": 1e-5, "data.val_split": 0.125, "train.layer_decay": 0.125}
    )
    for key, value in expected.items():
        assert schema.get_value(w.project, key) == value, key
    path = tmp_path / "awkward.json"
    assert w._write_project(path)
    saved = Project.load(path)
    assert saved.to_dict() == w.project.to_dict()
    # Another window shows exactly these values in its forms and gets the same project back.
    other = make_window(saved)
    assert other.project.to_dict() == saved.to_dict()
    for key in expected:
        editor = next(
            f.editors[key]
            for f in (other.data_panel.form, other.settings_panel.form)
            if key in f.editors
        )
        widget = editor.widget
        value = schema.get_value(saved, key)
        if isinstance(widget, QComboBox):
            assert widget.currentText() == value, key
        elif isinstance(widget, QCheckBox):
            assert widget.isChecked() is value, key
        elif isinstance(widget, QSpinBox):
            assert widget.value() == (editor.null_value if value is None else value), key
        elif isinstance(value, str):
            assert widget.text() == value, key
        else:
            assert widget.text() == ("" if value is None else repr(value)), key
    assert not other.dirty


def test_bad_values_are_refused_where_they_are_typed(make_window, qtbot, demo_data: Path) -> None:
    w = make_window(make_project(demo_data))
    before = w.project.train.lr
    type_setting(qtbot, w, "train.lr", "-1")
    assert w.project.train.lr == before
    assert "Learning rate" in w.statusBar().currentMessage()
    type_setting(qtbot, w, "train.lr", "fast")
    assert w.project.train.lr == before and "not a number" in w.statusBar().currentMessage()
    # Undo walks back through settings and freeze edits alike.
    type_setting(qtbot, w, "train.lr", "2e-4")
    w.controller.set_preset("head-only")
    w.act_undo.trigger()
    assert w.controller.plan.preset == "train-all"
    w.act_undo.trigger()
    assert w.project.train.lr == before
    assert w.settings_panel.form.editor("train.lr").text() == repr(before)


def test_schedule_cells_keep_every_phase_field(make_window, qtbot, demo_data: Path) -> None:
    plan = FreezePlan(
        preset="head-only",
        schedule=[
            Phase(1, "train-last:1", freeze=["layer4.0.bn1"], unfreeze=[]),
            Phase(2, "train-all", freeze=["conv1"], unfreeze=["conv1.0"]),
        ],
    )
    w = make_window(make_project(demo_data, plan=plan))
    table = w.settings_panel.schedule.table
    assert table.rowCount() == 2 and table.item(1, 3).text() == "conv1.0"
    table.item(0, 1).setText("train-last:2")  # as a finished cell edit does
    phases = w.project.plan.schedule
    assert phases[0] == Phase(1, "train-last:2", ["layer4.0.bn1"], [])
    assert phases[1] == Phase(2, "train-all", ["conv1"], ["conv1.0"])
    table.item(1, 2).setText("conv1, bn1")
    assert w.project.plan.schedule[1].freeze == ["conv1", "bn1"]
    table.selectRow(0)
    qtbot.mouseClick(w.settings_panel.schedule.remove_phase, Qt.MouseButton.LeftButton)
    assert w.project.plan.schedule == [Phase(2, "train-all", ["conv1", "bn1"], ["conv1.0"])]
    w.act_undo.trigger()
    assert len(w.project.plan.schedule) == 2 and table.rowCount() == 2


def test_a_schedule_that_does_not_fit_the_model_stops_train_before_it_starts(
    make_window, qtbot, demo_data: Path, tmp_path: Path
) -> None:
    w = make_window(make_project(demo_data))
    qtbot.mouseClick(w.settings_panel.schedule.add_phase, Qt.MouseButton.LeftButton)
    w.settings_panel.schedule.table.item(0, 1).setText("train-lst:1")
    w.act_train.trigger()
    assert w.session is None
    assert "phase 1" in w.last_error[1] and "train-lst:1" in w.last_error[1]
    assert not (tmp_path / "runs").exists()
    w._open_dialog.close()


def test_the_tree_summary_and_status_bar_show_the_plan_in_effect(
    make_window, qtbot, demo_data: Path
) -> None:
    w = make_window(make_project(demo_data, epochs=2))
    qtbot.mouseClick(w.settings_panel.schedule.fine_tune, Qt.MouseButton.LeftButton)
    head = w.controller.tree.trainable_params
    seen: list[tuple[str, str, str]] = []
    total = w.controller.tree.total_params

    def watch(batch: list) -> None:
        for e in batch:
            if isinstance(e, ev.PlanApplied) and e.reason == "schedule":
                # The run controller saw this batch first: the views already follow it.
                seen.append((w.tree_panel.summary.text(), w.status_params.text(), e.plan.preset))

    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    w.session.events.connect(watch)
    result = wait_finished(qtbot, w, finished)
    assert result.reason == "completed"
    summary, status, preset = seen[0]
    assert preset == "train-all" and "plan: train-all" in summary
    assert status == f"trainable {human(total)} / {human(total)}"
    assert len(w.loss_plot.plan_marks) == 1  # the phase is marked on the loss plot
    # After the run: the project's plan again, and no live value measured under another plan.
    assert w.controller.plan.preset == "head-only"
    assert w.controller.tree.trainable_params == head < total
    assert "plan: head-only" in w.tree_panel.summary.text()
    layer1 = w.tree_model.index_for_path("layer1").siblingAtColumn(GRAD)
    # It trained in epoch 2 but is frozen in the plan shown: its bar is greyed and says so.
    assert layer1.data(BarRole) is not None and layer1.data(StaleRole) is True
    assert "earlier freeze plan" in layer1.data(Qt.ItemDataRole.ToolTipRole)
    assert "earlier freeze plan" in w.grad_plot.caption.text()


def test_live_values_go_when_the_plan_or_the_model_changes(
    make_window, qtbot, demo_data: Path
) -> None:
    w = make_window(make_project(demo_data, epochs=1))
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    wait_finished(qtbot, w, finished)
    fc = w.tree_model.index_for_path("fc").siblingAtColumn(GRAD)
    assert fc.data(BarRole) is not None and not fc.data(StaleRole)  # the plan still shown
    qtbot.mouseClick(w.tree_panel.head_only, Qt.MouseButton.LeftButton)
    assert fc.data(StaleRole) is True  # measured while the body trained: greyed
    w.act_undo.trigger()
    assert fc.data(StaleRole) is False  # the plan they were measured under, again
    assert w.loss_plot.steps.n > 0
    w.model_panel.search.setText("test_convnext")
    qtbot.keyClick(w.model_panel.search, Qt.Key.Key_Return)  # Enter takes the first match
    qtbot.waitUntil(lambda: w.preview_task is None, timeout=30_000)  # built in the background
    assert w.project.model.endswith("test_convnext")
    assert w.loss_plot.steps.n == 0  # the old model's curve is not this model's


def test_unticking_everything_during_a_run_is_refused_and_the_run_goes_on(
    make_window, qtbot, demo_data: Path
) -> None:
    w = make_window(make_project(demo_data, epochs=2))
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    pause_after(qtbot, w, 2)
    root = w.tree_model.index(0, 0)
    click_box(qtbot, w, "")  # the root row: untick everything
    assert "nothing to train" in w.statusBar().currentMessage()
    assert root.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    w.act_pause.trigger()
    result = wait_finished(qtbot, w, finished)
    assert result.reason == "completed" and result.epochs_completed == 2


def test_a_run_from_the_window_leaves_no_loader_processes(
    make_window, qtbot, demo_data: Path
) -> None:
    project = make_project(demo_data, epochs=1)
    project.data.workers = 1
    w = make_window(project)
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    assert wait_finished(qtbot, w, finished).reason == "completed"
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []


def test_a_runs_project_shows_its_recorded_edits_and_can_drop_them(
    make_window, qtbot, demo_data: Path
) -> None:
    from freezer_app.core.freeze import Edit

    plan = FreezePlan(edits=[Edit(5, "train-all", ["layer1"], []), Edit(9, "train-all")])
    w = make_window(make_project(demo_data, plan=plan))
    schedule = w.settings_panel.schedule
    assert not schedule.clear_edits.isHidden()
    assert "Replays 2 freeze edit(s)" in schedule.edits_note.text()
    assert "5, 9" in schedule.edits_note.text()
    qtbot.mouseClick(schedule.clear_edits, Qt.MouseButton.LeftButton)
    assert w.project.plan.edits == [] and schedule.clear_edits.isHidden()
    w.act_undo.trigger()
    assert len(w.project.plan.edits) == 2


def test_a_phase_that_does_not_fit_is_marked_where_it_is_typed(
    make_window, qtbot, demo_data: Path
) -> None:
    w = make_window(make_project(demo_data))
    schedule = w.settings_panel.schedule
    qtbot.mouseClick(schedule.add_phase, Qt.MouseButton.LeftButton)
    schedule.table.item(0, 2).setText("layer9")
    cell = schedule.table.item(0, 2)
    assert "layer9" in cell.toolTip() and "Phase 1" in cell.toolTip()
    assert "layer9" in w.statusBar().currentMessage()
    schedule.table.item(0, 2).setText("layer1")
    assert schedule.table.item(0, 2).toolTip() == ""


def test_undo_is_off_while_a_run_trains(make_window, qtbot, demo_data: Path) -> None:
    w = make_window(make_project(demo_data, epochs=3))
    qtbot.mouseClick(w.tree_panel.head_only, Qt.MouseButton.LeftButton)
    assert w.tree_panel.undo.isEnabled()
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    assert not w.tree_panel.undo.isEnabled() and not w.act_undo.isEnabled()
    wait_finished(qtbot, w, finished)
    assert w.tree_panel.undo.isEnabled()


def test_a_model_the_plan_does_not_fit_resets_the_plan_in_the_same_undoable_step(
    make_window, qtbot, demo_data: Path
) -> None:
    plan = FreezePlan(preset="head-only", unfreeze=["layer4.0"])
    w = make_window(make_project(demo_data, plan=plan))
    w.model_panel.search.setText("timm:test_vit")
    qtbot.keyClick(w.model_panel.search, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: w.preview_task is None, timeout=30_000)  # built in the background
    assert w.project.model == "timm:test_vit"
    assert w.project.plan.preset == "train-all" and w.project.plan.unfreeze == []
    assert "reset to train-all" in w.statusBar().currentMessage()
    assert "does not fit" not in w.tree_panel.summary.text()
    w.act_undo.trigger()  # both come back together
    assert w.project.model == "timm:test_resnet" and w.project.plan == plan
    qtbot.waitUntil(lambda: w.preview_task is None, timeout=30_000)
    assert "plan: head-only; unfreeze layer4.0" in w.tree_panel.summary.text()


def test_a_plan_that_does_not_fit_says_so_instead_of_counting(
    make_window, tmp_path: Path, demo_data: Path
) -> None:
    project = make_project(demo_data, plan=FreezePlan(freeze=["blocks.0"]))
    path = tmp_path / "misfit.json"
    project.save(path)
    w = make_window(make_project(demo_data))
    assert w.open_project(path)
    assert "does not fit this model" in w.tree_panel.summary.text()
    assert "blocks.0" in w.tree_panel.summary.text()


def test_resuming_a_run_asks_to_save_unsaved_changes_first(
    make_window, qtbot, demo_data: Path, monkeypatch
) -> None:
    from PySide6.QtWidgets import QFileDialog

    w = make_window(make_project(demo_data))
    type_setting(qtbot, w, "train.lr", "0.123")
    asked: list = []
    monkeypatch.setattr(
        QMessageBox,
        "question",
        lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.Cancel,
    )
    chosen: list = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: chosen.append(a) or "")
    w.act_resume_run.trigger()
    assert asked and not chosen  # cancelled before any folder was picked
    assert w.project.train.lr == 0.123 and w.dirty


def test_runs_of_a_runs_project_go_beside_it_not_inside_it(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch
) -> None:
    run = tmp_path / "runs" / "first"
    assert (
        main(
            [
                "train",
                "--model",
                "timm:test_resnet",
                "--data",
                str(demo_data),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--max-steps",
                "2",
                "--image-size",
                "32",
                "--workers",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    w = _window(qtbot, tmp_path, make_project(demo_data), monkeypatch)
    del w._runs_root  # the real rule, not the fixture's
    assert w.open_project(run / "project.json")
    assert w._runs_root() == tmp_path / "runs"
    w.project_ctl.undo_stack.setClean()
    w.close()
    w.deleteLater()


def test_undo_buttons_keep_their_size_and_name_the_command_in_a_tooltip(
    make_window, qtbot, demo_data: Path
) -> None:
    w = make_window(make_project(demo_data))
    width = w.width()
    w.tree_panel.expand_to_depth(2)
    panel = w.tree_panel
    menu = panel.menu_for(panel.view_index(w.tree_model.index_for_path("layer4.0.downsample")))
    next(a for a in menu.actions() if a.text() == "Train only this").trigger()
    assert panel.undo.text() == "Undo" and panel.undo.isEnabled()
    assert "Train only layer4.0.downsample" in panel.undo.toolTip()
    assert w.width() == width
    qtbot.mouseClick(panel.undo, Qt.MouseButton.LeftButton)
    assert w.controller.plan.freeze == [] and "Train only" in panel.redo.toolTip()


def test_save_as_adds_json_and_a_failed_start_keeps_the_last_plots(
    make_window, qtbot, demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    from PySide6.QtWidgets import QFileDialog

    w = make_window(make_project(demo_data, epochs=1))
    suggested: list[str] = []

    def save_dialog(parent, title, start, *rest):
        suggested.append(start)
        return str(tmp_path / "digits"), ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_dialog)
    w.act_save_as.trigger()
    assert (tmp_path / "digits.json").is_file() and w.project_path == tmp_path / "digits.json"
    # A new project is offered as *.freezer.json: the file type the desktop entry opens.
    assert suggested[0].endswith("project.freezer.json")
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    wait_finished(qtbot, w, finished)
    steps = w.loss_plot.steps.n
    assert steps > 0
    w.model_panel.pretrained.click()  # offline: this run cannot start
    finished.clear()
    w.act_train.trigger()
    qtbot.waitUntil(lambda: bool(finished) and w.session is None, timeout=60_000)
    assert finished[0] is None and w.loss_plot.steps.n == steps
    w._open_dialog.close()
