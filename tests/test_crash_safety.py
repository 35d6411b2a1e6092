"""Faults a run survives: kills (SIGKILL, SIGTERM), torn log lines, a full disk, a second
process on the same run folder, and models or names that would otherwise go wrong quietly."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_project

from freezer_app.cli import main
from freezer_app.core import events as ev
from freezer_app.core.errors import FreezerError, ProjectError
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.run_folder import new_run_dir, read_json_lines, read_jsonl
from freezer_app.core.train import Trainer

FAST = ["--image-size", "32", "--batch-size", "16", "--workers", "0", "--quiet"]


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--model", "timm:test_resnet", "--data", str(data), "--out", str(out)]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "freezer_app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_steps(run: Path, steps: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        done = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]
        if (run / "checkpoints" / "last.pt").exists() and len(done) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not get that far in time")


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]


def test_sigterm_saves_a_checkpoint_and_exits_143_with_the_resume_command(
    demo_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = _start([*_train_args(demo_data, run), "--epochs", "50", *FAST])
    _wait_for_steps(run, 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"freezer-app train --resume {run}" in err
    stopped = json.loads((run / "project.json").read_text())
    assert stopped["train"]["epochs"] == 50
    assert (run / "checkpoints" / "last.pt").exists()
    assert main(["train", "--resume", str(run), "--epochs", "4", "--quiet"]) == 0


def test_a_killed_run_resumes_with_every_record_exactly_once(
    demo_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = _start([*_train_args(demo_data, run), "--epochs", "3", "--telemetry-every", "1", *FAST])
    _wait_for_steps(run, 12, proc)  # past the first epoch's checkpoint, mid-epoch 2
    proc.kill()  # SIGKILL: no handler runs, buffered records are lost
    proc.wait(timeout=60)
    # A kill mid-write leaves a torn last line: readers skip it, resume drops it.
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"type": "step", "step": 99, "lo')
    torn = read_json_lines(run / "metrics.jsonl")
    assert torn.torn == 1 and "unfinished last line" in torn.note()
    # What a kill during a checkpoint write leaves: a temporary name of the dead process.
    from freezer_app.core import files

    leftover = run / "checkpoints" / f".last.pt{files.TEMP_TAG}{files._HOST}-{proc.pid}-0badf00d"
    leftover.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert not leftover.exists()
    assert _steps(run) == list(range(1, 25))  # 3 epochs of 8 steps, each once
    epochs = [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs == [1, 2, 3]
    assert [r["epoch"] for r in read_jsonl(run / "frozen_check.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(run / "telemetry.jsonl")] == list(range(1, 25))
    # Export reads the logs too, torn line or not.
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"type": "ep')
    assert main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 0


def test_a_second_process_on_the_same_run_folder_is_refused(
    demo_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert main([*_train_args(demo_data, run), "--epochs", "1", "--max-steps", "2", *FAST]) == 0
    proc = _start(["train", "--resume", str(run), "--epochs", "60", "--quiet"])
    try:
        _wait_for_steps(run, 4, proc)
        with pytest.raises(ProjectError, match="in use by Freezer process"):
            Trainer(
                make_project(demo_data), run, resume=True, resume_changes={"train.epochs": 60}
            ).run()
    finally:
        proc.kill()
        proc.wait(timeout=60)
    # The kernel released the lock with the killed process: the run resumes.
    assert main(["train", "--resume", str(run), "--epochs", "4", "--quiet"]) == 0


def test_a_full_disk_while_checkpointing_is_a_message_and_keeps_the_last_checkpoint(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    from freezer_app.core.train import checkpoint

    real = checkpoint.torch_save
    calls = {"n": 0}

    def full_after_first(obj, path):
        calls["n"] += 1
        if calls["n"] >= 2:
            # What torch's C++ writer raises when the disk fills up.
            raise RuntimeError(
                "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0: file write failed"
            )
        real(obj, path)

    monkeypatch.setattr(checkpoint, "torch_save", full_after_first)
    events: list = []
    result = Trainer(
        make_project(demo_data, epochs=3), tmp_path / "run", on_event=events.append
    ).run()
    assert result.reason == "error"
    error = next(e for e in events if isinstance(e, ev.ErrorEvent))
    assert error.kind == "write"
    assert "Could not write the checkpoint" in result.message and "MB free" in result.message
    assert "last complete checkpoint (step 8)" in result.message
    assert "image size" not in result.message + result.hint
    assert "--resume" in result.hint


def test_a_full_disk_at_start_leaves_nothing_behind(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    from freezer_app.core import files

    original = files.write_json

    def write_json(path, data):
        if Path(path).name == "data_report.json":
            with files.atomic_path(path) as tmp:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        original(path, data)

    monkeypatch.setattr("freezer_app.core.run_folder.write_json", write_json)
    out = tmp_path / "run"
    code = main([*_train_args(demo_data, out), "--epochs", "1", *FAST])
    assert code == 2
    assert not out.exists()  # as the message says


def test_a_model_with_the_wrong_number_of_outputs_is_refused_before_training(
    demo_data: Path, tmp_path: Path, capsys
) -> None:
    factory = tmp_path / "ignores.py"
    factory.write_text(
        "from torch import nn\n"
        "def build(**kwargs):\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 7))\n"
    )
    out = tmp_path / "run"
    code = main(
        ["train", "--model", f"{factory}:build", "--data", str(demo_data), "--out", str(out), *FAST]
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "returns 2×7 scores" in err and "3 classes" in err and "num_classes" in err


def test_head_reinitialisation_is_announced(demo_data: Path, tmp_path: Path, capsys) -> None:
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "ten.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(weights))
    code = main(
        [
            "train",
            "--model",
            "timm:test_resnet",
            "--weights",
            str(weights),
            "--data",
            str(demo_data),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--max-steps",
            "1",
            *FAST,
        ]
    )
    assert code == 0
    assert "was re-initialised for 3 classes" in capsys.readouterr().err


def test_a_project_name_cannot_put_its_runs_outside_the_runs_folder(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for name in ("../../x", "/etc/passwd", "a/../../b", "..", "\x1b[31mred"):
        run = new_run_dir(root, name, "timm:test_resnet")
        assert run.parent == root and run.name.strip(".")
        assert "/" not in run.name and "\x1b" not in run.name


def test_every_record_a_checkpoint_counts_is_on_disk_before_it(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """The order at an epoch end (and at a stop): records flushed and fsynced, then the
    checkpoint renamed. Checked at the moment of every checkpoint write."""
    from freezer_app.core.train import checkpoint

    real = checkpoint.torch_save
    run = tmp_path / "run"
    seen: list[tuple[int, list[int], list[int]]] = []

    def save_and_look(obj, path):
        # What a kill right after this rename would leave on disk:
        steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]
        epochs = [r["epoch"] for r in read_jsonl(run / "frozen_check.jsonl")]
        seen.append((obj["step"], steps, epochs))
        real(obj, path)

    monkeypatch.setattr(checkpoint, "torch_save", save_and_look)
    control = ev.RunControl()

    def stop_at_19(event: object) -> None:
        if isinstance(event, ev.StepEvent) and event.step == 19:
            control.stop()

    Trainer(make_project(demo_data, epochs=3), run, on_event=stop_at_19, control=control).run()
    assert [s for s, _, _ in seen] == [8, 16, 19]
    for step, steps, epochs in seen:
        assert steps == list(range(1, step + 1)), step
        assert epochs[: step // 8] == list(range(1, step // 8 + 1)), step


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    first = new_run_dir(root, "demo", "timm:test_resnet")
    second = new_run_dir(root, "demo", "timm:test_resnet")
    assert first != second and first.is_dir() and second.is_dir()  # claimed, atomically


def test_a_run_that_cannot_start_removes_the_folder_it_was_given(
    demo_data: Path, tmp_path: Path
) -> None:
    claimed = new_run_dir(tmp_path / "runs", "demo", "timm:test_resnet")
    project = make_project(demo_data, plan=FreezePlan(freeze=["layer9"]))
    with pytest.raises(FreezerError):
        Trainer(project, claimed).run()
    assert not claimed.exists()


def test_a_full_disk_at_the_first_checkpoint_says_how_to_start_again(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    from freezer_app.core.train import checkpoint

    def full(obj, path):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(checkpoint, "torch_save", full)
    result = Trainer(make_project(demo_data, epochs=1), tmp_path / "run").run()
    assert "no checkpoint had been written yet" in result.message
    assert "--resume" not in result.hint and "project.json --out" in result.hint


def test_screenshot_of_a_project_whose_code_is_not_trusted_fails_fast(
    demo_data: Path, tmp_path: Path, factory_file: Path
) -> None:
    project = make_project(demo_data, model=f"{factory_file}:build")
    path = tmp_path / "p.json"
    project.save(path)
    shot = tmp_path / "shot.png"
    args = [sys.executable, "-m", "freezer_app", "gui", str(path), "--screenshot", str(shot)]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "--trust-code" in done.stderr and not shot.exists()
    done = subprocess.run(
        [*args, "--trust-code"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0 and shot.exists(), done.stderr
