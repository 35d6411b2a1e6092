"""The feature cache: the frozen prefix computed once per image, the rest trained from it."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import Recorder, make_project

from freezer_app.core.events import FeatureCacheEvent, Finished
from freezer_app.core.feature_cut import ForwardGraph, check_cut
from freezer_app.core.feature_store import FeatureStore, list_caches
from freezer_app.core.freeze import Edit, FreezePlan, Phase, apply_plan
from freezer_app.core.train.trainer import Trainer
from freezer_app.core.tree import ModelTree


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cut(model: torch.nn.Module, preset: str, bn_policy: str = "frozen", size: int = 32):
    tree = ModelTree(model)
    apply_plan(model, FreezePlan(preset=preset, bn_policy=bn_policy), tree)
    graph = ForwardGraph(model, tree)
    cuts, stop = graph.cuts(tree.trainable)
    if not cuts:
        return None, stop
    cut = cuts[0]
    prefix = graph.prefix(cut)
    problem, share = check_cut(graph, cut, size, torch.device("cpu"))
    assert problem == "" and 0 < share <= 1
    return cut, prefix(torch.zeros(1, 3, size, size)).shape


# ---------------------------------------------------------------------- where the cut is
def test_timm_cnn_cuts_at_the_pooled_features_and_at_stage_boundaries() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    cut, shape = _cut(model, "head-only")
    assert "global_pool" in cut.label and "classifier's input" in cut.label
    assert tuple(shape) == (1, model.num_features)  # pooled: one vector per image
    # The features timm's own API gives for the classifier (forward_head(pre_logits=True)).
    tree = ModelTree(model)
    graph = ForwardGraph(model, tree)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(graph.prefix(cut)(x), expected)
    cut, shape = _cut(model, "freeze-stages:2")
    assert cut.label.startswith("after layer2.")  # the end of the second stage
    assert len(shape) == 4


def test_vit_cuts_at_the_pre_logits_token_and_after_a_block() -> None:
    model = timm.create_model("test_vit", num_classes=3)
    size = model.default_cfg["input_size"][-1]
    cut, shape = _cut(model, "head-only", size=size)
    assert "classifier's input" in cut.label and tuple(shape) == (1, model.num_features)
    cut, shape = _cut(model, "freeze-stages:2", size=size)
    assert len(shape) == 3  # tokens after the last frozen block


def test_torchvision_models_cut_before_their_classifier() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    cut, shape = _cut(model, "head-only", size=64)
    assert cut.label == "after flatten, the classifier's input" and tuple(shape) == (1, 512)
    cut, _ = _cut(model, "freeze-stages:2", size=64)
    assert cut.label.startswith("after layer2.")
    # EfficientNet: the dropout in `classifier` stays after the cut (it is random in training).
    model = torchvision.models.efficientnet_b0(num_classes=3)
    cut, shape = _cut(model, "head-only", size=64)
    assert cut.label.startswith("after flatten") and tuple(shape) == (1, 1280)


def test_no_cut_when_nothing_frozen_comes_first_or_batch_statistics_are_used(
    demo_data: Path, tmp_path: Path
) -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    cut, why = _cut(model, "train-all")
    assert cut is None and "trains" in why
    # bn_policy update: the frozen BatchNorm layers use the batch's statistics in training,
    # so only the first convolution could be cached: not worth it, and the run says why.
    plan = FreezePlan(preset="head-only", bn_policy="update")
    events = Recorder()
    project = make_project(demo_data, epochs=1, plan=plan)
    assert Trainer(project, tmp_path / "run", on_event=events).run().reason == "completed"
    (event,) = _cache_events(events)
    assert not event.used and "batch statistics" in event.reason and "work" in event.reason


def test_stochastic_depth_stays_after_the_cut() -> None:
    model = timm.create_model("test_vit", num_classes=3, drop_path_rate=0.5)
    size = model.default_cfg["input_size"][-1]
    cut, _ = _cut(model, "head-only", size=size)
    # Block 0 has a rate of 0; the next blocks' DropPath is random in training.
    assert cut is not None and cut.label.startswith(("after blocks.0.", "after patch", "after pos"))


# ---------------------------------------------------------------------- training with it
def _epochs(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r.get("type") == "epoch"]


def _assert_same_losses(a: Path, b: Path) -> None:
    ea, eb = _epochs(a), _epochs(b)
    assert len(ea) == len(eb)
    for x, y in zip(ea, eb):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert x[key] == pytest.approx(y[key], rel=1e-5), (key, x, y)


def _cache_events(recorder: Recorder) -> list[FeatureCacheEvent]:
    return [e for e in recorder.events if isinstance(e, FeatureCacheEvent)]


def _cached_and_plain(project, tmp_path: Path) -> tuple[Finished, Recorder]:
    """The project trained with the feature cache (into tmp_path/cached) and without it (into
    tmp_path/plain); every epoch's losses and accuracy must agree."""
    off = copy.deepcopy(project)
    off.train.feature_cache = "off"
    events = Recorder()
    result = Trainer(project, tmp_path / "cached", on_event=events).run()
    assert result.reason == "completed", result.message
    assert Trainer(off, tmp_path / "plain").run().reason == "completed"
    _assert_same_losses(tmp_path / "cached", tmp_path / "plain")
    return result, events


