"""Mistakes a new user makes on the command line, and what the CLI answers: a clear message
and exit 2 for a user mistake (never a traceback), and a result that says what really happened."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FAST

from freezer_app.cli import main
from freezer_app.core.freeze import FreezePlan, apply_plan

# 8 training images per class, batch 8: 3 steps per epoch.
SMALL = [*FAST, "--batch-size", "8"]
STEPS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mistakes") / "data"
    argv = ["demo-data", str(out), "--per-class", "8", "--val-per-class", "2", "--size", "32"]
    assert main(argv) == 0
    return out


def _train(data: Path, out: Path, *extra: str) -> int:
    model = ["--model", "timm:test_resnet"]
    return main(["train", *model, "--data", str(data), *SMALL, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def first_run(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run with part of the model frozen (layer3, layer4 and fc train)."""
    out = tmp_path_factory.mktemp("mistakes-run") / "first"
    assert _train(small_data, out, "--epochs", "1", "--preset", "train-last:2", "--quiet") == 0
    return out


# ---------------------------------------------------------------------- 1. --max-steps
def test_step_limit_on_an_epoch_boundary_is_a_stop_that_resume_continues(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "ms"
    limit = STEPS_PER_EPOCH  # exactly the end of epoch 1 of 3
    assert _train(small_data, run, "--epochs", "3", "--max-steps", str(limit), "--quiet") == 0
    captured = capsys.readouterr()
    assert f"step-limit after 1 epoch(s), {limit} steps" in captured.out
    assert "completed" not in captured.out
    assert f"Continue with: freezer-app train --resume {run}" in captured.err
    outcome = json.loads((run / "outcome.json").read_text())
    assert outcome["reason"] == "step-limit"

    assert main(["runs", str(run)]) == 0
    listed = capsys.readouterr().out
    assert "stopped" in listed and "finished" not in listed

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"completed after 3 epoch(s), {3 * STEPS_PER_EPOCH} steps" in captured.out
    assert json.loads((run / "outcome.json").read_text())["reason"] == "completed"
    assert main(["runs", str(run)]) == 0
    assert "finished" in capsys.readouterr().out


def test_step_limit_at_the_last_step_of_the_last_epoch_is_completed(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "all"
    limit = 2 * STEPS_PER_EPOCH  # the run's very end: nothing was cut short
    assert _train(small_data, run, "--epochs", "2", "--max-steps", str(limit), "--quiet") == 0
    captured = capsys.readouterr()
    assert f"completed after 2 epoch(s), {limit} steps" in captured.out
    assert "--resume" not in captured.err
    assert json.loads((run / "outcome.json").read_text())["reason"] == "completed"


# ---------------------------------------------------------------------- 2. code export
def test_code_export_of_a_model_file_named_with_a_dash_imports(
    small_data: Path, factory_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # my-model.py is no Python module name: freeze_plan.py loads it by its path instead.
    dashed = factory_file.with_name("my-model.py")
    dashed.write_text(factory_file.read_text())
    run, out = tmp_path / "run", tmp_path / "code"
    train = ["train", "--model", f"{dashed}:build", "--data", str(small_data), *SMALL]
    assert main([*train, "--max-steps", "1", "--preset", "head-only", "--out", str(run)]) == 0
    assert main(["export", str(run), "--format", "code", "--out", str(out), "--trust-code"]) == 0
    capsys.readouterr()
    code = "from freeze_plan import build_model, freeze; m = freeze(build_model()); print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_code_export_freezes_the_users_own_model(
    first_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "code"
    assert main(["export", str(first_run), "--format", "code", "--out", str(out)]) == 0
    capsys.readouterr()
    script = out / "freeze_plan.py"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    # The README says how to use it: exactly what is checked below.
    assert "`from freeze_plan import freeze`, then `freeze(model)`" in readme
    assert 'exec(open("freeze_plan.py").read())' in readme

    import timm

    expected = timm.create_model("test_resnet", num_classes=3)
    apply_plan(expected, FreezePlan(preset="train-last:2"))
    expected_grad = {n: p.requires_grad for n, p in expected.named_parameters()}
    assert not all(expected_grad.values()) and any(expected_grad.values())

    code = textwrap.dedent(
        f"""
        import json, sys
        import timm, torch

        torch.manual_seed(1)
        model = timm.create_model("test_resnet", num_classes=3)  # the user's own model
        mine = model
        before = {{k: v.clone() for k, v in model.state_dict().items()}}
        exec(open({str(script)!r}).read())  # the README's line, at a script's top level
        out = {{
            "same": model is mine,
            "kept": all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
            "grad": {{n: p.requires_grad for n, p in model.named_parameters()}},
        }}
        model.train()
        model(torch.randn(2, 3, 32, 32))
        out["bn1_eval"] = not model.bn1.training  # a frozen BatchNorm stays in eval mode

        sys.path.insert(0, {str(out)!r})
        import freeze_plan

        out["import_builds_nothing"] = not hasattr(freeze_plan, "model")
        other = timm.create_model("test_resnet", num_classes=3)
        out["returns_it"] = freeze_plan.freeze(other) is other
        out["import_grad"] = {{n: p.requires_grad for n, p in other.named_parameters()}}

        def inside_a_function():
            model = timm.create_model("test_resnet", num_classes=3)
            exec(open({str(script)!r}).read())  # `model` is a local here
            return {{n: p.requires_grad for n, p in model.named_parameters()}}

        out["function_grad"] = inside_a_function()
        print(json.dumps(out))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["same"] and got["kept"], "the user's model was replaced"
    assert got["grad"] == expected_grad
    assert got["bn1_eval"]
    assert got["import_builds_nothing"] and got["returns_it"]
    assert got["import_grad"] == expected_grad
    assert got["function_grad"] == expected_grad

    # Run alone, it builds the architecture and freezes that.
    alone = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    import runpy

    ns = runpy.run_path(str(script))
    assert {n: p.requires_grad for n, p in ns["model"].named_parameters()} == expected_grad


# ---------------------------------------------------------------------- 3. demo-data
def test_demo_data_into_a_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "existing_file.txt"
    existing.write_text("not a folder")
    assert main(["demo-data", str(existing)]) == 2
    err = capsys.readouterr().err
    assert f"error: Cannot write the demo images to {existing}: it is a file, not a folder." in err
    assert "Traceback" not in err

    below = existing / "d"  # NotADirectoryError while creating it
    assert main(["demo-data", str(below)]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: Cannot write the demo images to {below}: part of that path is a file, "
        "not a folder." in err
    )
    assert "Pick a folder you can write to" in err
    assert existing.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("flag", "value"), [("--per-class", "-2"), ("--per-class", "0"), ("--val-per-class", "-1")]
)
def test_demo_data_refuses_counts_below_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo-data", str(tmp_path / "d"), flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err and "wrote" not in err
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------- 4. run folder, hints
def test_a_run_folder_given_as_the_project_says_what_to_pass(
    first_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = tmp_path / "again"
    assert main(["train", str(first_run), "--out", str(again)]) == 2
    err = capsys.readouterr().err
    assert f"error: {first_run} is a run folder, not a project file." in err
    assert (
        f"To repeat that run: freezer-app train {first_run / 'project.json'} --out {again}" in err
    )
    assert f"to continue it: freezer-app train --resume {first_run}" in err
    assert "Errno" not in err and "damaged" not in err
    assert not again.exists()

    assert main(["lr-find", str(first_run)]) == 2
    err = capsys.readouterr().err
    assert f"error: {first_run} is a run folder, not a project file." in err
    assert f"freezer-app lr-find {first_run / 'project.json'}" in err
    assert "--resume" not in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"error: {empty} is a folder, not a project file." in err
    assert "Errno" not in err


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_missing_data_example_names_the_command_that_was_run(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--model", "timm:test_resnet"]) == 2
    err = capsys.readouterr().err
    assert "error: Say what to train: --model MODEL --data DIR" in err
    assert f"Example: freezer-app {command} --model " in err
    other = "lr-find" if command == "train" else "train"
    assert f"freezer-app {other}" not in err


def test_two_schedule_phases_at_one_epoch_and_multiplier_patterns_are_refused(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule = ["--epochs", "2", "--unfreeze-schedule", "1:train-all,1:head-only"]
    assert _train(small_data, tmp_path / "a", *schedule) == 2
    assert "two phases after epoch 1" in capsys.readouterr().err
    for pattern in ("layer*=0.5", "type:Linear=2"):
        assert _train(small_data, tmp_path / "b", "--lr-mult", pattern) == 2
        assert "is a pattern" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
