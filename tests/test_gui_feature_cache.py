"""The window shows the feature cache's state: the Training form's two settings, and the line
under the run's plots, driven by real runs of a tiny model (pytest-qt, offscreen)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import close_windows, make_project
from PySide6.QtCore import QSettings
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import QComboBox, QMessageBox, QSpinBox

from freezer_app.core import events as ev
from freezer_app.core.freeze import Edit, FreezePlan
from freezer_app.core.project import Project
from freezer_app.gui.main_window import MainWindow
from freezer_app.gui.run_views import FeatureCacheView
from freezer_app.gui.worker import TrainingWorker


@pytest.fixture
def make_window(qtbot, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    windows: list[MainWindow] = []

    def make(project: Project) -> MainWindow:
        w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
        w.set_project(project, None)
        w.resize(1400, 900)
        w.show()
        qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
        w._runs_root = lambda: tmp_path / "runs"  # keep runs out of the user's folders
        windows.append(w)
        return w

    yield make
    close_windows(qtbot, windows)


class Seen:
    """After each batch of events the window drew: what the line and the status bar said."""

    def __init__(self, w: MainWindow) -> None:
        self.w = w
        self.events: list[object] = []
        self.after: list[tuple[list[object], str, str]] = []  # (batch, line, status message)

    def __call__(self, batch: list) -> None:
        self.events.extend(batch)
        self.after.append((batch, self.w.cache_view.text(), self.w.statusBar().currentMessage()))

    def cache_events(self) -> list[ev.FeatureCacheEvent]:
        return [e for e in self.events if isinstance(e, ev.FeatureCacheEvent)]

    def lines(self) -> list[str]:
        return [line for _batch, line, _status in self.after]


def train(qtbot, w: MainWindow) -> tuple[ev.Finished, Seen]:
    """Press Train and watch every batch the worker sends (after the run controller drew it)."""
    finished: list = []
    w.runFinished.connect(finished.append)
    w.act_train.trigger()
    assert w.session is not None
    seen = Seen(w)
    w.session.events.connect(seen)  # connected after the controller: sees what it drew
    qtbot.waitUntil(lambda: bool(finished) and w.session is None, timeout=120_000)
    assert finished[0] is not None and finished[0].reason == "completed"
    return finished[0], seen


def plain(tooltip: str) -> str:
    doc = QTextDocument()
    doc.setHtml(tooltip)
    return doc.toPlainText()


def test_the_run_area_shows_the_cache_filling_then_filled_and_a_new_run_resets_it(
    make_window, qtbot, demo_data: Path
) -> None:
    w = make_window(make_project(demo_data, epochs=2, plan=FreezePlan(preset="head-only")))
    line = w.cache_view
    assert line.text() == FeatureCacheView.IDLE and line.isVisible()
    _result, seen = train(qtbot, w)
    first, *_, last = seen.cache_events()
    assert first.used and first.images < first.total
    # Filling during the first epoch, then what the cache holds once it is full.
    assert "Feature cache: after global_pool.flatten · filling: 0 of 150 images" in seen.lines()
    assert last.used and last.images == last.total == 150 and last.fill_seconds is not None
    text = line.text()
    assert text.startswith("Feature cache: after global_pool.flatten · 150 images · ")
    assert " KB RAM · filled in " in text and text.endswith(" s")
    assert plain(line.toolTip()) == last.message and "later epochs skip" in last.message
    assert last.message in w.log.toPlainText()  # the LogEvent with the same text

    # Feature cache off in the Training form; the next run clears the line when it starts.
    combo = w.settings_panel.form.editor("train.feature_cache")
    assert isinstance(combo, QComboBox)
    combo.setCurrentIndex(combo.findText("off"))
    assert w.project.train.feature_cache == "off"
    w.project_ctl.note({"train.epochs": 1})
    _result, seen = train(qtbot, w)
    started = next(
        i for i, (b, _l, _s) in enumerate(seen.after) if b and isinstance(b[-1], ev.RunStarted)
    )
    assert seen.after[started][1] == FeatureCacheView.IDLE
    (off,) = seen.cache_events()
    assert not off.used and "train.feature_cache" in off.reason
    assert line.text() == f"Feature cache: not used — {off.reason}"
    assert plain(line.toolTip()) == off.message


def test_a_mid_run_unfreeze_shows_the_fallback_in_the_line_and_the_status_bar(
    make_window, qtbot, demo_data: Path
) -> None:
    # Head only, then from step 12 (in epoch 2) everything trains: nothing left to cache.
    plan = FreezePlan(preset="head-only", edits=[Edit(step=12, preset="train-all")])
    w = make_window(make_project(demo_data, epochs=2, plan=plan))
    _result, seen = train(qtbot, w)
    events = seen.cache_events()
    assert events[0].used and (events[-1].step, events[-1].used) == (12, False)
    _batch, line, status = next(
        after for after in seen.after if any(e is events[-1] for e in after[0])
    )
    assert line.startswith(
        "Feature cache: not used from step 12 — the plan trains part of the cached prefix"
    )
    assert status == events[-1].message  # shown briefly where the user is looking
    assert w.cache_view.text() == line and plain(w.cache_view.toolTip()) == events[-1].message
    # Shown apart from the start's quiet "not used": a notice colour.
    assert "color" in w.cache_view.styleSheet()


def test_the_worker_forwards_cache_events_at_once(qtbot, tmp_path: Path, demo_data: Path) -> None:
    worker = TrainingWorker(make_project(demo_data), tmp_path / "run")
    batches: list[list] = []
    worker.events.connect(batches.append)
    worker._on_event(ev.StepEvent(1, 0, 1.0, 1e-3, 10.0))  # the first is always due
    worker._on_event(ev.StepEvent(2, 0, 1.0, 1e-3, 10.0))  # throttled: waits for the next
    event = ev.FeatureCacheEvent(3, False, "", "why", 0, 150, 0, 0, None, "", False, "msg")
    worker._on_event(event)
    assert batches[-1][-1] is event and len(batches[-1]) == 2


def test_the_training_form_has_the_two_feature_cache_settings(
    make_window, qtbot, demo_data: Path
) -> None:
    w = make_window(make_project(demo_data))
    form = w.settings_panel.form
    w.left.setCurrentWidget(w.settings_panel)
    mode, budget = form.editor("train.feature_cache"), form.editor("train.feature_cache_budget")
    assert form.layout_.labelForField(mode).text() == "Feature cache"
    assert form.layout_.labelForField(budget).text() == "Feature cache memory"
    assert isinstance(mode, QComboBox) and isinstance(budget, QSpinBox)
    assert [mode.itemText(i) for i in range(mode.count())] == ["auto", "off"]
    assert mode.currentText() == "auto" and budget.text() == "auto"  # null: auto
    assert mode.isVisible() and budget.isVisible()
    assert "frozen prefix" in mode.toolTip() and "train.feature_cache" in mode.toolTip()
    assert "MB" in budget.toolTip() and "'auto': up to a quarter" in budget.toolTip()
    budget.setValue(512)
    assert w.project.train.feature_cache_budget == 512 and budget.text() == "512 MB"
    budget.setValue(budget.minimum())
    assert w.project.train.feature_cache_budget is None and budget.text() == "auto"