@pytest.mark.parametrize("preset", ["head-only", "freeze-stages:1"])
def test_cached_training_gives_the_uncached_losses(
    demo_data: Path, tmp_path: Path, preset: str
) -> None:
    project = make_project(demo_data, epochs=3, plan=FreezePlan(preset=preset))
    result, events = _cached_and_plain(project, tmp_path)
    assert result.frozen_check_passed
    cache = _cache_events(events)
    assert cache[0].used and cache[-1].images == cache[-1].total == 150
    assert cache[-1].fill_seconds is not None and cache[-1].fill_seconds > 0
    assert result.feature_cache["used"] and result.feature_cache["cut"] == cache[0].cut
    plans = read_jsonl(tmp_path / "cached" / "plans.jsonl")
    assert plans[0]["feature_cache"]["used"] is True
    logged = [e["feature_cache"] for e in _epochs(tmp_path / "cached")]
    assert [e["added"] for e in logged] == [150, 0, 0] and logged[0]["fill_seconds"] > 0
    assert all(e["images"] == 150 and e["ram_bytes"] > 0 for e in logged)
    off_plans = read_jsonl(tmp_path / "plain" / "plans.jsonl")
    assert off_plans[0]["feature_cache"] == {**off_plans[0]["feature_cache"], "used": False}


def test_later_epochs_load_no_images(demo_data: Path, tmp_path: Path, monkeypatch) -> None:
    from freezer_app.core import data

    loaded: list[int] = []
    real = data.ImageItems.__getitem__

    def counting(self, key):
        loaded.append(1)
        return real(self, key)

    monkeypatch.setattr(data.ImageItems, "__getitem__", counting)
    project = make_project(demo_data, epochs=3, plan=FreezePlan(preset="head-only"))
    project.data.image_cache = 0  # so only the feature cache can spare the decoding
    assert Trainer(project, tmp_path / "run").run().reason == "completed"
    assert len(loaded) == 150  # every image once, in the filling epoch


def test_a_mid_run_unfreeze_falls_back_and_keeps_the_losses(
    demo_data: Path, tmp_path: Path
) -> None:
    # Head-only for epoch 1, then a phase that trains layer4 too (a shallower cut), then an
    # edit in the middle of epoch 3 that trains everything (no cut: uncached).
    plan = FreezePlan(
        preset="head-only",
        schedule=[Phase(epoch=1, preset="train-last:1")],
        edits=[Edit(step=2 * 8 + 3, preset="train-all")],
    )
    project = make_project(demo_data, epochs=3, batch_size=16, plan=plan)
    _, events = _cached_and_plain(project, tmp_path)
    cache = _cache_events(events)
    used = [(e.step, e.used) for e in cache]
    assert used[0] == (1, True)
    assert any(step > 1 and u for step, u in used[1:])  # the shallower cut
    assert used[-1] == (19, False)
    assert "uncached" in cache[-1].message
    plans = read_jsonl(tmp_path / "cached" / "plans.jsonl")
    assert [p["feature_cache"]["used"] for p in plans] == [True, True, False]
    assert plans[1]["feature_cache"]["cut"] != plans[0]["feature_cache"]["cut"]


def test_a_second_run_starts_from_the_first_runs_cache(demo_data: Path, tmp_path: Path) -> None:
    project = make_project(demo_data, epochs=2, plan=FreezePlan(preset="head-only"))
    assert Trainer(copy.deepcopy(project), tmp_path / "first").run().reason == "completed"
    events = Recorder()
    assert Trainer(project, tmp_path / "second", on_event=events).run().reason == "completed"
    first = _cache_events(events)[0]
    assert first.used and first.images == first.total and first.fill_seconds is None
    assert "earlier run" in first.message
    assert _epochs(tmp_path / "second")[0]["feature_cache"]["added"] == 0
    _assert_same_losses(tmp_path / "first", tmp_path / "second")
    assert len(list_caches()) == 1


