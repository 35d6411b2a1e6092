"""The training engine: learning, frozen means unchanged, mid-run edits, resume, stop, failures."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Recorder, make_project
from safetensors.torch import load_file

from freezer_app.core import events as ev
from freezer_app.core.freeze import FreezePlan, Phase
from freezer_app.core.run_folder import read_jsonl
from freezer_app.core.train import Trainer, checkpoint


def _initial_weights(project, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights a run starts from (model construction is seeded by the project's seed)."""
    from freezer_app.core.catalog import load_model
    from freezer_app.core.train import seed_everything

    seed_everything(seed)
    return {
        k: v.clone()
        for k, v in load_model(project.model, num_classes=3).module.state_dict().items()
    }


def test_loss_falls_on_a_learnable_set(demo_data: Path, tmp_path: Path) -> None:
    project = make_project(demo_data, epochs=4)
    rec = Recorder()
    result = Trainer(project, tmp_path / "run", on_event=rec).run()
    assert result.reason == "completed"
    epochs = rec.of(ev.EpochEvent)
    assert len(epochs) == 4
    assert epochs[-1].train_loss < 0.8 * epochs[0].train_loss
    assert (
        result.best_val_acc is not None and result.best_val_acc > 0.5
    )  # 3 classes: chance is 0.33


def test_frozen_parameters_and_batchnorm_buffers_are_bit_identical(
    demo_data: Path, tmp_path: Path
) -> None:
    # SGD with momentum and weight decay: the classic way "frozen" weights still move.
    project = make_project(
        demo_data, optimizer="sgd", weight_decay=0.1, plan=FreezePlan(preset="train-last:1")
    )
    start = _initial_weights(project)
    result = Trainer(project, tmp_path / "run").run()
    assert result.frozen_check_passed is True
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert set(final) == set(start)  # keys exactly as model.state_dict()
    for name, value in final.items():
        if not name.startswith(("layer4.", "fc.")):
            assert torch.equal(value, start[name]), f"frozen {name} moved"
    # timm zero-initialises the last BatchNorm of each block, so a residual branch gets its
    # first gradients through that norm; these certainly train:
    for name in ("fc.weight", "fc.bias", "layer4.0.bn2.weight", "layer4.0.downsample.1.weight"):
        assert not torch.equal(final[name], start[name]), f"{name} should have trained"
    checks = read_jsonl(tmp_path / "run" / "frozen_check.jsonl")
    assert [c["passed"] for c in checks] == [True, True]
    assert checks[-1]["checked"] > 0


def test_telemetry_shows_exact_zero_for_frozen_layers(demo_data: Path, tmp_path: Path) -> None:
    project = make_project(demo_data, epochs=1, plan=FreezePlan(preset="head-only"))
    rec = Recorder()
    Trainer(project, tmp_path / "run", on_event=rec).run()
    names = rec.of(ev.RunStarted)[0].layer_names
    records = [e.record for e in rec.of(ev.TelemetryEvent)]
    assert records, "telemetry was reported"
    head = names.index("fc")
    for r in records:
        frozen = ~r.trainable
        assert frozen.sum() == len(names) - 1
        assert np.all(r.grad_norm[frozen] == 0) and np.all(r.update_norm[frozen] == 0)
        assert np.all(r.grad_max[frozen] == 0) and np.all(r.update_ratio[frozen] == 0)
        assert r.grad_norm[head] > 0 and r.update_norm[head] > 0 and r.weight_norm[head] > 0
    lines = read_jsonl(tmp_path / "run" / "telemetry.jsonl")
    assert len(lines) == len(records)
    assert set(lines[0]) >= {
        "step",
        "grad_norm",
        "grad_max",
        "update_norm",
        "update_ratio",
        "weight_norm",
    }


def test_batchnorm_update_policy_is_reported_as_drift(demo_data: Path, tmp_path: Path) -> None:
    project = make_project(
        demo_data, epochs=1, plan=FreezePlan(preset="head-only", bn_policy="update")
    )
    rec = Recorder()
    result = Trainer(project, tmp_path / "run", on_event=rec).run()
    check = rec.of(ev.FrozenCheckEvent)[-1].check
    drifted = {d.layer for d in check.drifted}
    assert "bn1" in drifted and all(d.kind == "buffer" and d.expected for d in check.drifted)
    # Parameters stayed frozen, and the user chose to let statistics update: still a pass.
    assert result.frozen_check_passed is True
    assert "updated as the 'update' policy allows" in check.summary()


