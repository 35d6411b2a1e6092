"""The optimizer and schedule recipe: any of timm's optimizers over Freezer's groups with frozen
parameters left out of every step, timm's schedulers per step honouring each group's lr_scale
once, resume giving the uninterrupted run's rates, and per-layer learning-rate multipliers
(saved in the plan, in the groups, logged, kept on resume and when a layer is unfrozen)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import timm
import torch
from conftest import FAST, make_project
from timm.optim import list_optimizers

from freezer_app.cli import main
from freezer_app.core.errors import ProjectError, SelectorError
from freezer_app.core.freeze import (
    FreezePlan,
    LrMult,
    Phase,
    apply_mask,
    apply_plan,
    check_lr_mult,
    mult_of,
    resolve,
)
from freezer_app.core.optim import (
    SCHEDULES,
    GroupSpec,
    LrSchedule,
    build_optimizer,
    optimizer_problem,
    param_groups,
    restrict_to_trainable,
)
from freezer_app.core.project import Project, TrainSettings
from freezer_app.core.run_folder import RunFolder, read_jsonl
from freezer_app.core.train import Trainer
from freezer_app.core.train.checkpoint import named_optimizer_state
from freezer_app.core.tree import ModelTree

# A spread of timm's families: torch's own, decoupled-decay, sign, factored, second-moment
# free, orthogonalised and a wrapper; those this timm lacks are skipped. Not kron: minutes on
# the CPU without opt_einsum (it passes too).
REPRESENTATIVE = (
    "adamw",
    "sgd",
    "momentum",
    "adam",
    "nadamw",
    "radam",
    "lamb",
    "lion",
    "adan",
    "adafactor",
    "adafactorbv",
    "adabelief",
    "adopt",
    "laprop",
    "lars",
    "madgrad",
    "rmsprop",
    "rmsproptf",
    "sgdw",
    "novograd",
    "mars",
    "muon",
    "lookahead_adamw",
)
KNOWN = set(list_optimizers())


def _vit() -> tuple[torch.nn.Module, ModelTree]:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)
    return model, ModelTree(model)


def _loss(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, *model.pretrained_cfg["input_size"][1:])
    return model(x).logsumexp(1).mean()


# ---------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_each_optimizer_steps_without_moving_frozen_parameters(name: str) -> None:
    if name.split("_")[-1] not in KNOWN:
        pytest.skip(f"{name} is not in this timm")
    model, tree = _vit()
    apply_plan(model, FreezePlan(freeze=["patch_embed", "blocks.0", "blocks.1.attn"]), tree)
    # Weight decay and momentum on: an optimizer that decays every parameter of a group,
    # gradient or not, would move frozen ones if they were in the step.
    settings = TrainSettings(optimizer=name, lr=1e-2, weight_decay=0.1, momentum=0.9)
    groups = param_groups(model, tree, settings, {"blocks.2": 0.5})
    optimizer = build_optimizer(groups, settings)
    schedule = LrSchedule(optimizer, settings, 10, 2, 5)
    restrict_to_trainable(optimizer, groups)
    stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and not any(id(p) in stepped for n, p in model.named_parameters() if n in frozen)
    for step in range(1, 4):
        optimizer.zero_grad(set_to_none=True)
        _loss(model).backward()
        optimizer.step()
        schedule.step_update(step)
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert params[n].grad is None
        assert torch.equal(params[n], before), f"{name} moved frozen {n}"
    assert any(not torch.equal(params[n], before) for n, before in trained.items())
    # Its state holds no frozen parameter and survives a checkpoint (weights_only load).
    state = named_optimizer_state(optimizer, model)
    assert not set(state) & set(frozen)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)

    # Unfrozen mid-run, a layer joins its group and trains at its multiplier.
    apply_mask(model, tree, resolve(FreezePlan(), tree))
    restrict_to_trainable(optimizer, groups)
    before = params["blocks.0.mlp.fc1.weight"].detach().clone()
    for _ in range(2):  # ADOPT's first step of a parameter only measures it
        optimizer.zero_grad(set_to_none=True)
        _loss(model).backward()
        optimizer.step()
    assert not torch.equal(params["blocks.0.mlp.fc1.weight"], before)


def test_optimizer_names_are_checked_with_close_matches() -> None:
    for ok in ("adamw", "sgd", "SGD", "lookahead_sgd", "lamb"):
        assert optimizer_problem(ok) is None, ok
    assert "adamax" in (optimizer_problem("adamx") or "")
    assert "Did you mean: lookahead_adamax" in (optimizer_problem("lookahead_adamx") or "")
    assert "second-order" in (optimizer_problem("adahessian") or "")
    assert optimizer_problem("lookahead_nothing") is not None
    assert optimizer_problem("something_adamw") is not None
    project = Project()
    project.data.path = "x"
    project.train.optimizer = "lamx"
    with pytest.raises(ProjectError, match="lamb"):
        project.validate()


def test_an_unknown_optimizer_stops_train_before_it_starts(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "timm:test_resnet", "--data", str(demo_data), "--out", str(out)]
    assert main([*args, *FAST, "--optimizer", "adamx", "--quiet"]) != 0
    assert "Did you mean: adamax" in capsys.readouterr().err
    assert not out.exists()


def test_sgd_without_momentum_is_plain_sgd() -> None:
    model, tree = _vit()
    settings = TrainSettings(optimizer="sgd", momentum=0.0)
    optimizer = build_optimizer(param_groups(model, tree, settings), settings)
    assert optimizer.defaults["momentum"] == 0.0 and not optimizer.defaults["nesterov"]


def test_projects_of_earlier_versions_load() -> None:
    project = Project.from_dict(
        {
            "model": "timm:test_resnet",
            "plan": {"preset": "head-only", "freeze": [], "unfreeze": ["layer4"]},
            "train": {"optimizer": "sgd", "schedule": "constant", "warmup_epochs": 0.5},
        }
    )
    assert project.train.optimizer == "sgd" and project.train.schedule == "constant"
    assert project.plan.lr_mult == []


# ---------------------------------------------------------------------- the schedule
def _old_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Freezer's schedule before timm's (the LambdaLR factor), for comparison."""
    if warmup > 0 and step < warmup:
        return 0.01 + 0.99 * step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _two_groups(settings: TrainSettings) -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, 3))
    groups = [GroupSpec(1.0, 0.0, [a], ["a"], "x1"), GroupSpec(10.0, 0.05, [b], ["b"], "x10")]
    return build_optimizer(groups, settings)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_cosine_and_constant_keep_the_earlier_schedule_with_each_group_scaled_once(
    schedule: str,
) -> None:
    settings = TrainSettings(lr=1e-3, schedule=schedule)
    optimizer = _two_groups(settings)
    lr_schedule = LrSchedule(optimizer, settings, 50, 10, 10)
    for step in range(60):
        if step:
            lr_schedule.step_update(step)
        want = 1e-3 * _old_factor(step, 50, 10, schedule)
        body, head = (g["lr"] for g in optimizer.param_groups)
        assert body == pytest.approx(want, rel=1e-9)
        assert head == pytest.approx(10 * want, rel=1e-9)  # lr_scale once, not 100×
    assert lr_schedule.group_lrs() == {"x1": body, "x10": head}
    assert lr_schedule.base_lr() == pytest.approx(body)