# ---------------------------------------------------------------------- the store
def _images(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(b"x" * (10 + i))
        paths.append(str(p))
    return paths


KEY = {"architecture": "timm:test", "cut": "x", "weights": "w"}


def test_a_changed_image_is_computed_again(tmp_path: Path) -> None:
    images = _images(tmp_path, 5)
    rows = torch.randn(5, 4)
    store = FeatureStore(KEY, images, (4,), torch.float32, 2**20)
    store.put([0, 1, 2, 3, 4], rows)
    store.persist()
    store.close()
    Path(images[2]).write_bytes(b"changed content")
    again = FeatureStore(KEY, images, (4,), torch.float32, 2**20)
    assert again.reused == 4 and not again.holds([2]) and again.holds([0, 1, 3, 4])
    assert torch.equal(again.get([0, 1, 3, 4]), rows[[0, 1, 3, 4]])
    # Another key (other weights) shares nothing.
    other = FeatureStore({**KEY, "weights": "v"}, images, (4,), torch.float32, 2**20)
    assert other.reused == 0


def test_rows_beyond_the_budget_spill_to_a_memory_mapped_file(tmp_path: Path) -> None:
    images = _images(tmp_path, 6)
    rows = torch.randn(6, 3, 2)
    store = FeatureStore(KEY, images, (3, 2), torch.float32, ram_bytes=2 * 6 * 4)
    assert store.ram_rows == 2
    store.put([5, 0, 3], rows[[5, 0, 3]])
    store.put([1, 2, 4], rows[[1, 2, 4]])
    assert torch.equal(store.get(list(range(6))), rows)
    assert store.ram_bytes == 2 * 24 and store.disk_bytes == 4 * 24
    spill = [p for p in store.folder.iterdir() if p.name.startswith(".features")]
    assert len(spill) == 1  # a temporary name until the index names it
    store.persist()
    names = sorted(p.name for p in store.folder.iterdir())
    assert len(names) == 2 and names[1] == "index.json" and names[0].endswith(".npy")
    store.close()
    again = FeatureStore(KEY, images, (3, 2), torch.float32, ram_bytes=0)
    assert again.reused == 6 and torch.equal(again.get(list(range(6))), rows)


def test_a_partly_filled_store_lists_only_complete_rows(tmp_path: Path) -> None:
    images = _images(tmp_path, 4)
    store = FeatureStore(KEY, images, (2,), torch.bfloat16, 2**20)
    store.put([1, 3], torch.randn(2, 2))
    store.persist()
    index = json.loads((store.folder / "index.json").read_text())
    assert sorted(r[3] for r in index["rows"]) == [1, 3]
    assert index["dtype"] == "torch.bfloat16"
    store.close()
    again = FeatureStore(KEY, images, (2,), torch.bfloat16, 2**20)
    assert again.reused == 2 and again.get([1, 3]).dtype == torch.bfloat16


def test_an_unwritable_cache_folder_keeps_the_run_going(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FREEZER_CACHE_DIR", str(blocked))
    project = make_project(demo_data, epochs=2, plan=FreezePlan(preset="head-only"))
    project.train.feature_cache_budget = 0  # every row must go to the (impossible) file
    events = Recorder()
    result = Trainer(project, tmp_path / "run", on_event=events).run()
    assert result.reason == "completed", result.message
    warnings = [e.message for e in events.events if getattr(e, "level", "") == "warning"]
    assert any("feature cache" in w for w in warnings)


def test_a_failed_index_write_keeps_the_run_going(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    from freezer_app.core import feature_store
    from freezer_app.core.files import WriteError

    def full_disk(path, data):
        raise WriteError("Disk full while writing index.json.", "Free some space.")

    monkeypatch.setattr(feature_store, "write_json", full_disk)
    project = make_project(demo_data, epochs=2, plan=FreezePlan(preset="head-only"))
    events = Recorder()
    result = Trainer(project, tmp_path / "run", on_event=events).run()
    assert result.reason == "completed", result.message
    warnings = [e.message for e in events.events if getattr(e, "level", "") == "warning"]
    assert any("Disk full" in w and "this run only" in w for w in warnings)


def test_augmented_training_caches_the_validation_images_only(
    demo_data: Path, tmp_path: Path
) -> None:
    project = make_project(demo_data, epochs=2, plan=FreezePlan(preset="head-only"))
    project.data.augmentation = "light"
    _, events = _cached_and_plain(project, tmp_path)
    last = _cache_events(events)[-1]
    assert last.used and not last.training_cached and last.total == 30 and last.images == 30


def test_budget_setting_spills_a_run_to_disk(demo_data: Path, tmp_path: Path) -> None:
    project = make_project(demo_data, epochs=2, plan=FreezePlan(preset="head-only"))
    project.train.feature_cache_budget = 0
    events = Recorder()
    assert Trainer(project, tmp_path / "run", on_event=events).run().reason == "completed"
    last = _cache_events(events)[-1]
    assert last.ram_bytes == 0 and last.disk_bytes > 0
    assert os.path.isdir(last.folder)
    assert np.load(next(Path(last.folder).glob("features-*.npy")), mmap_mode="r").shape[0] == 150


# ---------------------------------------------------------------------- what review found
def test_attention_dropout_before_the_cut_is_found_by_the_training_probe() -> None:
    model = timm.create_model("test_vit", num_classes=3, attn_drop_rate=0.3)
    size = model.default_cfg["input_size"][-1]
    tree = ModelTree(model)
    apply_plan(model, FreezePlan(preset="head-only"), tree)
    graph = ForwardGraph(model, tree)
    cut = graph.cuts(tree.trainable)[0][0]
    problem, _ = check_cut(graph, cut, size, torch.device("cpu"))
    assert "differently in training" in problem


class _Net(torch.nn.Module):
    def __init__(self, slope: float, num_classes: int = 3) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.LeakyReLU(slope),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _feature_cache(model: torch.nn.Module, tmp_path: Path, items: list[tuple[str, int]]):
    from freezer_app.core.train.feature_cache import FeatureCache

    tree = ModelTree(model)
    torch.manual_seed(0)
    apply_plan(model, FreezePlan(preset="head-only"), tree)
    cache = FeatureCache(
        model, tree, "auto", 16, "net.py:build", "t", 16, items, [], False,
        torch.device("cpu"), None, False,
    )  # fmt: skip
    cache.follow_plan(1)
    return cache


def test_a_layer_setting_is_part_of_the_key(tmp_path: Path) -> None:
    items = [(p, 0) for p in _images(tmp_path, 2)]
    torch.manual_seed(0)
    a = _feature_cache(_Net(0.1), tmp_path, items)
    torch.manual_seed(0)
    b = _feature_cache(_Net(0.9), tmp_path, items)
    assert a.store is not None and b.store is not None
    assert a.store.key["weights"] == b.store.key["weights"]
    assert a.store.key["code"] != b.store.key["code"]


def test_a_substituted_image_is_not_cached_under_the_wrong_label(tmp_path: Path) -> None:
    items = [(p, i % 2) for i, p in enumerate(_images(tmp_path, 4))]
    cache = _feature_cache(_Net(0.1), tmp_path, items)
    x = torch.randn(4, 3, 16, 16)
    # Image 2 could not be decoded: the loader gave image 3 in its place, with label 1.
    cache.features("train", [0, 1, 2, 3], lambda: x, torch.tensor([0, 1, 1, 1]))
    assert cache.store.holds([0, 1, 3]) and not cache.store.holds([2])


def test_a_damaged_index_is_ignored(tmp_path: Path) -> None:
    images = _images(tmp_path, 3)
    store = FeatureStore(KEY, images, (2,), torch.float32, 2**20)
    store.put([0, 1, 2], torch.randn(3, 2))
    store.persist()
    store.close()
    index = store.folder / "index.json"
    data = json.loads(index.read_text())
    for damage in ({"rows": [[None, "x", 1, 0]]}, {"shape": "2"}, {"file": 3}, {"rows": 5}):
        index.write_text(json.dumps({**data, **damage}))
        again = FeatureStore(KEY, images, (2,), torch.float32, 2**20)
        assert again.reused == 0
    index.write_text(json.dumps(data))
    assert FeatureStore(KEY, images, (2,), torch.float32, 2**20).reused == 3
    # Rows of another shape under the same name (a damaged file) are not read either.
    assert FeatureStore(KEY, images, (3,), torch.float32, 2**20).reused == 0


def test_frozen_check_digests_channels_last_weights() -> None:
    from freezer_app.core.telemetry import tensor_digest

    weight = torch.randn(8, 4, 1, 1)
    assert tensor_digest(weight.to(memory_format=torch.channels_last)) == tensor_digest(weight)
