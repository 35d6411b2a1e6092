"""Progress a user reads while a run trains: epoch k of n, the step in the epoch, elapsed time
and an ETA, in the status bar and its progress bar (and the same numbers in core)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_project
from PySide6.QtCore import QSettings, QThreadPool
from PySide6.QtWidgets import QMessageBox

from freezer_app.core.progress import RunProgress, duration
from freezer_app.gui.main_window import MainWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_epoch_step_elapsed_and_eta_from_the_recent_rate() -> None:
    clock = Clock()
    p = RunProgress(clock)
    p.start(total_steps=40, steps_per_epoch=10, epochs=4)
    assert p.snapshot().eta_s is None
    clock.now += 5  # start-up: model build, first batch
    for step in range(1, 13):
        clock.now += 0.5
        p.on_step(step, images_per_s=64.0)
    now = p.snapshot()
    assert (now.epoch, now.step_in_epoch, now.fraction) == (2, 2, 12 / 40)
    # 28 steps left at 0.5 s a step (the recent rate, not the slow start).
    assert now.eta_s == pytest.approx(14.0)
    assert now.elapsed_s == pytest.approx(11.0)
    assert now.text() == "epoch 2/4 · step 2/10 · 64 images/s · 11 s elapsed · about 14 s left"
    assert "images/s" not in now.text(speed=False)

    # Paused for a minute: elapsed goes on, the ETA stands still, the rate is unchanged.
    p.set_paused(True)
    clock.now += 60
    paused = p.snapshot()
    assert paused.paused and paused.eta_s == pytest.approx(14.0)
    assert paused.elapsed_s == pytest.approx(71.0)
    p.set_paused(False)
    clock.now += 0.5
    p.on_step(13, 64.0)
    assert p.snapshot().eta_s == pytest.approx(13.5)
    # Between steps the estimate keeps counting down.
    clock.now += 2
    assert p.snapshot().eta_s == pytest.approx(11.5)


def test_a_resumed_run_counts_from_its_start_step() -> None:
    clock = Clock()
    p = RunProgress(clock)
    p.start(total_steps=40, steps_per_epoch=10, epochs=4, start_step=30)
    for step in range(31, 35):
        clock.now += 1.0
        p.on_step(step, 10.0)
    now = p.snapshot()
    assert (now.epoch, now.step_in_epoch) == (4, 4)
    assert now.eta_s == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (42.4, "42 s"), (187, "3:07"), (3729, "1:02:09")]
)
def test_durations_read_as_clock_times(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_status_bar_shows_progress_while_training(
    qtbot, tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    w.set_project(make_project(demo_data, epochs=500), None)
    w.show()
    qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
    w._runs_root = lambda: tmp_path / "runs"
    assert w.status_progress_bar.isHidden()
    w.act_train.trigger()
    bar = w.status_progress_bar
    qtbot.waitUntil(lambda: "left" in w.status_progress.text(), timeout=60_000)
    text = w.status_progress.text()
    assert text.startswith("epoch 1/500 · step ") and "elapsed" in text and "about" in text
    assert bar.isVisible() and bar.maximum() == 1000 and "images/s" in bar.toolTip()
    w.act_pause.trigger()
    qtbot.waitUntil(lambda: w.status_state.text() == "paused", timeout=60_000)
    w.stop_training()
    qtbot.waitUntil(lambda: w.session is None, timeout=60_000)
    assert bar.isHidden() and w.status_progress.text().startswith("last run: step ")
    w.project_ctl.undo_stack.setClean()
    w.close()
    QThreadPool.globalInstance().waitForDone(60_000)