def test_schedules_decay_restart_and_plateau() -> None:
    def rates(**kw: object) -> list[float]:
        settings = TrainSettings(lr=1.0, **kw)  # type: ignore[arg-type]
        optimizer = _two_groups(settings)
        s = LrSchedule(optimizer, settings, 40, 0, 10)
        out = [optimizer.param_groups[0]["lr"]]
        for step in range(1, 40):
            s.step_update(step)
            if step % 10 == 0:
                s.epoch_end(step, 0.5)  # a metric that never improves
            out.append(optimizer.param_groups[0]["lr"])
        return out

    cycles = rates(schedule="cosine", lr_cycles=2, lr_cycle_decay=0.5)
    assert cycles[0] == 1.0 and cycles[20] == pytest.approx(0.5) and cycles[19] < 0.05
    step = rates(schedule="step", lr_decay_epochs=1.0, lr_decay_rate=0.5)
    assert step[9] == 1.0 and step[10] == 0.5 and step[20] == 0.25
    plateau = rates(schedule="plateau", lr_patience=0, lr_decay_rate=0.5)
    assert plateau[10] == 1.0 and plateau[20] == 0.5 and plateau[30] == 0.25
    assert rates(schedule="none") == [1.0] * 40
    poly = rates(schedule="poly")
    assert poly[0] == 1.0 and poly[20] == pytest.approx(0.505) and poly[39] < 0.05


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_resumed_schedule_gives_the_uninterrupted_rates(schedule: str) -> None:
    settings = TrainSettings(
        lr=1e-2, schedule=schedule, lr_cycles=2, lr_patience=0, lr_decay_rate=0.5
    )
    metrics = [0.1, 0.3, 0.3, 0.2, 0.5, 0.5, 0.5]

    def run(until: int, start: tuple[int, dict] | None = None) -> tuple[list[list[float]], dict]:
        optimizer = _two_groups(settings)
        s = LrSchedule(optimizer, settings, 70, 5, 10)
        first = 1
        if start is not None:
            # As a checkpoint stores it: through torch.save and a weights_only load.
            buffer = io.BytesIO()
            torch.save(start[1], buffer)
            buffer.seek(0)
            s.load_state_dict(torch.load(buffer, weights_only=True), start[0])
            first = start[0] + 1
        out = []
        for step in range(first, until + 1):
            out.append([g["lr"] for g in optimizer.param_groups])  # what this step trains with
            s.step_update(step)
            if step % 10 == 0:
                s.epoch_end(step, metrics[step // 10 - 1])
        return out, s.state_dict()

    whole, _ = run(70)
    head, state = run(33)
    tail, _ = run(70, (33, state))
    assert head + tail == whole
    if schedule == "plateau":
        assert whole[-1][0] < whole[10][0]  # it did decay, and resumed decayed


# ---------------------------------------------------------------------- per-layer multipliers
def test_the_most_specific_path_gives_a_parameter_its_multiplier() -> None:
    mults = {"blocks.1": 0.5, "blocks.1.attn": 2.0, "head.weight": 3.0}
    assert mult_of("blocks.1.mlp.fc1.weight", mults) == 0.5
    assert mult_of("blocks.1.attn.qkv.weight", mults) == 2.0
    assert mult_of("blocks.10.attn.qkv.weight", mults) == 1.0  # never blocks.1's
    assert mult_of("head.weight", mults) == 3.0 and mult_of("head.bias", mults) == 1.0


def test_multipliers_combine_with_head_and_layer_decay() -> None:
    model, tree = _vit()
    settings = TrainSettings(layer_decay=0.5, head_lr_mult=10.0)
    plain = {n: g.lr_scale for g in param_groups(model, tree, settings) for n in g.names}
    groups = param_groups(model, tree, settings, {"blocks.1": 0.25, "head": 0.5})
    scale = {n: g.lr_scale for g in groups for n in g.names}
    assert scale["head.weight"] == pytest.approx(5.0)
    assert scale["blocks.1.attn.qkv.weight"] == pytest.approx(
        0.25 * plain["blocks.1.attn.qkv.weight"]
    )
    assert scale["blocks.2.attn.qkv.weight"] == plain["blocks.2.attn.qkv.weight"]
    assert all(g.name == f"x{g.lr_scale:g}" for g in groups)
    assert len({n for g in groups for n in g.names}) == len(tree.params)  # frozen ones too


def test_plan_multipliers_round_trip_and_are_checked() -> None:
    plan = FreezePlan(preset="head-only").with_lr_mult("layer4", 0.1).with_lr_mult("fc", 2.0)
    assert plan.lr_mults() == {"layer4": 0.1, "fc": 2.0}
    assert plan.with_lr_mult("layer4", 0.3).lr_mult == [LrMult("layer4", 0.3), LrMult("fc", 2.0)]
    assert plan.with_lr_mult("layer4", None).lr_mults() == {"fc": 2.0}
    # 1 is kept: it overrides a multiplier inherited from a module above.
    assert plan.with_lr_mult("layer4.0", 1.0).lr_mults() == {
        "layer4": 0.1,
        "fc": 2.0,
        "layer4.0": 1.0,
    }
    again = FreezePlan.from_json(plan.to_json())
    assert again == plan and again.lr_mult == [LrMult("layer4", 0.1), LrMult("fc", 2.0)]
    # Edits of the selection keep the multipliers.
    assert plan.with_selection("train-all", [], []).lr_mults() == plan.lr_mults()
    with pytest.raises(SelectorError, match="plan.lr_mult"):
        FreezePlan.from_dict({"lr_mult": [{"path": "fc", "mult": 0}]})
    model = timm.create_model("test_resnet", num_classes=3)
    tree = ModelTree(model)
    check_lr_mult(plan, tree)
    with pytest.raises(SelectorError, match="layer4"):
        check_lr_mult(FreezePlan(lr_mult=[LrMult("layer5", 0.5)]), tree)


def test_an_unfrozen_layer_trains_at_its_multiplier() -> None:
    model, tree = _vit()
    settings = TrainSettings(optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.1)
    groups = param_groups(model, tree, settings, {"blocks.0": 0.25})
    optimizer = build_optimizer(groups, settings)
    LrSchedule(optimizer, TrainSettings(lr=0.1, schedule="none"), 10, 0, 5)
    apply_plan(model, FreezePlan(preset="head-only"), tree)
    restrict_to_trainable(optimizer, groups)
    apply_plan(model, FreezePlan(), tree)  # unfrozen mid-run
    restrict_to_trainable(optimizer, groups)
    p = dict(model.named_parameters())["blocks.0.mlp.fc1.weight"]
    q = dict(model.named_parameters())["blocks.1.mlp.fc1.weight"]
    before_p, before_q = p.detach().clone(), q.detach().clone()
    optimizer.zero_grad(set_to_none=True)
    _loss(model).backward()
    optimizer.step()
    assert torch.allclose(before_p - p, 0.1 * 0.25 * p.grad, atol=1e-7)
    assert torch.allclose(before_q - q, 0.1 * q.grad, atol=1e-7)


# ---------------------------------------------------------------------- runs
def _step_rates(run: Path) -> list[tuple[int, float, dict | None]]:
    return [
        (r["step"], r["lr"], r.get("lrs"))
        for r in read_jsonl(RunFolder(run).metrics)
        if r.get("type") == "step"
    ]


@pytest.mark.parametrize(
    "recipe",
    [
        {"schedule": "cosine", "lr_cycles": 2, "optimizer": "lamb"},
        # val_loss barely moves at this rate: plateau decays after every epoch but the first.
        {
            "schedule": "plateau",
            "lr_patience": 0,
            "lr_decay_rate": 0.5,
            "early_stop_metric": "val_loss",
            "lr": 1e-7,
            "epochs": 3,
        },
    ],
    ids=["cosine-cycles", "plateau"],
)
def test_a_resumed_run_trains_with_the_uninterrupted_rates(
    demo_data: Path, tmp_path: Path, recipe: dict
) -> None:
    plan = FreezePlan(lr_mult=[LrMult("layer1", 0.5)])
    settings = {"warmup_epochs": 0.5, "head_lr_mult": 10.0, **recipe}
    whole = tmp_path / "whole"
    assert (
        Trainer(make_project(demo_data, plan=plan, **settings), whole).run().reason == "completed"
    )
    cut = tmp_path / "cut"
    epochs = int(settings.get("epochs", 2))  # type: ignore[call-overload]
    limit = 8 * (epochs - 1) + 3  # into the last epoch (8 steps per epoch)
    first = Trainer(make_project(demo_data, plan=plan, max_steps=limit, **settings), cut).run()
    assert first.reason == "step-limit"
    resumed = Trainer(
        make_project(demo_data, plan=plan, **settings),
        cut,
        resume=True,
        resume_changes={"train.max_steps": None},
    ).run()
    assert resumed.reason == "completed" and resumed.frozen_check_passed
    rates = _step_rates(whole)
    assert len(rates) == 8 * epochs
    assert _step_rates(cut) == rates
    # Each group's rate by its name, the per-layer multiplier's group among them.
    _, lr, lrs = rates[-1]
    assert lrs is not None and {"x1", "x10", "x0.5"} <= set(lrs)
    assert lrs["x10"] == pytest.approx(10 * lrs["x1"]) and lrs["x1"] == pytest.approx(lr)
    assert lrs["x0.5"] == pytest.approx(0.5 * lrs["x1"])
    if recipe["schedule"] == "plateau":
        # Decayed once after epoch 2 (epoch 1 sets the best), before the cut: kept on resume.
        assert rates[-1][1] == pytest.approx(0.5 * rates[8][1])


def test_lr_mult_flag_lands_in_the_plan_and_repeats(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "timm:test_resnet", "--data", str(demo_data), "--out", str(out)]
    code = main(
        [
            *args,
            *FAST,
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--preset",
            "head-only",
            "--unfreeze-schedule",
            "0:train-all",
            "--lr-mult",
            "layer4=0.25",
            "--lr-mult",
            "fc=3",
            "--optimizer",
            "nadamw",
            "--schedule",
            "step",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    project = Project.load(out / "project.json")
    assert project.plan.lr_mults() == {"layer4": 0.25, "fc": 3.0}
    assert project.train.optimizer == "nadamw" and project.train.schedule == "step"
    assert {"x0.25", "x3", "x1"} <= set(_step_rates(out)[0][2] or {})
    # A resume keeps the plan's multipliers: --lr-mult is refused like the other plan flags.
    assert main(["train", "--resume", str(out), "--lr-mult", "fc=2", "--quiet"]) != 0
    assert "--lr-mult" in capsys.readouterr().err
    with pytest.raises(SelectorError, match="layer4"):
        Trainer(
            make_project(demo_data, plan=FreezePlan(lr_mult=[LrMult("layer9", 2.0)])),
            tmp_path / "bad",
        ).run()
    assert not (tmp_path / "bad").exists()


def test_a_schedule_phase_unfreezes_layers_with_their_multiplier(
    demo_data: Path, tmp_path: Path
) -> None:
    plan = FreezePlan(
        preset="head-only",
        schedule=[Phase(epoch=1, preset="train-all")],
        lr_mult=[LrMult("layer4", 0.5)],
    )
    run = tmp_path / "run"
    result = Trainer(make_project(demo_data, plan=plan, schedule="none"), run).run()
    assert result.reason == "completed" and result.frozen_check_passed
    rates = _step_rates(run)
    assert all(lrs and lrs["x0.5"] == pytest.approx(0.5 * lr) for _, lr, lrs in rates)


@pytest.mark.parametrize("optimizer", ["lookahead_adamw", "lamb", "adan"])
def test_a_resumed_run_with_step_counting_optimizer_equals_the_uninterrupted_one(
    demo_data: Path, tmp_path: Path, optimizer: str
) -> None:
    """Lookahead syncs its slow weights every k steps; Lamb and Adan count steps per group for
    their bias correction: a resume mid-run must go on counting as the run that never
    stopped (same losses, same weights)."""
    from safetensors.torch import load_file

    settings = {"optimizer": optimizer, "epochs": 2}  # lookahead k = 6: syncs at 6 and 12
    whole = tmp_path / "whole"
    project = make_project(demo_data, **settings)
    assert Trainer(project, whole).run().reason == "completed"
    cut = tmp_path / "cut"
    assert Trainer(make_project(demo_data, max_steps=3, **settings), cut).run().reason == (
        "step-limit"
    )
    resumed = Trainer(
        make_project(demo_data, **settings),
        cut,
        resume=True,
        resume_changes={"train.max_steps": None},
    ).run()
    assert resumed.reason == "completed"
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