def _train_with_edit(
    demo_data: Path, out: Path, at_step: int, edit: FreezePlan, **kw: object
) -> tuple[Recorder, dict]:
    """Train, sending `edit` as a new freeze plan when step `at_step` is reported;
    returns the events and a copy of the weights after every step."""
    project = make_project(demo_data, **kw)
    control = ev.RunControl()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    rec = Recorder()
    trainer: Trainer

    def on_event(event: object) -> None:
        rec(event)
        if isinstance(event, ev.StepEvent):
            snapshots[event.step] = {
                k: v.detach().clone() for k, v in trainer.model.state_dict().items()
            }
            if event.step == at_step:
                control.set_plan(edit)

    trainer = Trainer(project, out, on_event=on_event, control=control)
    trainer.run()
    return rec, snapshots


def test_freezing_mid_run_keeps_that_layer_bit_identical_from_then_on(
    demo_data: Path, tmp_path: Path
) -> None:
    rec, snaps = _train_with_edit(
        demo_data,
        tmp_path / "run",
        3,
        FreezePlan(freeze=["layer1"]),
        optimizer="sgd",
        weight_decay=0.1,
    )
    applied = [e for e in rec.of(ev.PlanApplied) if e.reason == "edit"]
    # Sent after step 3: step 4 is the first step trained with it.
    assert len(applied) == 1 and applied[0].step == 4
    last = max(snaps)
    layer1 = [n for n in snaps[3] if n.startswith("layer1.") and "num_batches" not in n]
    assert any(not torch.equal(snaps[1][n], snaps[3][n]) for n in layer1)  # it trained before
    for name in layer1:
        assert torch.equal(snaps[3][name], snaps[last][name]), name
    assert rec.of(ev.Finished)[0].frozen_check_passed is True


def test_unfreezing_mid_run_trains_that_layer(demo_data: Path, tmp_path: Path) -> None:
    rec, snaps = _train_with_edit(
        demo_data,
        tmp_path / "run",
        2,
        FreezePlan(preset="head-only", unfreeze=["layer4"]),
        plan=FreezePlan(preset="head-only"),
    )
    w = "layer4.0.conv1.weight"
    assert torch.equal(snaps[1][w], snaps[2][w])  # frozen before the edit
    assert not torch.equal(snaps[2][w], snaps[max(snaps)][w])  # trains after it
    assert rec.of(ev.Finished)[0].frozen_check_passed is True


def test_gradual_unfreezing_schedule(demo_data: Path, tmp_path: Path) -> None:
    plan = FreezePlan(
        preset="head-only",
        schedule=[Phase(epoch=1, preset="train-last:1"), Phase(epoch=2, preset="train-all")],
    )
    project = make_project(demo_data, epochs=3, plan=plan)
    rec = Recorder()
    result = Trainer(project, tmp_path / "run", on_event=rec).run()
    applied = rec.of(ev.PlanApplied)
    assert [(a.reason, a.plan.preset) for a in applied] == [
        ("start", "head-only"),
        ("schedule", "train-last:1"),
        ("schedule", "train-all"),
    ]
    assert applied[0].trainable_params < applied[1].trainable_params < applied[2].trainable_params
    assert result.frozen_check_passed is True


