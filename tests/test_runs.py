"""Runs side by side: core's listing of run folders, `freezer-app runs`, and the window's Runs
tab (overlaid curves, open, resume, delete to the trash)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_project

from freezer_app.cli import main
from freezer_app.core import events as ev
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.run_folder import RunLock
from freezer_app.core.run_history import list_runs, load_curves, plan_summary, read_run
from freezer_app.core.train import Trainer


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> Path:
    """Two real runs with different freeze plans (one finished, one stopped by its step
    limit), a damaged folder, an empty folder and an exported bundle (not runs)."""
    root = tmp_path_factory.mktemp("history") / "runs"
    head = make_project(
        demo_data, epochs=2, plan=FreezePlan(preset="head-only"), feature_cache="off"
    )
    assert Trainer(head, root / "head-20260101-120000").run().reason == "completed"
    last = make_project(
        demo_data,
        epochs=2,
        max_steps=10,
        plan=FreezePlan(preset="train-last:1"),
        feature_cache="off",
    )
    assert Trainer(last, root / "last-20260102-120000").run().reason == "step-limit"
    broken = root / "broken-20260103-120000"
    broken.mkdir()
    (broken / "project.json").write_text('{"model": "timm:test_res')  # cut off mid-write
    (broken / "metrics.jsonl").write_text('{"type": "step", "st')
    (root / "empty").mkdir()
    (root / "bundle").mkdir()
    (root / "bundle" / "config.json").write_text("{}")
    return root


def _by_name(root: Path) -> dict[str, object]:
    return {r.name: r for r in list_runs(root)}


def test_listing_reads_each_run_and_marks_a_damaged_one(runs_root: Path) -> None:
    runs = list_runs(runs_root)
    # Newest first; folders that hold nothing of a run are not listed.
    assert [r.name for r in runs] == [
        "broken-20260103-120000",
        "last-20260102-120000",
        "head-20260101-120000",
    ]
    broken, last, head = runs
    assert broken.status == "unreadable" and "project.json" in broken.detail

    assert head.model == "timm:test_resnet" and head.plan == "head-only"
    assert (head.epochs_done, head.epochs_planned, head.steps) == (2, 2, 16)
    assert head.status == "finished" and head.frozen_check == "passed"
    assert head.best_val_acc is not None and 0.0 <= head.best_val_acc <= 1.0
    assert head.started is not None and head.started.year == 2026

    assert last.plan == "train-last:1"
    assert (last.epochs_done, last.steps) == (1, 10)
    assert last.status == "stopped" and "step limit" in last.detail

    curves = load_curves(runs_root / "head-20260101-120000")
    assert curves.steps.tolist() == list(range(1, 17))
    assert curves.losses.size == 16 and curves.val_accs.size == 2
    assert curves.epoch_steps.tolist() == [8, 16]
    assert load_curves(runs_root / "broken-20260103-120000").steps.size == 0


def test_status_of_killed_running_and_damaged_runs(runs_root: Path, tmp_path: Path) -> None:
    head = runs_root / "head-20260101-120000"
    killed = tmp_path / "killed"
    shutil.copytree(head, killed)
    # As a run killed before its end leaves it: no final weights, no recorded ending.
    (killed / "model.safetensors").unlink()
    (killed / "outcome.json").unlink()
    info = read_run(killed).info
    assert info.status == "crashed" and "without saving" in info.detail

    running = tmp_path / "running"
    shutil.copytree(head, running)
    lock = RunLock(running)
    lock.acquire()
    try:
        if sys.platform != "win32":
            assert read_run(running).info.status == "running"
    finally:
        lock.release()
    assert read_run(running).info.status == "finished"

    damaged = tmp_path / "damaged"
    shutil.copytree(head, damaged)
    lines = (damaged / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, "{not json")
    (damaged / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    info = read_run(damaged).info
    assert info.status == "finished" and info.steps == 16 and "damaged" in info.detail

    # A record whose numbers were edited away is left out and counted, not a raw exception.
    odd = tmp_path / "odd"
    shutil.copytree(head, odd)
    with (odd / "metrics.jsonl").open("a") as f:
        f.write('{"type": "epoch", "epoch": "x"}\n{"type": "step", "step": null}\n')
    info = read_run(odd).info
    assert info.status == "finished" and info.steps == 16
    assert "2 record(s) of metrics.jsonl without a step or epoch number" in info.detail


def test_plan_summary_words_the_timeline() -> None:
    plan = FreezePlan(preset="head-only", unfreeze=["layer4"]).to_dict()
    assert plan_summary(plan) == FreezePlan(preset="head-only", unfreeze=["layer4"]).describe()
    plan["schedule"] = [{"epoch": 1, "preset": "train-all"}]
    plan["edits"] = [{"step": 3, "preset": "train-all", "freeze": [], "unfreeze": []}]
    assert plan_summary(plan) == "head-only; unfreeze layer4 → train-all after epoch 1 (+1 edit)"


def test_cli_lists_runs_as_json_and_as_a_table(
    runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", str(runs_root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][1:] == ["last-20260102-120000", "head-20260101-120000"]
    head = rows[2]
    assert head["plan"] == "head-only" and head["status"] == "finished"
    assert head["epochs_done"] == 2 and head["frozen_check"] == "passed"
    assert set(head) >= {"model", "started", "best_val_acc", "path", "epochs_planned"}

    assert main(["runs", str(runs_root)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:3] == ["RUN", "MODEL", "PLAN"] and "STATUS" in header
    assert "stopped (step limit 10)" in out and "unreadable" in out

    # One run folder by itself.
    assert main(["runs", str(runs_root / "head-20260101-120000"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_cli_says_when_the_folder_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------- the window
@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, runs_root: Path, monkeypatch):
    from PySide6.QtCore import QSettings, QThreadPool
    from PySide6.QtWidgets import QMessageBox

    from freezer_app.gui.main_window import MainWindow

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    root = tmp_path / "runs"
    shutil.copytree(runs_root, root)  # tests delete and resume runs: each its own copy
    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    w.set_project(make_project(demo_data, epochs=2, feature_cache="off"), None)
    w.resize(1400, 900)
    w.show()
    qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
    w._runs_root = lambda: root
    yield w
    if w.session is not None:
        w.stop_training()
        qtbot.waitUntil(lambda: w.session is None, timeout=60_000)
    w.project_ctl.undo_stack.setClean()
    w.close()
    QThreadPool.globalInstance().waitForDone(60_000)
    w.deleteLater()


def _show_runs(qtbot, w) -> object:
    panel = w.runs_panel
    w.right.setCurrentWidget(panel)
    qtbot.waitUntil(lambda: panel.task is None and panel.model.rowCount() == 3, timeout=30_000)
    return panel


def _row_of(panel, name: str) -> int:
    for row in range(panel.proxy.rowCount()):
        if panel.proxy.index(row, 0).data() == name:
            return row
    raise AssertionError(name)


def test_runs_tab_overlays_the_selected_runs_with_a_legend(window, qtbot) -> None:
    panel = _show_runs(qtbot, window)
    shown = {panel.proxy.index(r, 0).data(): panel.proxy.index(r, 7).data() for r in range(3)}
    assert shown == {
        "head-20260101-120000": "finished",
        "last-20260102-120000": "stopped",
        "broken-20260103-120000": "unreadable",
    }
    assert panel.proxy.index(_row_of(panel, "head-20260101-120000"), 2).data() == "head-only"

    panel.select_rows(
        [_row_of(panel, "head-20260101-120000"), _row_of(panel, "last-20260102-120000")]
    )
    curves = [item for item in panel._loss_items if item.isVisible()]
    assert len(curves) == 2
    assert sorted(len(c.getData()[0]) for c in curves) == [10, 16]
    assert len({c.opts["pen"].color().name() for c in curves}) == 2  # a colour each
    labels = [label.text for _sample, label in panel.legend.items]
    assert len(labels) == 2
    assert any(t.startswith("head-only") for t in labels)
    assert any(t.startswith("train-last:1") for t in labels)
    assert sum(1 for item in panel._acc_items if item.isVisible()) == 2

    # One run selected: the other's curves are hidden, the items reused (not re-created).
    items = list(panel._loss_items)
    panel.select_rows([_row_of(panel, "head-20260101-120000")])
    assert panel._loss_items == items
    assert len(panel.legend.items) == 1
    assert sum(1 for item in panel._loss_items if item.isVisible()) == 1


def test_open_shows_the_run_as_it_was(window, qtbot) -> None:
    panel = _show_runs(qtbot, window)
    panel.select_rows([_row_of(panel, "head-20260101-120000")])
    assert panel.open_button.isEnabled() and not panel.resume_button.isEnabled()
    panel.open_button.click()
    qtbot.waitUntil(lambda: window.loss_plot.steps.n == 16, timeout=30_000)
    assert window.right.currentWidget() is window.loss_plot
    assert window.loss_plot.val_accs.n == 2
    assert window.grad_plot.names and window.heatmap._cols  # telemetry replayed
    assert window.frozen_view.list.count() >= 2
    assert "opened run" in window.log.toPlainText()
    # Its evaluation, on its own validation images.
    view = window.evaluate_view
    assert view.source == window._runs_root() / "head-20260101-120000"
    qtbot.waitUntil(lambda: view.task is None and view.evaluation is not None, timeout=60_000)


def test_resume_from_the_list_continues_the_run(window, qtbot) -> None:
    panel = _show_runs(qtbot, window)
    panel.select_rows([_row_of(panel, "last-20260102-120000")])
    assert panel.resume_button.isEnabled()
    finished: list[object] = []
    window.runFinished.connect(finished.append)
    panel.resume_button.click()
    assert window.session is not None
    assert window.run_dir == window._runs_root() / "last-20260102-120000"
    assert not panel.delete_button.isEnabled()  # never the folder a run trains in
    qtbot.waitUntil(lambda: bool(finished) and window.session is None, timeout=60_000)
    qtbot.waitUntil(lambda: panel.task is None, timeout=30_000)  # listed again


def test_delete_asks_then_moves_the_folder_to_the_trash(window, qtbot, monkeypatch) -> None:
    from PySide6.QtCore import QFile
    from PySide6.QtWidgets import QMessageBox

    panel = _show_runs(qtbot, window)
    folder = window._runs_root() / "last-20260102-120000"
    trashed: list[str] = []
    monkeypatch.setattr(QFile, "moveToTrash", lambda path: (trashed.append(path), (True, ""))[1])
    panel.select_rows([_row_of(panel, "last-20260102-120000")])

    asked: list[str] = []
    answer = QMessageBox.StandardButton.No

    def question(_parent, _title, text, *_args):
        asked.append(text)
        return answer

    monkeypatch.setattr(QMessageBox, "question", question)
    assert not panel.delete_current()  # "No": nothing moves
    assert asked and str(folder) in asked[0] and not trashed

    answer = QMessageBox.StandardButton.Yes
    assert panel.delete_current()
    assert trashed == [str(folder)]


def test_delete_refuses_a_running_run(window, qtbot, monkeypatch) -> None:
    from PySide6.QtWidgets import QMessageBox

    panel = _show_runs(qtbot, window)
    folder = window._runs_root() / "head-20260101-120000"
    lock = RunLock(folder)
    lock.acquire()
    told: list[str] = []
    monkeypatch.setattr(QMessageBox, "information", lambda _p, _t, text: told.append(text))
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a: pytest.fail("a running run must not be offered")
    )
    try:
        panel.refresh()
        qtbot.waitUntil(lambda: panel.task is None, timeout=30_000)
        panel.select_rows([_row_of(panel, "head-20260101-120000")])
        if sys.platform == "win32":
            return
        assert panel.proxy.index(_row_of(panel, "head-20260101-120000"), 7).data() == "running"
        assert not panel.delete_button.isEnabled()
        assert not panel.delete_current() and told
        assert folder.exists()
    finally:
        lock.release()


def test_screenshot_of_the_runs_tab(runs_root: Path, tmp_path: Path) -> None:
    """`--tab runs` renders the Runs panel with the two newest runs overlaid."""
    shot = tmp_path / "runs.png"
    project = runs_root / "head-20260101-120000" / "project.json"
    command = ["gui", str(project), "--screenshot", str(shot), "--tab", "runs"]
    result = subprocess.run(
        [sys.executable, "-m", "freezer_app", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert shot.stat().st_size > 10_000


def test_a_failed_run_reads_as_failed_with_its_error(demo_data: Path, tmp_path: Path) -> None:
    def fail_at_2(event: object) -> None:
        if isinstance(event, ev.StepEvent) and event.step == 2:
            raise RuntimeError("the disk went away")

    project = make_project(demo_data, epochs=1, feature_cache="off")
    assert Trainer(project, tmp_path / "failed", on_event=fail_at_2).run().reason == "error"
    info = read_run(tmp_path / "failed").info
    assert info.status == "failed" and "the disk went away" in info.detail
    outcome = json.loads((tmp_path / "failed" / "outcome.json").read_text())
    assert outcome["reason"] == "error" and outcome["step"] >= 2


def test_the_runs_tab_follows_the_project_and_a_resume_keeps_its_folder(
    qtbot, tmp_path: Path, demo_data: Path, runs_root: Path, monkeypatch
) -> None:
    from PySide6.QtCore import QSettings, QThreadPool
    from PySide6.QtWidgets import QMessageBox

    from freezer_app.gui.main_window import MainWindow

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs_root, a / "runs")
    for folder in (a, b):
        make_project(demo_data, epochs=2, feature_cache="off").save(folder / "project.json")
    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    w.show()
    try:
        assert w.open_project(a / "project.json")
        panel = w.runs_panel
        w.right.setCurrentWidget(panel)
        qtbot.waitUntil(lambda: panel.task is None and panel.model.rowCount() == 3, timeout=30_000)
        assert w.open_project(b / "project.json")  # the tab on screen: B's (no) runs now
        qtbot.waitUntil(lambda: panel.task is None and panel.model.rowCount() == 0, timeout=30_000)
        assert str(b / "runs") in panel.where.text()
        # A resumed run's project has no file: its runs folder stays the run's own.
        qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
        assert w.resume_run(a / "runs" / "last-20260102-120000")
        assert w._runs_root() == a / "runs"
        w.stop_training()
        qtbot.waitUntil(lambda: w.session is None, timeout=60_000)
    finally:
        w.project_ctl.undo_stack.setClean()
        w.close()
        QThreadPool.globalInstance().waitForDone(60_000)
        w.deleteLater()


def test_an_evaluation_is_shown_only_under_the_model_it_is_of(
    qtbot, runs_root: Path, demo_data: Path
) -> None:
    """Evaluate an old run, then (say, as a run finishes) another: the first stops and the
    result shown is the second's, under its name."""
    from freezer_app.gui.evaluate_view import EvaluateView

    view = EvaluateView()
    qtbot.addWidget(view)
    shown: list[object] = []
    view.show_evaluation = shown.append  # type: ignore[method-assign]
    old, new = runs_root / "head-20260101-120000", runs_root / "last-20260102-120000"
    view.set_source(old, str(demo_data))
    view.run()
    assert view.task is not None
    view.set_source(new, str(demo_data))
    view.run()
    qtbot.waitUntil(lambda: view.task is None and bool(shown), timeout=60_000)
    (shown_one,) = shown
    assert new.name in str(shown_one.model) and old.name not in str(shown_one.model)  # type: ignore[attr-defined]
    assert new.name in view.model_label.text()
