"""`freezer-app train` and `demo-data` end to end, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST

from freezer_app.cli import main
from freezer_app.core.run_folder import read_jsonl


def test_demo_data_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "demo-data",
                str(tmp_path / "d"),
                "--per-class",
                "5",
                "--val-per-class",
                "2",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert "wrote 15 training and 6 validation images" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "train" / "circles").glob("*.png"))) == 5
    assert main(["demo-data", str(tmp_path / "d")]) == 2  # never writes into a non-empty folder


def test_train_writes_the_run_folder_and_project_json_reproduces_it(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "timm:test_resnet",
            "--data",
            str(demo_data),
            "--epochs",
            "2",
            "--preset",
            "head-only",
            "--unfreeze",
            "layer4",
            "--lr",
            "0.003",
            "--out",
            str(out),
            *FAST,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "frozen check: PASSED" in captured.out
    assert "3 classes, 120 training and 30 validation images" in captured.err
    assert {p.name for p in out.iterdir()} >= {
        "project.json",
        "metrics.jsonl",
        "telemetry.jsonl",
        "frozen_check.jsonl",
        "checkpoints",
        "model.safetensors",
    }
    assert (out / "checkpoints" / "last.pt").exists()
    project = json.loads((out / "project.json").read_text())
    assert project["num_classes"] == 3 and project["data"]["classes"] == [
        "circles",
        "squares",
        "stripes",
    ]
    assert project["plan"]["preset"] == "head-only" and project["plan"]["unfreeze"] == ["layer4"]
    metrics = read_jsonl(out / "metrics.jsonl")
    epochs = [m for m in metrics if m["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert {"train_loss", "val_loss", "val_acc", "images_per_s"} <= set(epochs[0])
    steps = [m for m in metrics if m["type"] == "step"]
    assert {"loss", "lr"} <= set(steps[0])

    again = tmp_path / "again"
    assert main(["train", str(out / "project.json"), "--out", str(again), "--quiet"]) == 0
    first = [m["loss"] for m in steps]
    second = [m["loss"] for m in read_jsonl(again / "metrics.jsonl") if m["type"] == "step"]
    assert first == second


def test_train_resume_continues_a_stopped_run(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "timm:test_resnet",
        "--data",
        str(demo_data),
        "--epochs",
        "2",
        "--out",
        str(out),
        *FAST,
    ]
    assert main([*args, "--max-steps", "5"]) == 0
    # A run stopped by its step limit resumes to the end of its epochs.
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    steps = [m["step"] for m in read_jsonl(out / "metrics.jsonl") if m["type"] == "step"]
    assert steps == list(range(1, 17))
    capsys.readouterr()


def test_bad_data_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "train",
            "--model",
            "timm:test_resnet",
            "--data",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "No class folders" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    code = main(["train", "--data", str(tmp_path)])
    assert code == 2 and "--model MODEL --data DIR" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--model",
            "timm:test_resnet",
            "--data",
            str(tmp_path),
            "--unfreeze-schedule",
            "x",
        ]
    )
    assert code == 2 and "EPOCHS:PRESET" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint(demo_data: Path, tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("freezer-app")
    proc = subprocess.Popen(
        [
            str(exe),
            "train",
            "--model",
            "timm:test_resnet",
            "--data",
            str(demo_data),
            "--epochs",
            "200",
            "--out",
            str(out),
            *FAST,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "stopping after this step" in stderr
    assert "stopped after" in stdout
    assert (out / "checkpoints" / "last.pt").exists() and (out / "model.safetensors").exists()


def test_project_with_a_relative_model_file_runs_from_anywhere(
    demo_data: Path, tmp_path: Path, factory_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(factory_file.parent)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                f"{factory_file.name}:build",
                "--data",
                str(demo_data),
                "--epochs",
                "1",
                "--out",
                str(out),
                "--quiet",
                *FAST,
            ]
        )
        == 0
    )
    monkeypatch.chdir(tmp_path)
    assert (
        main(["train", str(out / "project.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    )


def test_setup_failures_leave_no_run_folder_and_bad_settings_are_messages(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "timm:test_resnet",
            "--pretrained",
            "--data",
            str(demo_data),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and not out.exists()  # offline: nothing half-made to trip over next time
    # Range errors come from the schema, at the flag, before anything is built.
    for flag, value, message in [
        ("--label-smoothing", "2", "argument --label-smoothing: must be in [0, 1) (got 2)"),
        ("--grad-clip", "-1", "argument --grad-clip: must be > 0 (got -1)"),
        ("--workers", "-1", "argument --workers: must be in [0, 64] (got -1)"),
        ("--lr", "fast", "argument --lr: 'fast' is not a number"),
    ]:
        args = ["train", "--model", "timm:test_resnet", "--data", str(demo_data), flag, value]
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--out", str(out)])
        assert exit_.value.code == 2 and not out.exists()
        assert message in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "timm:test_resnet", "train": {"epochs": "2"}}')
    assert main(["train", str(bad)]) == 2
    assert 'train.epochs must be a whole number, not "2"' in capsys.readouterr().err


def test_a_model_that_rejects_the_input_size_is_an_error_message(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_file = tmp_path / "fixed.py"
    model_file.write_text(
        "from torch import nn\n"
        "def build(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 10 * 10, num_classes))\n"
    )
    code = main(
        [
            "train",
            "--model",
            f"{model_file}:build",
            "--data",
            str(demo_data),
            "--out",
            str(tmp_path / "r"),
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    # Found before anything is written: one forward pass on blank images at setup.
    assert code == 2 and not (tmp_path / "r").exists()
    assert "cannot take 32×32 images: RuntimeError: mat1 and mat2" in err and "--image-size" in err
    assert "Traceback" not in err
