"""The freeze timeline and the project file: checked before a run, refusals that keep the run
going, live edits recorded so `train RUN/project.json` repeats a run, and the schema that
validation, flags, JSON Schema and the README's table are all derived from."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, Recorder, make_project

from freezer_app.cli import main
from freezer_app.core import events as ev
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.run_folder import read_jsonl
from freezer_app.core.train import Trainer

README = Path(__file__).resolve().parent.parent / "README.md"


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]


# ---------------------------------------------------------------------- checked at setup
def test_unknown_preset_in_a_schedule_fails_at_setup_and_leaves_no_run_folder(
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
            "--unfreeze-schedule",
            "1:train-lst:1",
            "--out",
            str(out),
            "--quiet",
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "phase 1" in err and "train-lst:1" in err and "Traceback" not in err
    assert not out.exists()
    # inspect checks the whole timeline too.
    code = main(["inspect", "timm:test_resnet", "--unfreeze-schedule", "1:train-lst:1"])
    err = capsys.readouterr().err
    assert code == 2 and "phase 1" in err and "train-lst:1" in err


@pytest.mark.parametrize(
    ("timeline", "named"),
    [
        ({"schedule": [{"epoch": 1, "preset": "train-all", "freeze": ["layer9"]}]}, "phase 1"),
        (
            {"edits": [{"step": 3, "preset": "train-all", "unfreeze": ["blocks.*"]}]},
            "edit 1 (step 3)",
        ),
    ],
)
def test_a_selector_matching_nothing_in_a_phase_or_edit_fails_at_setup(
    demo_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    timeline: dict[str, Any],
    named: str,
) -> None:
    project = make_project(demo_data).to_dict()
    project["plan"].update(timeline)
    path = tmp_path / "project.json"
    path.write_text(json.dumps(project))
    out = tmp_path / "run"
    code = main(["train", str(path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    selector = (timeline.get("schedule") or timeline.get("edits"))[0]
    assert named in err and (selector.get("freeze") or selector.get("unfreeze"))[0] in err
    assert "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------------- refused, run goes on
def test_a_phase_that_freezes_everything_is_refused_and_the_run_goes_on(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(demo_data, epochs=2).to_dict()
    project["plan"]["schedule"] = [{"epoch": 1, "preset": "train-all", "freeze": ["*"]}]
    path = tmp_path / "project.json"
    path.write_text(json.dumps(project))
    out = tmp_path / "run"
    code = main(["train", str(path), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning:" in captured.err and "nothing to train" in captured.err
    assert "completed after 2 epoch(s), 16 steps" in captured.out
    assert "frozen check: PASSED" in captured.out
    plans = read_jsonl(out / "plans.jsonl")
    assert [p["reason"] for p in plans] == ["start", "refused"]
    assert plans[1]["step"] == 9 and plans[1]["refused"]["freeze"] == ["*"]
    assert plans[1]["plan"]["freeze"] == []  # the plan in force stays in force
    checks = read_jsonl(out / "frozen_check.jsonl")
    assert [c["passed"] for c in checks] == [True, True]


def test_a_live_edit_that_freezes_everything_is_refused_and_the_run_goes_on(
    demo_data: Path, tmp_path: Path
) -> None:
    control = ev.RunControl()
    rec = Recorder()

    def on_event(event: object) -> None:
        rec(event)
        if isinstance(event, ev.StepEvent) and event.step == 2:
            control.set_plan(FreezePlan(freeze=["*"]))

    out = tmp_path / "run"
    result = Trainer(
        make_project(demo_data, epochs=1), out, on_event=on_event, control=control
    ).run()
    assert result.reason == "completed" and result.steps == 8
    assert result.frozen_check_passed is True
    warnings = [e for e in rec.of(ev.LogEvent) if e.level == "warning"]
    assert len(warnings) == 1 and "nothing to train" in warnings[0].message
    assert [(p.reason, p.step) for p in rec.of(ev.PlanApplied)] == [("start", 1), ("refused", 3)]
    assert [p["reason"] for p in read_jsonl(out / "plans.jsonl")] == ["start", "refused"]
    # A refused edit is not part of the run's timeline.
    assert json.loads((out / "project.json").read_text())["plan"]["edits"] == []


# ---------------------------------------------------------------------- repeatability
def test_live_edits_are_recorded_and_the_run_repeats_exactly(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    control = ev.RunControl()

    def on_event(event: object) -> None:
        if isinstance(event, ev.StepEvent) and event.step == 3:
            control.set_plan(FreezePlan(freeze=["layer1"]))
        if isinstance(event, ev.StepEvent) and event.step == 9:
            control.set_plan(FreezePlan())

    run = tmp_path / "run"
    project = make_project(demo_data, epochs=2, optimizer="adamw")
    result = Trainer(project, run, on_event=on_event, control=control).run()
    assert result.reason == "completed" and result.frozen_check_passed is True

    saved = json.loads((run / "project.json").read_text())
    # Step N is the first optimizer step trained with the selection.
    assert saved["plan"]["edits"] == [
        {"step": 4, "preset": "train-all", "freeze": ["layer1"], "unfreeze": []},
        {"step": 10, "preset": "train-all", "freeze": [], "unfreeze": []},
    ]
    plans = read_jsonl(run / "plans.jsonl")
    assert [(p["step"], p["reason"], p["plan"]["freeze"]) for p in plans] == [
        (1, "start", []),
        (4, "edit", ["layer1"]),
        (10, "edit", []),
    ]
    assert plans[1]["trainable_params"] < plans[0]["trainable_params"]

    again = tmp_path / "again"
    code = main(["train", str(run / "project.json"), "--out", str(again), "--quiet"])
    assert code == 0, capsys.readouterr().err
    first, second = _losses(run), _losses(again)
    assert len(first) == 16
    assert first == second  # bit for bit, edits included
    assert read_jsonl(again / "plans.jsonl") == plans


# ---------------------------------------------------------------------- the schema
def test_project_file_values_are_checked_by_name(tmp_path: Path) -> None:
    from freezer_app.core.errors import ProjectError
    from freezer_app.core.project import Project

    with pytest.raises(ProjectError, match="pretrained") as e:
        Project.from_dict({"model": "timm:test_resnet", "pretrained": "false"})
    assert "true or false" in e.value.message
    with pytest.raises(ProjectError, match=r"Unknown key\(s\) in train: epoch\b"):
        Project.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ProjectError, match=r"Unknown key\(s\) in data: size\b"):
        Project.from_dict({"data": {"size": 3}})
    with pytest.raises(ProjectError, match=r"plan\.edits\[0\]"):
        Project.from_dict({"plan": {"edits": [{"step": 1, "layers": []}]}})
    with pytest.raises(ProjectError, match=r"Unknown key\(s\) in the project: epochs"):
        Project.from_dict({"epochs": 3})


def _awkward_values(s: Any) -> list[Any]:
    from freezer_app.core.settings import range_problem

    if s.spec.choices:
        values: list[Any] = list(s.spec.choices)
    elif s.kind is bool:
        values = [True, False]
    elif s.kind is float:
        values = [1e-5, 0.125, 3e-4, 0.1 + 0.2, 1 / 3, 0.75, 2.5e-7, 1.0, 0.0]
    elif s.kind is int:
        values = [s.spec.minimum or 0, 1, 7, 12345, s.spec.maximum or 10**9]
        values = [int(v) for v in values]
    else:
        values = ["runs/my project", "timm:vit_base_patch16_224.augreg_in21k", "a=b, c"]
    values = [v for v in values if range_problem(s, v) is None]
    return [*values, None] if s.nullable else values


def test_every_setting_round_trips_through_its_text_form() -> None:
    from freezer_app.core.project import Project
    from freezer_app.core.settings import all_settings, format_value, parse_text

    checked = 0
    for s in all_settings(Project):
        if s.kind is list:
            continue
        values = _awkward_values(s)
        assert values, s.key
        for value in values:
            text = format_value(s, value)
            back = parse_text(s, text)
            assert back == value and type(back) is type(value), (s.key, value, text, back)
            checked += 1
    assert checked > 100


def test_train_help_shows_every_setting_flag_with_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from freezer_app.core.project import Project
    from freezer_app.core.settings import flag_settings, format_value

    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    # One help entry per option line ("  --flag ..."), up to the next option.
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=  -)", text):
        match = re.match(r"\s+(--[\w-]+)", block)
        if match:
            entries[match.group(1)] = " ".join(block.split())
    for s in flag_settings(Project):
        assert s.flag in entries, f"{s.key}: {s.flag} missing from train --help"
        default = s.default
        shown = s.spec.none if default is None and s.spec.none else format_value(s, default)
        if s.spec.required:
            assert "(required)" in entries[s.flag], (s.key, entries[s.flag])
        elif shown:
            assert f"(default: {shown})" in entries[s.flag], (s.key, entries[s.flag])
    assert "(default: 0.001)" in entries["--lr"] and "(default: 0.05)" in entries["--weight-decay"]
    assert "off: no clipping" in entries["--grad-clip"]
    assert "auto: the model's own input size" in entries["--image-size"]


def _check_against_schema(value: Any, schema: dict[str, Any], where: str) -> None:
    """A small JSON Schema check (type, enum, bounds, objects, arrays): jsonschema is not a
    dependency."""
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    python = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
        "null": type(None),
    }
    ok = any(
        isinstance(value, python[t]) and not (t in ("integer", "number") and value is True)
        for t in types
    )
    assert ok, f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], where
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert value >= schema.get("minimum", value), where
        assert value <= schema.get("maximum", value), where
        assert value > schema.get("exclusiveMinimum", value - 1), where
        assert value < schema.get("exclusiveMaximum", value + 1), where
    if isinstance(value, dict):
        assert schema["additionalProperties"] is False, where
        assert set(value) == set(schema["properties"]), where
        for key, item in value.items():
            _check_against_schema(item, schema["properties"][key], f"{where}.{key}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_against_schema(item, schema["items"], f"{where}[{i}]")


def test_schema_command_prints_a_json_schema_that_a_saved_project_follows(
    demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from freezer_app.core.freeze import Edit, Phase
    from freezer_app.core.project import ResumeRecord

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    project = make_project(demo_data, layer_decay=0.75, grad_clip=None, max_steps=5)
    project.plan.schedule = [Phase(1, "train-last:1", ["layer4.0"], [])]
    project.plan.edits = [Edit(4, "head-only", [], ["layer3"])]
    project.resumes = [ResumeRecord(5, ["train.max_steps: 5 -> null"])]
    saved = project.to_dict()
    _check_against_schema(saved, schema, "project")
    assert schema["properties"]["train"]["properties"]["lr"]["exclusiveMinimum"] == 0
    # ... and rejects what loading rejects.
    with pytest.raises(AssertionError):
        _check_against_schema({**saved, "pretrained": "false"}, schema, "project")
    with pytest.raises(AssertionError):
        _check_against_schema({**saved, "train": {**saved["train"], "epoch": 3}}, schema, "p")


# ---------------------------------------------------------------------- the README
BEGIN = "<!-- project.json reference: generated by freezer-app schema --markdown -->"
END = "<!-- end of project.json reference -->"


def test_readme_project_reference_is_the_generated_one() -> None:
    from freezer_app.core.project import project_reference

    text = README.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]
    assert block == "\n" + project_reference() + "\n", (
        "README's project.json table is out of date: paste `freezer-app schema --markdown` "
        "between the marker lines"
    )
    section = text.split("## The project file (`project.json`)", 1)[1].split("\n## ", 1)[0]
    assert '"edits"' in section and '"step"' in section and "resumes" in section


def test_readme_project_example_loads_and_its_timeline_resolves() -> None:
    from freezer_app.core import timeline
    from freezer_app.core.catalog import preview_model
    from freezer_app.core.project import Project
    from freezer_app.core.tree import ModelTree

    text = README.read_text(encoding="utf-8")
    section = text.split("## The project file (`project.json`)", 1)[1].split("\n## ", 1)[0]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    project = Project.from_dict(json.loads(example))
    assert project.plan.edits and project.plan.schedule and project.resumes
    preview = preview_model(project.model, num_classes=len(project.data.classes))
    masks = timeline.check(project.plan, ModelTree(preview.module, project.model))
    assert all(mask.any() for mask in masks.values())


def test_a_plan_whose_first_step_trains_nothing_fails_at_setup_whatever_the_order() -> None:
    import timm

    from freezer_app.core import timeline
    from freezer_app.core.errors import SelectorError
    from freezer_app.core.freeze import Phase
    from freezer_app.core.tree import ModelTree

    tree = ModelTree(timm.create_model("test_resnet", num_classes=3))
    for schedule in (
        [Phase(0, "train-all", freeze=["*"])],
        [Phase(2, "train-all"), Phase(0, "head-only", freeze=["fc"])],
    ):
        with pytest.raises(SelectorError, match="nothing to train"):
            timeline.check(FreezePlan(schedule=schedule), tree)
    # A plan that freezes everything but unfreezes from the first step on is fine.
    timeline.check(FreezePlan(freeze=["*"], schedule=[Phase(0, "head-only")]), tree)
