"""Resume that cannot go wrong, and a run's lifetimes: only safe settings change on resume, a
step-limited run resumes to the end of its epochs with the losses of an uninterrupted run, the
checkpoint does not depend on where the starting bundle lives, optimizer state is restored by
name, paused time is not training time, and data-loader workers end with their run."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, make_project
from torch import nn

from freezer_app.cli import main
from freezer_app.core import events as ev
from freezer_app.core.run_folder import read_jsonl
from freezer_app.core.train import Trainer


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "timm:test_resnet",
        "--data",
        str(data),
        "--epochs",
        "2",
        "--out",
        str(out),
        "--quiet",
        *FAST,
        *extra,
    ]


def _steps(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]


def test_resume_refuses_settings_that_cannot_change(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(_train_args(demo_data, run, "--max-steps", "2")) == 0
    before = (run / "project.json").read_text()
    for flag, value in (("--layer-decay", "0.75"), ("--lr", "0.1")):
        capsys.readouterr()
        code = main(["train", "--resume", str(run), flag, value, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert flag in err and "Traceback" not in err
        assert "--epochs" in err and "--max-steps" in err and "--early-stop" in err
    # Nothing was changed or trained by the refused resumes.
    assert (run / "project.json").read_text() == before
    assert len(_steps(run)) == 2


def test_a_step_limited_run_resumes_to_the_end_with_the_uninterrupted_losses(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_train_args(demo_data, full)) == 0
    assert main(_train_args(demo_data, part, "--max-steps", "5")) == 0
    assert [r["step"] for r in _steps(part)] == [1, 2, 3, 4, 5]
    code = main(["train", "--resume", str(part), "--quiet"])
    assert code == 0, capsys.readouterr().err
    steps = _steps(part)
    assert [r["step"] for r in steps] == list(range(1, 17))  # to the end of its epochs
    assert [r["loss"] for r in steps] == [r["loss"] for r in _steps(full)]  # bit for bit
    assert [r["lr"] for r in steps] == [r["lr"] for r in _steps(full)]
    project = json.loads((part / "project.json").read_text())
    assert project["resumes"] == [{"step": 5, "changes": ["train.max_steps: 5 -> null"]}]
    assert project["train"]["max_steps"] is None


def test_resume_works_after_the_starting_bundle_moved(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, bundle = tmp_path / "first", tmp_path / "bundle"
    assert main(_train_args(demo_data, first, "--epochs", "1")) == 0
    assert main(["export", str(first), "--out", str(bundle)]) == 0
    second = tmp_path / "second"
    args = _train_args(demo_data, second, "--epochs", "1", "--max-steps", "3")
    args[args.index("timm:test_resnet")] = str(bundle)
    assert main(args) == 0
    shutil.move(str(bundle), str(tmp_path / "moved"))
    capsys.readouterr()
    code = main(["train", "--resume", str(second), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert [r["step"] for r in _steps(second)] == list(range(1, 9))


def test_optimizer_state_is_restored_by_parameter_name() -> None:
    from freezer_app.core.train.checkpoint import (
        load_named_optimizer_state,
        named_optimizer_state,
    )

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    params = dict(model.named_parameters())
    # Saved with one group per layer...
    first = torch.optim.AdamW(
        [
            {"params": [params["0.weight"], params["0.bias"]]},
            {"params": [params["2.weight"], params["2.bias"]], "lr": 0.1},
        ]
    )
    model(torch.randn(5, 4)).sum().backward()
    first.step()
    saved = named_optimizer_state(first, model)
    assert set(saved) == set(params)
    # ... restored into another layout: decay/no-decay groups in another order, one
    # parameter frozen (not in the optimizer), as layer decay or a resumed plan may give.
    second = torch.optim.AdamW(
        [
            {"params": [params["2.bias"], params["0.bias"]], "weight_decay": 0.0},
            {"params": [params["2.weight"]], "lr": 0.1},
        ]
    )
    missing = load_named_optimizer_state(second, model, saved)
    assert missing == ["0.weight"]  # saved, but not trained now
    for name in ("0.bias", "2.weight", "2.bias"):
        p = params[name]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(second.state[p][key], first.state[p][key]), (name, key)
    assert params["0.weight"] not in second.state
    # The group settings are the new optimizer's, not the saved ones.
    assert [g["weight_decay"] for g in second.param_groups] == [0.0, 0.01]


def test_paused_time_is_not_training_time(demo_data: Path, tmp_path: Path) -> None:
    control = ev.RunControl()
    seen: dict[object, float] = {}

    def on_event(event: object) -> None:
        now = time.monotonic()
        if isinstance(event, ev.RunStarted):
            seen["start"] = now
        if isinstance(event, ev.StepEvent):
            seen["last step"] = now
            if event.step == 2:
                control.pause()
                threading.Timer(1.0, control.resume).start()
        if isinstance(event, ev.PausedEvent):
            seen[event.paused] = now

    result = Trainer(
        make_project(demo_data, epochs=1), tmp_path / "run", on_event=on_event, control=control
    ).run()
    assert result.reason == "completed"
    paused_for = seen[False] - seen[True]
    assert paused_for >= 0.9
    (epoch,) = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    # From the start to the epoch's last step: training time plus the pause. However slow the
    # machine, the epoch's seconds are that time less the pause.
    wall = seen["last step"] - seen["start"]
    assert epoch["seconds"] < wall - paused_for + 0.2, (epoch, wall, paused_for)
    assert epoch["images_per_s"] == pytest.approx(120 / epoch["seconds"])


def test_data_loader_workers_end_when_the_run_ends(demo_data: Path, tmp_path: Path) -> None:
    project = make_project(demo_data, epochs=1)
    project.data.workers = 1
    # Kept alive, as the window keeps its worker: the processes must not live as long as it.
    trainer = Trainer(project, tmp_path / "run")
    result = trainer.run()
    assert result.reason == "completed"
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert multiprocessing.active_children() == []
    assert trainer.parts is not None


def test_a_run_stopped_before_its_step_limit_keeps_it(demo_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    control = ev.RunControl()

    def stop_at_3(event: object) -> None:
        if isinstance(event, ev.StepEvent) and event.step == 3:
            control.stop()  # as Ctrl-C does

    project = make_project(demo_data, epochs=2, max_steps=12)
    assert Trainer(project, run, on_event=stop_at_3, control=control).run().reason == "stopped"
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert [r["step"] for r in _steps(run)] == list(range(1, 13))  # to its limit, not past it
    assert json.loads((run / "project.json").read_text())["resumes"][0]["changes"] == []


def test_resume_refuses_limits_that_leave_nothing_to_train(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(_train_args(demo_data, run, "--max-steps", "6")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "3"]) == 2
    assert "at step 6" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # to the end: 2 epochs
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "completed 2 of 2 epoch(s)" in err and "--epochs above 2" in err
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    assert len(_steps(run)) == 24


def test_a_new_run_of_a_resumed_runs_project_starts_without_its_resume_records(
    demo_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert main(_train_args(demo_data, run, "--max-steps", "4")) == 0
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "project.json").read_text())["resumes"]
    again = tmp_path / "again"
    assert main(["train", str(run / "project.json"), "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "project.json").read_text())["resumes"] == []
