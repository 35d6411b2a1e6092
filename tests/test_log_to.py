"""`--log-to mlflow|wandb`: real short runs against stub `mlflow` and `wandb` modules (the
packages are optional and never installed for the tests): settings and per-step metrics
recorded, a resume continuing the same tracker run, a missing package refused before the run
starts, and a tracker that fails mid-run dropped without stopping training."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, Recorder, make_project

from freezer_app.cli import main
from freezer_app.core import events as ev
from freezer_app.core.errors import ProjectError
from freezer_app.core.events import LogEvent
from freezer_app.core.train import Trainer


# ---------------------------------------------------------------------- stub mlflow
@dataclass
class MlflowRun:
    run_id: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    starts: int = 0
    ends: list[str] = field(default_factory=list)


class StubMlflow:
    """The parts of mlflow's API that Freezer calls, recording what it is given."""

    def __init__(self) -> None:
        self.runs: dict[str, MlflowRun] = {}
        self.active: MlflowRun | None = None
        self.module = types.ModuleType("mlflow")
        entities = types.ModuleType("mlflow.entities")
        tracking = types.ModuleType("mlflow.tracking")

        @dataclass
        class Metric:
            key: str
            value: float
            timestamp: int
            step: int

        stub = self

        class MlflowClient:
            def log_batch(self, run_id: str, metrics: list[Metric] = ()) -> None:  # type: ignore[assignment]
                for m in metrics:
                    stub.runs[run_id].metrics.setdefault(m.key, []).append((m.step, m.value))

        entities.Metric = Metric  # type: ignore[attr-defined]
        tracking.MlflowClient = MlflowClient  # type: ignore[attr-defined]
        self.module.entities = entities  # type: ignore[attr-defined]
        self.module.tracking = tracking  # type: ignore[attr-defined]
        for name in ("start_run", "log_params", "set_tag", "end_run"):
            setattr(self.module, name, getattr(self, name))
        self.modules = {
            "mlflow": self.module,
            "mlflow.entities": entities,
            "mlflow.tracking": tracking,
        }

    def start_run(self, run_id: str | None = None, run_name: str | None = None) -> Any:
        assert self.active is None, "a run is already active"
        if run_id is None:
            run_id = f"run{len(self.runs)}"
            self.runs[run_id] = MlflowRun(run_id, str(run_name))
        self.active = self.runs[run_id]
        self.active.starts += 1
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))

    def log_params(self, params: dict[str, str]) -> None:
        assert self.active is not None
        assert not set(params) & set(self.active.params), "MLflow params cannot be logged twice"
        self.active.params.update(params)

    def set_tag(self, key: str, value: str) -> None:
        assert self.active is not None
        self.active.tags[key] = value

    def end_run(self, status: str = "FINISHED") -> None:
        if self.active is not None:
            self.active.ends.append(status)
        self.active = None


# ---------------------------------------------------------------------- stub wandb
class WandbRun:
    def __init__(self, stub: StubWandb, **kwargs: Any) -> None:
        self.stub = stub
        self.init = kwargs
        self.id = kwargs["id"]
        self.config: dict[str, Any] = dict(kwargs.get("config") or {})
        self.config_updates: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.finished = 0
        self.exit_codes: list[int] = []
        run = self

        class Config:
            def update(self, values: dict[str, Any], allow_val_change: bool = False) -> None:
                assert allow_val_change
                run.config_updates.append(values)
                run.config.update(values)

        self.config_object = Config()

    def log(self, values: dict[str, float], step: int) -> None:
        if self.stub.fail_at is not None and step >= self.stub.fail_at:
            raise ConnectionError("the W&B server went away")
        self.logged.append((step, dict(values)))

    def finish(self, exit_code: int = 0) -> None:
        self.finished += 1
        self.exit_codes.append(exit_code)


