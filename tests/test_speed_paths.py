"""The fast paths keep behaviour exact: the image cache, the device-side normalisation, the
background writer, checkpoint weights shared by links, telemetry without a weight copy, frozen
norms held in eval without a hook, torch.compile wiring, and (on CUDA) no host-device
synchronisation on steps that do not report. No test here measures time."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Recorder, make_project
from PIL import Image
from safetensors.torch import load_file

from freezer_app.core import events as ev
from freezer_app.core.data import (
    DeviceNormalize,
    build_transforms,
    make_loaders,
    scan_folder,
    split_normalize,
)
from freezer_app.core.freeze import FreezePlan, Phase, apply_plan
from freezer_app.core.run_folder import read_jsonl
from freezer_app.core.train import Trainer, checkpoint


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r.get("type") == "step"]


def test_device_normalisation_is_bit_identical_to_the_transform(demo_data: Path) -> None:
    _, eval_tf = build_transforms({"input_size": (3, 24, 24)}, 24, "none")
    head, finish = split_normalize(eval_tf)
    path = next((demo_data / "train" / "circles").iterdir())
    image = Image.open(path).convert("RGB")
    expected = eval_tf(image)
    got = finish(head(image).unsqueeze(0))[0]
    assert head(image).dtype == torch.uint8
    assert torch.equal(got, expected)
    assert isinstance(finish, DeviceNormalize)


def test_a_random_transform_is_not_split_or_cached(demo_data: Path) -> None:
    report = scan_folder(demo_data)
    train_tf, eval_tf = build_transforms({"input_size": (3, 32, 32)}, 32, "light")
    loaders = make_loaders(report, train_tf, eval_tf, 16, 0, 0, cache_bytes=2**30, image_size=32)
    assert loaders.train_cache is None and loaders.train_finish is None
    assert loaders.val_cache is not None  # validation is deterministic: cached
    x = next(loaders.train_batches(0)).x
    assert x.dtype == torch.float32


def test_cached_epochs_train_exactly_as_decoded_ones(demo_data: Path, tmp_path: Path) -> None:
    cached = make_project(demo_data, epochs=3, telemetry_every=5)
    uncached = copy.deepcopy(cached)
    uncached.data.image_cache = 0
    trainer = Trainer(cached, tmp_path / "cached")
    assert trainer.run().reason == "completed"
    assert Trainer(uncached, tmp_path / "uncached").run().reason == "completed"
    assert _losses(tmp_path / "cached") == _losses(tmp_path / "uncached")
    val = [
        r["val_loss"] for r in read_jsonl(tmp_path / "cached" / "metrics.jsonl") if "val_loss" in r
    ]
    val_un = [
        r["val_loss"]
        for r in read_jsonl(tmp_path / "uncached" / "metrics.jsonl")
        if "val_loss" in r
    ]
    assert val == val_un


def test_the_cache_serves_later_epochs_without_the_loader(demo_data: Path) -> None:
    report = scan_folder(demo_data)
    _, eval_tf = build_transforms({"input_size": (3, 32, 32)}, 32, "none")
    loaders = make_loaders(
        report, eval_tf, eval_tf, 16, 0, 0, random_train=False, cache_bytes=2**30, image_size=32
    )
    first = [b.x.clone() for b in loaders.train_batches(0)]
    assert loaders.cached_images()[0] == len(report.train)
    list(loaders.val_batches())
    held, nbytes = loaders.cached_images()
    assert held == len(report.train) + len(report.val) and nbytes == held * 3 * 32 * 32

    loaders.train = object()  # iterating it would fail: every batch must come from the cache
    again = [b.x for b in loaders.train_batches(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_a_small_budget_caches_part_and_decodes_the_rest(demo_data: Path) -> None:
    report = scan_folder(demo_data)
    _, eval_tf = build_transforms({"input_size": (3, 32, 32)}, 32, "none")
    budget = 10 * 3 * 32 * 32 + 50 * 3 * 32 * 32  # all 30 val images, then 30 train images
    loaders = make_loaders(
        report, eval_tf, eval_tf, 16, 0, 0, random_train=False, cache_bytes=budget, image_size=32
    )
    whole = [(b.x.clone(), b.y.clone()) for b in loaders.train_batches(1)]
    list(loaders.val_batches())
    assert loaders.train_cache.capacity == 30 and loaders.val_cache.capacity == 30
    again = [(b.x, b.y) for b in loaders.train_batches(1)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, again))


def test_best_and_final_weights_are_links_of_the_checkpoint_weights(
    demo_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert Trainer(make_project(demo_data, epochs=2), run).run().reason == "completed"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "model" not in ckpt  # the weights are their own file
    weights = run / "checkpoints" / ckpt["weights"]
    assert sorted(p.name for p in (run / "checkpoints").glob("weights-*")) == [weights.name]
    final, best = run / "model.safetensors", run / "checkpoints" / "best.safetensors"
    if os.stat(weights).st_nlink > 1:  # the file system has hard links
        assert os.path.samefile(final, weights)
    restored = checkpoint.load(run / "checkpoints" / "last.pt")["model"]
    saved = load_file(str(final))
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    assert best.is_file()


def test_checkpoint_every_skips_epochs_but_always_writes_the_last(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    steps: list[int] = []
    real = checkpoint.save

    def recording(path, record, *args):
        steps.append(int(record["epoch"]))
        return real(path, record, *args)

    monkeypatch.setattr(checkpoint, "save", recording)
    project = make_project(demo_data, epochs=5, checkpoint_every=2)
    assert Trainer(project, tmp_path / "run").run().reason == "completed"
    assert steps == [2, 4, 5]


def test_a_stopped_run_resumes_from_its_weights_file(demo_data: Path, tmp_path: Path) -> None:
    project = make_project(demo_data, epochs=2, max_steps=5)
    run = tmp_path / "run"
    assert Trainer(project, run).run().reason == "step-limit"
    orphan = run / "checkpoints" / checkpoint.weights_name(99)
    orphan.write_bytes(b"a weights file a killed run left behind")
    project.train.max_steps = None
    result = Trainer(project, run, resume=True, resume_changes={"train.max_steps": None}).run()
    assert result.reason == "completed"
    assert not orphan.exists()
    assert len(list((run / "checkpoints").glob("weights-*"))) == 1


def test_telemetry_keeps_no_copy_of_the_weights_between_reports(
    demo_data: Path, tmp_path: Path
) -> None:
    trainer = Trainer(make_project(demo_data, epochs=1, max_steps=4), tmp_path / "run")
    seen: list[int] = []
    setup = trainer._setup

    def watch() -> None:
        setup()
        probe = trainer.parts.probe
        end = probe.end

        def end_and_look():
            record = end()
            seen.append(len(probe._snap))
            return record

        probe.end = end_and_look

    trainer._setup = watch
    rec = Recorder()
    trainer.emit = rec
    trainer.run()
    assert seen and set(seen) == {0}
    assert len(rec.of(ev.TelemetryEvent)) == 4  # telemetry_every 1


def test_frozen_norms_stay_in_eval_without_a_forward_hook() -> None:
    import timm

    model = timm.create_model("test_resnet", num_classes=3)
    apply_plan(model, FreezePlan(freeze=["conv1", "bn1", "layer1"]))
    assert not model._forward_pre_hooks
    model.train()
    frozen = [m for n, m in model.named_modules() if n.startswith("layer1") and "bn" in n]
    assert frozen and all(not m.training for m in frozen)
    stats = [m.running_mean.clone() for m in frozen]
    model(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, frozen))
    twin = copy.deepcopy(model)  # the guard follows a copy, and guards the copy
    twin.train()
    assert all(
        not m.training for n, m in twin.named_modules() if n.startswith("layer1") and "bn" in n
    )
    apply_plan(model, FreezePlan())  # unfrozen: follows the model's mode again
    model.train()
    assert all(m.training for m in frozen)


def test_compile_wraps_the_model_anew_for_each_plan(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    compiled: list[object] = []

    def fake_compile(model, **kwargs):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    plan = FreezePlan(preset="head-only", schedule=[Phase(1, "train-all")])
    project = make_project(demo_data, epochs=2, compile=True, plan=plan)
    assert Trainer(project, tmp_path / "run").run().reason == "completed"
    # The start (the part after the feature cache's cut: head-only), and the phase of epoch 2
    # (the whole model: nothing is frozen, so nothing is cached).
    assert len(compiled) == 2 and compiled[1] is not compiled[0]
    assert type(compiled[0]).__name__ == "TrainedRest"


def test_a_compile_failure_falls_back_to_eager_with_a_warning(
    demo_data: Path, tmp_path: Path, monkeypatch
) -> None:
    def broken_compile(model, **kwargs):
        def forward(x):
            raise RuntimeError("no C++ compiler found")

        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    rec = Recorder()
    project = make_project(demo_data, epochs=1, compile=True)
    assert Trainer(project, tmp_path / "run", on_event=rec).run().reason == "completed"
    warnings_ = [e.message for e in rec.of(ev.LogEvent) if e.level == "warning"]
    assert any("torch.compile failed" in m and "no C++ compiler" in m for m in warnings_)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_no_host_device_synchronisation_on_steps_that_do_not_report(
    demo_data: Path, tmp_path: Path, amp: str
) -> None:
    """Between two step boundaries: none on a step that does not report, at most one (the
    copy of losses and telemetry) on a step that does."""
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    project = make_project(
        demo_data, epochs=1, batch_size=4, device="cuda", amp=amp, telemetry_every=10, max_steps=25
    )
    trainer = Trainer(project, tmp_path / "run")
    per_step: dict[int, int] = {}
    caught: list[warnings.WarningMessage] = []
    boundary = trainer._boundary
    last = {"step": None, "count": 0}

    def counting_boundary() -> None:
        if last["step"] is not None:
            per_step[last["step"]] = len(caught) - last["count"]
        boundary()
        last["step"], last["count"] = trainer.step + 1, len(caught)

    trainer._boundary = counting_boundary
    with warnings.catch_warnings(record=True) as caught_list:
        warnings.simplefilter("always")
        caught = caught_list
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = trainer.run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert result.reason == "step-limit", result.message
    reporting = {s for s in range(1, 26) if (s - 1) % 10 == 0}
    checked = {s: n for s, n in per_step.items() if 2 <= s <= 24}
    assert checked, "no steps were observed"
    for step, syncs in checked.items():
        allowed = 1 if step in reporting else 0
        assert syncs <= allowed, f"step {step}: {syncs} synchronisations (allowed {allowed})"


def test_the_writer_reports_a_failure_at_the_next_call() -> None:
    from freezer_app.core.files import WriteError
    from freezer_app.core.train.writer import BackgroundWriter

    writer = BackgroundWriter()
    order: list[int] = []
    for i in range(5):
        writer.submit(lambda i=i: order.append(i))

    def fail() -> None:
        raise OSError(28, "No space left on device")

    writer.submit(fail)
    writer.submit(lambda: order.append(99))  # after a failure nothing more is written
    with pytest.raises(WriteError):
        writer.wait()
    with pytest.raises(WriteError):
        writer.submit(lambda: None)
    writer.close()
    assert order == [0, 1, 2, 3, 4]


def test_uint8_batches_on_the_device_match_float_ones() -> None:
    norm = DeviceNormalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8))
    ref = (x.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]
    ).view(1, 3, 1, 1)
    assert torch.equal(norm(x), ref)
    floats = torch.randn(2, 3, 4, 4)
    assert norm(floats) is floats  # already prepared: untouched


@pytest.mark.parametrize("workers", [0, 1])
def test_augmented_training_reuses_decoded_images_exactly(
    demo_data: Path, tmp_path: Path, workers: int
) -> None:
    cached = make_project(demo_data, epochs=2, telemetry_every=5)
    cached.data.augmentation = "light"
    cached.data.workers = workers
    uncached = copy.deepcopy(cached)
    uncached.data.image_cache = 0
    rec = Recorder()
    assert Trainer(cached, tmp_path / "cached", on_event=rec).run().reason == "completed"
    assert Trainer(uncached, tmp_path / "uncached").run().reason == "completed"
    assert _losses(tmp_path / "cached") == _losses(tmp_path / "uncached")
    notes = [e.message for e in rec.of(ev.LogEvent) if e.message.startswith("image cache")]
    assert notes and "120 of 150 images" not in notes[0]  # train decoded + val prepared
    assert "150 of 150 images" in notes[0]


def test_decoded_images_are_read_back_instead_of_decoded(demo_data: Path, monkeypatch) -> None:
    from freezer_app.core import data

    report = scan_folder(demo_data)
    train_tf, eval_tf = build_transforms({"input_size": (3, 32, 32)}, 32, "light")
    loaders = make_loaders(report, train_tf, eval_tf, 16, 0, 0, cache_bytes=2**30, image_size=32)
    list(loaders.train_batches(0))
    decoded = loaders.train.dataset.decoded
    assert decoded.count == len(report.train)
    calls = []
    real = data.load_rgb
    monkeypatch.setattr(data, "load_rgb", lambda p: calls.append(p) or real(p))
    list(loaders.train_batches(1))
    assert calls == []
    image = decoded.get(0)
    assert np.array_equal(np.asarray(image), np.asarray(real(report.train[0][0])))


DROPOUT_NET = """
import torch
from torch import nn


