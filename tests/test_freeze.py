"""Freeze plans: selectors, presets, counts, JSON, BatchNorm policy, tied parameters, code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from freezer_app.core import timeline
from freezer_app.core.catalog import load_model
from freezer_app.core.errors import SelectorError
from freezer_app.core.freeze import (
    FreezePlan,
    Phase,
    apply_plan,
    available_presets,
    edit_plan,
    plan_code,
    resolve,
    select,
)
from freezer_app.core.tree import ModelTree, State


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def user_model(factory_file: Path) -> nn.Module:
    return load_model(f"{factory_file}:build", num_classes=3).module


def test_module_path_never_matches_a_longer_sibling(user_model: nn.Module) -> None:
    apply_plan(user_model, FreezePlan(freeze=["blocks.1"]))
    frozen = {n for n, p in user_model.named_parameters() if not p.requires_grad}
    assert frozen == {"blocks.1.weight", "blocks.1.bias"}  # not blocks.10 / blocks.11


def test_glob_type_and_parameter_selectors(user_model: nn.Module) -> None:
    tree = ModelTree(user_model)
    names = [p.name for p in tree.params]

    def covered(sel: str) -> set[str]:
        return {names[i] for i in select(tree, sel)}

    assert covered("blocks.[0-2]") == {
        f"blocks.{i}.{w}" for i in range(3) for w in ("weight", "bias")
    }
    assert covered("*") == set(names)
    assert covered("*.bias") == {n for n in names if n.endswith(".bias")}
    assert covered("type:BatchNorm2d") == {"features.1.weight", "features.1.bias"}
    # type: matches subclasses too, as isinstance would.
    assert covered("type:Module") == set(names)
    assert covered("classifier.weight") == {"classifier.weight"}


def test_selector_matching_nothing_names_the_closest_paths(user_model: nn.Module) -> None:
    tree = ModelTree(user_model)
    with pytest.raises(SelectorError) as e:
        select(tree, "block.1")
    assert "blocks.1" in str(e.value)
    with pytest.raises(SelectorError, match="blocks"):
        select(tree, "blocks.99")
    with pytest.raises(SelectorError, match="type:BatchNorm2d"):
        select(tree, "type:BatchNorm")
    with pytest.raises(SelectorError, match="matches no module"):
        select(tree, "head.*")


def test_order_is_preset_then_freeze_then_unfreeze() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    plan = FreezePlan(preset="head-only", freeze=["fc"], unfreeze=["layer4", "fc.bias"])
    apply_plan(model, plan)
    assert _trainable(model) == {
        n for n, _ in model.named_parameters() if n.startswith("layer4.")
    } | {"fc.bias"}


@pytest.mark.parametrize(
    "name", ["test_resnet", "test_vit", "test_convnext", "test_efficientnet", "test_byobnet"]
)
def test_presets_on_timm_models(name: str) -> None:
    model = timm.create_model(name, num_classes=3)
    tree = ModelTree(model)
    head = model.pretrained_cfg["classifier"]
    apply_plan(model, FreezePlan(preset="head-only"), tree)
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
    n_stages = len(tree.layout.stages)
    assert n_stages >= 3
    stem_prefix = next(iter(tree.layout.stem)).split(".")[0]
    apply_plan(model, FreezePlan(preset="freeze-stages:1"), tree)
    first_stage = set(tree.layout.stages[0])
    assert not (first_stage & _trainable(model))
    assert not any(n.startswith(stem_prefix) for n in _trainable(model))
    assert set(tree.layout.stages[1]) <= _trainable(model)
    apply_plan(model, FreezePlan(preset="train-last:1"), tree)
    assert _trainable(model) == set(tree.layout.stages[-1]) | set(tree.layout.head)
    apply_plan(model, FreezePlan(preset=f"freeze-stages:{n_stages}"), tree)
    assert _trainable(model) == set(tree.layout.head)
    apply_plan(model, FreezePlan(preset="train-all"), tree)
    assert len(_trainable(model)) == len(list(model.parameters()))


def test_presets_on_a_torchvision_model_without_weights() -> None:
    model = load_model("torchvision:resnet18", num_classes=4).module
    tree = ModelTree(model)
    assert [tree.stage_label(i) for i in range(4)] == ["layer1", "layer2", "layer3", "layer4"]
    apply_plan(model, FreezePlan(preset="head-only"), tree)
    assert _trainable(model) == {"fc.weight", "fc.bias"}
    apply_plan(model, FreezePlan(preset="freeze-stages:2"), tree)
    assert {n.split(".")[0] for n in _trainable(model)} == {"layer3", "layer4", "fc"}
    apply_plan(model, FreezePlan(preset="train-last:2"), tree)
    assert {n.split(".")[0] for n in _trainable(model)} == {"layer3", "layer4", "fc"}
    names = [p.name for p in available_presets(tree)]
    assert names[:2] == ["train-all", "head-only"]
    assert "freeze-stages:4" in names and "train-last:4" in names


def test_presets_on_a_user_module(user_model: nn.Module) -> None:
    tree = ModelTree(user_model)
    assert tree.layout.head == ["classifier.weight", "classifier.bias"]
    assert [tree.stage_label(i) for i in range(len(tree.layout.stages))] == ["features", "blocks"]
    apply_plan(user_model, FreezePlan(preset="train-last:1"), tree)
    assert {n.split(".")[0] for n in _trainable(user_model)} == {"blocks", "classifier"}


@pytest.mark.parametrize(
    "preset", ["freeze-stages:9", "train-last:x", "head_only", "freeze-stages"]
)
def test_bad_presets_say_what_is_valid(preset: str) -> None:
    tree = ModelTree(timm.create_model("test_resnet"))
    with pytest.raises(SelectorError) as e:
        resolve(FreezePlan(preset=preset), tree)
    assert "4" in str(e.value) or "Presets:" in str(e.value)


def test_json_round_trip() -> None:
    plan = FreezePlan(
        preset="freeze-stages:2",
        freeze=["type:BatchNorm2d"],
        unfreeze=["layer2.0.conv1"],
        bn_policy="update",
        schedule=[Phase(epoch=1, preset="train-last:1"), Phase(epoch=3, preset="train-all")],
    )
    again = FreezePlan.from_json(plan.to_json())
    assert again == plan
    # Epoch-keyed phases start at the first step of the epoch after E epochs (10 steps each).
    assert timeline.plan_at(again, 1, 10).preset == "freeze-stages:2"
    assert timeline.plan_at(again, 11, 10).preset == "train-last:1"
    assert timeline.plan_at(again, 21, 10).preset == "train-last:1"
    assert timeline.plan_at(again, 31, 10).preset == "train-all"
    with pytest.raises(SelectorError, match="Unknown key"):
        FreezePlan.from_dict({"presett": "x"})


def test_counts_and_tri_state() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    tree = ModelTree(model)
    apply_plan(model, FreezePlan(preset="train-all", freeze=["layer1.0.conv1"]), tree)
    total = sum(p.numel() for p in model.parameters())
    assert tree.total_params == total
    assert tree.trainable_params == total - model.layer1[0].conv1.weight.numel()
    assert tree.state_of(tree.nodes["layer1.0.conv1"]) is State.FROZEN
    assert tree.state_of(tree.nodes["layer1.0"]) is State.PARTIAL
    assert tree.state_of(tree.nodes["layer1"]) is State.PARTIAL
    assert tree.state_of(tree.root) is State.PARTIAL
    assert tree.state_of(tree.nodes["layer2"]) is State.TRAINABLE
    assert tree.state_of(tree.nodes["layer1.0.act1"]) is State.NONE
    node = tree.nodes["layer1"]
    assert tree.trainable_in(node) == sum(p.numel() for p in model.layer1.parameters()) - 9216


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


def test_frozen_batchnorm_keeps_statistics_after_model_train() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    apply_plan(model, FreezePlan(preset="head-only"))
    before = _bn_buffers(model)
    model.train()  # what every training loop calls at the start of an epoch
    for _ in range(2):
        model(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(before[n], b) for n, b in _bn_buffers(model).items())
    assert model.bn1.training is False
    # With "update", the same layers do learn their statistics.
    apply_plan(model, FreezePlan(preset="head-only", bn_policy="update"))
    model.train()
    model(torch.randn(4, 3, 64, 64))
    assert not torch.equal(before["bn1.running_mean"], model.bn1.running_mean)


def test_trainable_batchnorm_still_updates() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    apply_plan(model, FreezePlan(preset="train-last:1"))
    before = _bn_buffers(model)
    model.train()
    model(torch.randn(4, 3, 64, 64))
    after = _bn_buffers(model)
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert not torch.equal(before["layer4.0.bn1.running_mean"], after["layer4.0.bn1.running_mean"])


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6, bias=False)
        self.body = nn.Linear(6, 6)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.embed.weight  # tied


def test_tied_parameters_are_counted_once_and_frozen_together() -> None:
    model = TiedNet()
    tree = ModelTree(model)
    assert tree.total_params == sum(p.numel() for p in model.parameters()) == 24 + 42
    info = tree.params[tree.name_to_index["out.weight"]]
    assert info.name == "embed.weight" and info.aliases == ["out.weight"]
    apply_plan(model, FreezePlan(freeze=["out"]), tree)
    assert not model.embed.weight.requires_grad
    assert tree.state_of(tree.nodes["embed"]) is State.FROZEN
    assert tree.requires_grad() == {"embed.weight": False, "body.weight": True, "body.bias": True}


def test_tied_parameters_are_shown_as_shared() -> None:
    from freezer_app.textview import render_tree

    text = render_tree(ModelTree(TiedNet()), show_params=True)
    assert "shares embed.weight" in text
    assert "shared with out.weight" in text


def test_generated_code_reproduces_the_plan_exactly() -> None:
    for plan in [
        FreezePlan(preset="head-only", unfreeze=["layer4"]),
        FreezePlan(freeze=["type:BatchNorm2d", "layer1"]),
        FreezePlan(freeze=["*"]),
        FreezePlan(),
    ]:
        model = timm.create_model("test_resnet", num_classes=3)
        tree = ModelTree(model)
        mask = resolve(plan, tree)
        code = plan_code(tree, mask, plan)
        fresh = timm.create_model("test_resnet", num_classes=3)
        namespace = {"model": fresh, "torch": torch}
        exec(code, namespace)
        apply_plan(model, plan, tree)
        assert _trainable(fresh) == _trainable(model), plan
        if plan.preset == "head-only":
            fresh.train()
            before = fresh.bn1.running_mean.clone()
            fresh(torch.randn(2, 3, 32, 32))
            assert torch.equal(before, fresh.bn1.running_mean)
        assert len(namespace["params"]) == len(_trainable(model))


def test_edits_always_give_the_intended_selection() -> None:
    """Random point-and-click edits: the resulting plan selects exactly what was clicked."""
    model = timm.create_model("test_resnet", num_classes=3)
    tree = ModelTree(model)
    rng = np.random.default_rng(0)
    paths = [p for p, n in tree.nodes.items() if p and n.indices.size] + ["*", "type:BatchNorm2d"]
    plan = FreezePlan(preset="head-only")
    expected = resolve(plan, tree)
    longest = 0
    for _ in range(200):
        sel = paths[rng.integers(len(paths))]
        trainable = bool(rng.integers(2))
        plan = edit_plan(tree, plan, sel, trainable)
        expected[select(tree, sel)] = trainable
        assert np.array_equal(resolve(plan, tree), expected)
        longest = max(longest, len(plan.freeze) + len(plan.unfreeze))
    # test_resnet has 40 layers; even scattered random edits never need half of them listed.
    assert longest <= 20


def test_edit_appends_a_readable_selector() -> None:
    tree = ModelTree(timm.create_model("test_resnet", num_classes=3))
    plan = edit_plan(tree, FreezePlan(preset="head-only"), "layer4", True)
    assert plan == FreezePlan(preset="head-only", unfreeze=["layer4"])
    plan = edit_plan(tree, plan, "layer4", False)
    assert plan == FreezePlan(preset="head-only")


def test_unfreezing_a_batchnorm_lets_it_train_again_at_once() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    model.train()
    apply_plan(model, FreezePlan(preset="head-only"))
    model(torch.randn(2, 3, 32, 32))
    assert model.bn1.training is False
    apply_plan(model, FreezePlan(preset="train-all"))  # mid-epoch: no model.train() follows
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert model.bn1.training is True
    assert not torch.equal(before, model.bn1.running_mean)


def test_plan_files_with_wrong_types_are_clear_errors() -> None:
    with pytest.raises(SelectorError, match="plan.freeze must be a list of text"):
        FreezePlan.from_dict({"freeze": "conv1"})
    with pytest.raises(SelectorError, match=r"Unknown key\(s\) in plan.schedule\[0\]: presett"):
        FreezePlan.from_dict({"schedule": [{"epoch": 1, "presett": "train-all"}]})