class StubWandb:
    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.runs: list[WandbRun] = []
        self.module = types.ModuleType("wandb")
        self.module.init = self.init  # type: ignore[attr-defined]

    def init(self, **kwargs: Any) -> Any:
        run = WandbRun(self, **kwargs)
        self.runs.append(run)
        # What Freezer touches: .log, .finish, .summary[...], .config.update(...)
        return types.SimpleNamespace(
            id=run.id,
            log=run.log,
            finish=run.finish,
            summary=run.summary,
            config=run.config_object,
        )


@pytest.fixture
def mlflow(monkeypatch: pytest.MonkeyPatch) -> StubMlflow:
    stub = StubMlflow()
    for name, module in stub.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return stub


@pytest.fixture
def wandb(monkeypatch: pytest.MonkeyPatch) -> StubWandb:
    stub = StubWandb()
    monkeypatch.setitem(sys.modules, "wandb", stub.module)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return stub


def train_args(demo_data: Path, out: Path, *extra: str) -> list[str]:
    return [
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
        *extra,
    ]


# ---------------------------------------------------------------------- tests
def test_log_to_mlflow_records_settings_and_metrics_and_a_resume_continues_the_run(
    demo_data: Path, tmp_path: Path, mlflow: StubMlflow, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = train_args(demo_data, out, "--log-to", "mlflow", "--max-steps", "5", "--lr", "0.003")
    assert main(args) == 0, capsys.readouterr().err
    (run,) = mlflow.runs.values()
    assert run.name == "run" and run.starts == 1 and run.ends == ["FINISHED"]
    assert (out / "mlflow_run_id").read_text().strip() == run.run_id
    # The project's settings, keyed as in project.json's reference.
    assert run.params["train.lr"] == "0.003" and run.params["train.log_to"] == "mlflow"
    assert run.params["model"] == "timm:test_resnet" and run.params["data.image_size"] == "32"
    assert [s for s, _ in run.metrics["train/loss"]] == [1, 2, 3, 4, 5]

    assert main(["train", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert len(mlflow.runs) == 1 and run.starts == 2 and run.ends == ["FINISHED"] * 2
    assert mlflow.active is None
    assert [s for s, _ in run.metrics["train/loss"]] == list(range(1, 17))
    assert [s for s, _ in run.metrics["epoch/val_acc"]] == [8, 16]
    assert [v for _, v in run.metrics["epoch"]] == [1.0, 2.0]
    assert "train/lr" in run.metrics
    assert run.tags["frozen_check"].startswith("PASSED")
    assert [v for _, v in run.metrics["frozen_check/drifted"]][-1] == 0


def test_log_to_wandb_logs_each_step_and_a_resume_continues_the_same_run(
    demo_data: Path, tmp_path: Path, wandb: StubWandb
) -> None:
    run_dir = tmp_path / "run"
    project = make_project(demo_data, max_steps=5, head_lr_mult=10.0, log_to="wandb")
    assert Trainer(project, run_dir).run().reason == "step-limit"
    (first,) = wandb.runs
    run_id = (run_dir / "wandb_id").read_text().strip()
    assert first.init["id"] == run_id and first.init["resume"] == "allow"
    assert first.init["project"] == "freezer" and first.init["name"] == "run"
    assert first.init["dir"] == str(run_dir)
    assert first.config["train.head_lr_mult"] == 10.0 and first.config["train.max_steps"] == 5
    assert first.finished == 1

    project = make_project(demo_data, head_lr_mult=10.0, log_to="wandb")
    resumed = Trainer(project, run_dir, resume=True, resume_changes={"train.max_steps": None})
    assert resumed.run().reason == "completed"
    first, second = wandb.runs
    assert second.init["id"] == run_id and second.init["config"] is None
    assert second.config_updates[0]["train.max_steps"] is None  # what the resume changed
    assert second.finished == 1
    steps = [s for run in wandb.runs for s, values in run.logged if "train/loss" in values]
    assert steps == list(range(1, 17))
    first_step = next(values for s, values in first.logged if s == 1 and "train/loss" in values)
    assert first_step["lr/x10"] == pytest.approx(10 * first_step["lr/x1"])  # each group's lr
    assert [s for run in wandb.runs for s, v in run.logged if "epoch/val_acc" in v] == [8, 16]
    assert second.summary["frozen_check"].startswith("PASSED")


def test_wandb_project_comes_from_the_environment(
    demo_data: Path, tmp_path: Path, wandb: StubWandb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    project = make_project(demo_data, epochs=1, max_steps=2, log_to="wandb")
    Trainer(project, tmp_path / "run").run()
    assert wandb.runs[0].init["project"] == "mine"


@pytest.mark.parametrize("log_to, missing", [("mlflow", "mlflow"), ("mlflow+wandb", "wandb")])
def test_a_missing_package_stops_the_run_before_it_starts(
    demo_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_to: str,
    missing: str,
) -> None:
    stub = StubMlflow()
    for name, module in stub.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, missing, None)  # import fails, as when not installed
    out = tmp_path / "run"
    assert main(train_args(demo_data, out, "--log-to", log_to)) == 2
    err = capsys.readouterr().err
    assert f"--log-to {log_to} needs the {missing} package: pip install {missing}" in err
    assert "--log-to none" in err
    assert not out.exists()  # nothing was written
    # The window and the engine validate the same project.
    with pytest.raises(ProjectError, match=f"pip install {missing}"):
        make_project(demo_data, log_to=log_to).validate()
    make_project(demo_data).validate()  # none: no package needed


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(
    demo_data: Path, tmp_path: Path, mlflow: StubMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = StubWandb(fail_at=3)
    monkeypatch.setitem(sys.modules, "wandb", failing.module)
    events = Recorder()
    project = make_project(demo_data, log_to="mlflow+wandb")
    result = Trainer(project, tmp_path / "run", on_event=events).run()
    assert result.reason == "completed" and result.steps == 16
    warnings = [e.message for e in events.of(LogEvent) if "logging failed" in e.message]
    assert len(warnings) == 1 and warnings[0].startswith("Weights & Biases logging failed")
    assert "the W&B server went away" in warnings[0]
    assert [s for s, _ in failing.runs[0].logged] == [1, 2]
    assert failing.runs[0].finished == 1  # ended when dropped
    # The other tracker and the run folder's own logs have every step.
    (run,) = mlflow.runs.values()
    assert [s for s, _ in run.metrics["train/loss"]] == list(range(1, 17))
    assert run.ends == ["FINISHED"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 16 + 2


def test_log_to_is_a_train_flag_and_a_training_form_setting() -> None:
    from freezer_app.core import settings as schema
    from freezer_app.core.project import Project, resumable_keys

    s = schema.find(Project, "train.log_to")
    assert s.flag == "--log-to" and s.spec.form and s.default == "none"
    assert set(s.spec.choices) == {"none", "mlflow", "wandb", "mlflow+wandb"}
    assert "train.log_to" in resumable_keys()  # a resume may add or drop a tracker


def test_the_tracker_run_ends_with_the_run_s_outcome(
    demo_data: Path, tmp_path: Path, mlflow: StubMlflow, wandb: StubWandb
) -> None:
    """Stopped: MLflow KILLED; failed: FAILED and a non-zero W&B exit code."""
    control = ev.RunControl()

    def stop_at_3(event: object) -> None:
        if isinstance(event, ev.StepEvent) and event.step == 3:
            control.stop()

    project = make_project(demo_data, log_to="mlflow+wandb")
    stopped = Trainer(project, tmp_path / "stopped", on_event=stop_at_3, control=control).run()
    assert stopped.reason == "stopped"
    (run,) = mlflow.runs.values()
    assert run.ends == ["KILLED"] and wandb.runs[0].exit_codes == [0]

    def fail_at_2(event: object) -> None:
        if isinstance(event, ev.StepEvent) and event.step == 2:
            raise RuntimeError("a failing step")

    project = make_project(demo_data, log_to="mlflow+wandb")
    failed = Trainer(project, tmp_path / "failed", on_event=fail_at_2).run()
    assert failed.reason == "error"
    second = next(r for r in mlflow.runs.values() if r is not run)
    assert second.ends == ["FAILED"] and wandb.runs[1].exit_codes == [1]
