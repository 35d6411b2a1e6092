"""The window running a project in several torchrun processes (as with "all N GPUs"), here 2
gloo processes on the CPU: rank 0's events reach the same plots and tree, and Pause, a plan
edit and Stop reach every process."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Qt
from test_gui import _index, type_setting, window  # noqa: F401 - the window fixture

from freezer_app.core import events as ev
from freezer_app.core.run_folder import RunFolder, read_json_lines
from freezer_app.core.train import launcher
from freezer_app.gui.main_window import MainWindow


def test_a_run_in_two_processes_is_watched_paused_edited_and_stopped_from_the_window(
    window: MainWindow,  # noqa: F811
    qtbot,
    monkeypatch,
    tmp_path: Path,
) -> None:
    # What "all 2 GPUs" does on a machine with two, with the CPU standing in for them.
    monkeypatch.setattr(launcher, "processes_for", lambda device: 2)
    type_setting(qtbot, window, "train.epochs", "500")
    seen: list = []
    finished: list = []
    window.runFinished.connect(finished.append)
    window.act_train.trigger()
    assert window.session is not None
    window.session.events.connect(seen.extend)
    qtbot.waitUntil(lambda: window.loss_plot.steps.n >= 3, timeout=120_000)
    started = next(e for e in seen if isinstance(e, ev.RunStarted))
    assert started.processes == 2 and started.global_batch == 32
    assert "2× cpu" in window.status_device.text()
    # Telemetry from rank 0: frozen layers show exactly zero gradient in the tree.
    qtbot.waitUntil(lambda: any(isinstance(e, ev.TelemetryEvent) for e in seen), timeout=60_000)

    window.act_pause.trigger()
    qtbot.waitUntil(lambda: window.status_state.text() == "paused", timeout=60_000)
    paused_at = window.loss_plot.steps.n
    window.tree_model.setData(
        _index(window, "layer1"), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole
    )
    qtbot.wait(1500)
    assert window.loss_plot.steps.n == paused_at, "every process waits while paused"
    window.act_pause.trigger()
    qtbot.waitUntil(
        lambda: any(isinstance(e, ev.PlanApplied) and e.reason == "edit" for e in seen),
        timeout=60_000,
    )
    window.act_stop.trigger()
    qtbot.waitUntil(lambda: bool(finished) and window.session is None, timeout=120_000)
    result = finished[0]
    assert result.reason == "stopped" and result.frozen_check_passed is True
    run = RunFolder(window.run_dir)
    assert run.last_checkpoint.exists()
    # The edit is part of the run's timeline, as in one process.
    edits = json.loads(run.project.read_text())["plan"]["edits"]
    assert len(edits) == 1 and any("layer1" in f for f in edits[0]["freeze"])
    assert [p["reason"] for p in read_json_lines(run.plans).records] == ["start", "edit"]
    assert window.act_train.isEnabled()


def test_the_device_setting_offers_all_gpus_when_there_are_several(qtbot, monkeypatch) -> None:
    import torch

    from freezer_app.core import settings
    from freezer_app.core.project import Project
    from freezer_app.gui.forms import ChoiceEditor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    committed: list = []
    editor = ChoiceEditor(
        settings.find(Project, "train.device"), lambda setting, value: committed.append(value)
    )
    combo = editor.widget
    qtbot.addWidget(combo)
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert "all 4 GPUs (cuda:all)" in labels and "cuda:3" in labels
    combo.setCurrentIndex(labels.index("all 4 GPUs (cuda:all)"))
    assert committed[-1] == "cuda:all"  # the setting's value, not the label
    assert launcher.processes_for("cuda:all") == 4 and launcher.processes_for("cuda:0") == 1
    editor.show("cpu")
    assert combo.currentText() == "cpu"