def test_stop_takes_effect_within_one_step_and_resume_reproduces_the_run(
    demo_data: Path, tmp_path: Path
) -> None:
    project = make_project(demo_data, epochs=2)
    project.data.augmentation = "light"  # random augmentation must replay exactly too
    full = Recorder()
    Trainer(project, tmp_path / "full", on_event=full).run()

    control = ev.RunControl()
    part = Recorder()

    def stop_at_5(event: object) -> None:
        part(event)
        if isinstance(event, ev.StepEvent) and event.step == 5:
            control.stop()

    part_project = make_project(demo_data, epochs=2)
    part_project.data.augmentation = "light"
    stopped = Trainer(part_project, tmp_path / "part", on_event=stop_at_5, control=control).run()
    assert stopped.reason == "stopped"
    assert stopped.steps == 5  # the stop landed at the very next step boundary
    assert (tmp_path / "part" / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "part" / "model.safetensors").exists()

    from freezer_app.core.project import Project

    resumed_project = Project.load(tmp_path / "part" / "project.json")
    resumed = Recorder()
    done = Trainer(resumed_project, tmp_path / "part", on_event=resumed, resume=True).run()
    assert done.reason == "completed"
    full_losses = [e.loss for e in full.of(ev.StepEvent)]
    joined = [e.loss for e in part.of(ev.StepEvent)] + [e.loss for e in resumed.of(ev.StepEvent)]
    assert joined == full_losses  # bit-for-bit the same losses on CPU
    metrics = [r for r in read_jsonl(tmp_path / "part" / "metrics.jsonl") if r["type"] == "step"]
    assert [r["step"] for r in metrics] == list(range(1, len(full_losses) + 1))
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pause_and_resume_from_another_thread(demo_data: Path, tmp_path: Path) -> None:
    control = ev.RunControl()
    rec = Recorder()
    paused = threading.Event()

    def on_event(event: object) -> None:
        rec(event)
        if isinstance(event, ev.StepEvent) and event.step == 2:
            control.pause()
        if isinstance(event, ev.PausedEvent) and event.paused:
            paused.set()

    def resume_later() -> None:
        paused.wait(30)
        control.resume()

    thread = threading.Thread(target=resume_later)
    thread.start()
    result = Trainer(
        make_project(demo_data, epochs=1), tmp_path / "run", on_event=on_event, control=control
    ).run()
    thread.join()
    assert result.reason == "completed"
    assert [e.paused for e in rec.of(ev.PausedEvent)] == [True, False]
    assert rec.of(ev.PausedEvent)[0].step == 2


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    demo_data: Path, tmp_path: Path
) -> None:
    trainer = Trainer(make_project(demo_data, epochs=3), tmp_path / "run")
    setup = trainer._setup

    def setup_then_poison() -> None:
        setup()
        forward = trainer.model.forward

        def nan_from_epoch_2(x: torch.Tensor) -> torch.Tensor:
            out = forward(x)
            return out * float("nan") if trainer.epoch >= 1 and trainer.model.training else out

        trainer.model.forward = nan_from_epoch_2

    trainer._setup = setup_then_poison
    rec = Recorder()
    trainer.emit = rec
    result = trainer.run()
    assert result.reason == "error"
    assert [e.kind for e in rec.of(ev.ErrorEvent)] == ["non-finite-loss"]
    assert "became nan" in result.message.lower()
    assert "end of epoch 1" in result.message
    assert "learning rate" in result.hint
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_out_of_memory_is_reported_and_the_process_stays_usable(
    demo_data: Path, tmp_path: Path
) -> None:
    trainer = Trainer(make_project(demo_data, epochs=1), tmp_path / "oom")
    setup = trainer._setup

    def setup_then_break() -> None:
        setup()

        def oom(x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        trainer.model.forward = oom

    trainer._setup = setup_then_break
    result = trainer.run()
    assert result.reason == "error"
    assert "Out of GPU memory" in result.message
    assert "smaller batch size (e.g. 8)" in result.hint and "freeze more" in result.hint
    # The same process trains fine afterwards.
    again = Trainer(make_project(demo_data, epochs=1), tmp_path / "after").run()
    assert again.reason == "completed"


def test_existing_run_folder_is_never_overwritten(demo_data: Path, tmp_path: Path) -> None:
    from freezer_app.core.errors import ProjectError

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ProjectError, match="already holds files"):
        Trainer(make_project(demo_data), out).run()
    assert (out / "notes.txt").read_text() == "mine"


def test_everything_frozen_is_an_error(demo_data: Path, tmp_path: Path) -> None:
    from freezer_app.core.errors import FreezerError

    with pytest.raises(FreezerError, match="nothing to train"):
        Trainer(make_project(demo_data, plan=FreezePlan(freeze=["*"])), tmp_path / "run").run()


def test_layer_decay_and_head_multiplier_set_group_learning_rates(
    demo_data: Path, tmp_path: Path
) -> None:
    from freezer_app.core.catalog import load_model
    from freezer_app.core.optim import param_groups
    from freezer_app.core.project import TrainSettings
    from freezer_app.core.tree import ModelTree

    model = load_model("timm:test_vit", num_classes=3).module
    tree = ModelTree(model)
    groups = param_groups(model, tree, TrainSettings(layer_decay=0.5, head_lr_mult=10.0))
    scale_of = {n: g.lr_scale for g in groups for n in g.names}
    decay_of = {n: g.weight_decay for g in groups for n in g.names}
    assert scale_of["head.weight"] == 10.0
    assert scale_of["blocks.5.attn.qkv.weight"] > scale_of["blocks.0.attn.qkv.weight"]
    assert scale_of["blocks.0.attn.qkv.weight"] > scale_of["patch_embed.proj.weight"]
    assert decay_of["blocks.0.norm1.weight"] == 0.0 and decay_of["blocks.0.attn.qkv.bias"] == 0.0
    assert decay_of["pos_embed"] == 0.0  # timm's no_weight_decay()
    assert decay_of["blocks.0.attn.qkv.weight"] > 0
