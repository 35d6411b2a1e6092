"""metrics.csv and TensorBoard event files beside the line logs, read back with TensorBoard's
own reader, and kept without duplicates across a resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import make_project

from freezer_app.core.run_folder import RunFolder, read_json_lines
from freezer_app.core.train import Trainer

pytest.importorskip("tensorboard")


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_every_run_writes_a_csv_and_tensorboard_events_that_survive_a_resume(
    demo_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    project = make_project(demo_data, epochs=2, max_steps=5, head_lr_mult=10.0)
    assert Trainer(project, run).run().reason == "step-limit"
    project = make_project(demo_data, epochs=2, head_lr_mult=10.0)
    result = Trainer(project, run, resume=True, resume_changes={"train.max_steps": None}).run()
    assert result.reason == "completed" and result.steps == 16
    metrics = read_json_lines(RunFolder(run).metrics).records
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # The CSV is the metrics log, row for row, the resume's steps once each.
    assert [(r["type"], int(r["step"])) for r in rows] == [(m["type"], m["step"]) for m in metrics]
    assert [int(r["step"]) for r in rows if r["type"] == "step"] == list(range(1, 17))
    assert float(rows[0]["loss"]) == pytest.approx(metrics[0]["loss"])
    epoch_rows = [r for r in rows if r["type"] == "epoch"]
    assert len(epoch_rows) == 2 and all(r["val_acc"] for r in epoch_rows)
    # Each group's learning rate, not only the first's: the head trains at 10×.
    assert metrics[0]["lrs"]["x10"] == pytest.approx(10 * metrics[0]["lrs"]["x1"])

    acc = events(run)
    tags = acc.Tags()["scalars"]
    loss = acc.Scalars("train/loss")
    assert sorted(e.step for e in loss) == list(range(1, 17))  # events after step 5 purged
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [8, 16]
    assert "lr/x10" in tags and "train/lr" in tags
    assert any(t.startswith("grad_norm/") for t in tags)
    assert any(t.startswith("update_norm/") for t in tags)
    texts = acc.Tags()["tensors"]
    assert any("frozen_check" in t for t in texts)