def build(num_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(8, num_classes),
    )
"""


def test_dropout_runs_repeat_exactly_whether_or_not_the_cache_holds_an_epoch(
    demo_data: Path, tmp_path: Path
) -> None:
    """The loaders draw no random numbers from the global generator: dropout sees the same
    ones with the cache on, off, or after a resume."""
    factory = tmp_path / "dropout_net.py"
    factory.write_text(DROPOUT_NET)
    cached = make_project(demo_data, epochs=3, model=f"{factory}:build")
    uncached = copy.deepcopy(cached)
    uncached.data.image_cache = 0
    assert Trainer(cached, tmp_path / "cached").run().reason == "completed"
    assert Trainer(uncached, tmp_path / "uncached").run().reason == "completed"
    assert _losses(tmp_path / "cached") == _losses(tmp_path / "uncached")
    first = copy.deepcopy(cached)
    first.train.max_steps = 8  # one epoch of 120 images at batch 16
    assert Trainer(first, tmp_path / "resumed").run().reason in ("step-limit", "completed")
    resumed = Trainer(
        copy.deepcopy(cached),
        tmp_path / "resumed",
        resume=True,
        resume_changes={"train.max_steps": None},
    ).run()
    assert resumed.reason == "completed"
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "cached")


def test_a_copied_model_can_be_unfrozen_again() -> None:
    import timm

    model = timm.create_model("test_resnet", num_classes=3)
    apply_plan(model, FreezePlan(freeze=["conv1", "bn1", "layer1"]))
    twin = copy.deepcopy(model)
    apply_plan(twin, FreezePlan())
    twin.train()
    assert all(m.training for m in twin.modules())
    model.train()  # the original keeps its own guard
    assert not model.get_submodule("bn1").training
