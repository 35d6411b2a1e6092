"""Freezer's training step (telemetry at the default interval, events, logging, frozen-norm
guard) against a bare PyTorch loop: same model, data, freezing, batch, optimizer settings.

Both loops run on the same pre-loaded batches, so data loading is not part of either number.
The two are interleaved in rounds and the median step time of each is compared.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import _common
import torch
from torch import nn

from freezer_app.core.data import Batch, write_demo_data
from freezer_app.core.freeze import FreezePlan, apply_plan
from freezer_app.core.project import DataSettings, Project, TrainSettings
from freezer_app.core.train import Trainer


def bare_loop(model: nn.Module, batches: list, settings: TrainSettings, steps: int) -> list[float]:
    """What a careful user writes by hand: only trainable parameters in AdamW, clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    model.train()
    times = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        sched.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def freezer_loop(project: Project, batches: list, steps: int) -> list[float]:
    out = tempfile.mkdtemp()
    times: list[float] = []
    last = [0.0]
    trainer = Trainer(project, f"{out}/run")
    setup = trainer._setup

    def setup_with_cached_batches() -> None:
        setup()
        # The same tensors the bare loop uses.
        trainer.parts.loaders.train_batches = lambda epoch, start=0, skip=None: iter(
            Batch(list(range(len(y))), x, y) for x, y in batches
        )

    def on_event(event: object) -> None:
        from freezer_app.core.events import StepEvent

        if isinstance(event, StepEvent):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

    trainer._setup = setup_with_cached_batches
    trainer.emit = on_event
    last[0] = time.perf_counter()
    trainer.run()
    return times[1:]  # the first interval includes setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="timm:resnet18")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--preset", default="train-last:2")
    parser.add_argument("--telemetry-every", type=int, default=TrainSettings().telemetry_every)
    args = parser.parse_args()

    data = write_demo_data(
        tempfile.mkdtemp() + "/data",
        per_class=args.batch_size,
        val_per_class=2,
        size=args.image_size,
    )
    settings = TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        device="cpu",
        telemetry_every=args.telemetry_every,
        schedule="constant",
        warmup_epochs=0,
        # The per-step overhead of the full forward, as the bare loop does it (the feature
        # cache would skip the frozen stages: bench_feature_cache.py measures that).
        feature_cache="off",
    )
    project = Project(
        model=args.model,
        plan=FreezePlan(preset=args.preset),
        data=DataSettings(
            path=str(data), image_size=args.image_size, workers=0, augmentation="none"
        ),
        train=settings,
    )
    project.train.max_steps = args.steps
    torch.manual_seed(0)
    batches = [
        (
            torch.randn(args.batch_size, 3, args.image_size, args.image_size),
            torch.randint(0, 3, (args.batch_size,)),
        )
        for _ in range(args.steps)
    ]
    # Enough batches that an epoch covers all steps.
    project.train.max_steps = args.steps

    from freezer_app.core.catalog import load_model

    base = load_model(args.model, num_classes=3).module
    # Alternate the two loops round by round and compare within each round, so a slow spell
    # of the machine (other processes) hits both sides of a ratio alike.
    bare_times: list[float] = []
    freezer_times: list[float] = []
    ratios: list[float] = []
    for _ in range(args.rounds):
        model = copy.deepcopy(base)
        apply_plan(model, project.plan)
        bare = bare_loop(model, batches, settings, args.steps)[3:]
        ours = freezer_loop(copy.deepcopy(project), batches, args.steps)[3:]
        bare_times += bare
        freezer_times += ours
        ratios.append(statistics.median(ours) / statistics.median(bare))
    _common.emit(
        {
            "benchmark": "training_overhead",
            "model": args.model,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "preset": args.preset,
            "telemetry_every": args.telemetry_every,
            "rounds": args.rounds,
            "steps_measured": len(freezer_times),
            "bare_step_ms": round(statistics.median(bare_times) * 1000, 2),
            "freezer_step_ms": round(statistics.median(freezer_times) * 1000, 2),
            "overhead_pct": round(100 * (statistics.median(ratios) - 1), 2),
            "overhead_pct_per_round": [round(100 * (r - 1), 1) for r in ratios],
        }
    )


if __name__ == "__main__":
    main()
