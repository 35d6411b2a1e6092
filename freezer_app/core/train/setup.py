"""Everything a run needs before its first step: checked project, data, model, optimizer.

Nothing here writes to the run folder: a run that cannot start leaves nothing behind. The
whole freeze timeline is resolved against the model (a cheap meta-device preview) before any
weights are downloaded or images loaded, so an unknown preset or a selector that matches
nothing in a later phase or edit fails at once.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from freezer_app.core import timeline
from freezer_app.core.catalog import LoadedModel, load_model, preview_model
from freezer_app.core.data import (
    DataReport,
    Loaders,
    build_transforms,
    class_weights,
    default_workers,
    make_loaders,
    scan_folder,
    train_is_random,
)
from freezer_app.core.device import (
    Precision,
    select_device,
    select_precision,
    wants_channels_last,
)
from freezer_app.core.errors import ProjectError
from freezer_app.core.freeze import check_lr_mult
from freezer_app.core.image_cache import cache_budget
from freezer_app.core.optim import GroupSpec, LrSchedule, build_optimizer, param_groups
from freezer_app.core.project import Project, absolute_model
from freezer_app.core.run_folder import RunFolder
from freezer_app.core.telemetry import FrozenVerifier, LayerIndex, TelemetryProbe
from freezer_app.core.torchvision_compat import set_transform_input
from freezer_app.core.train.feature_cache import FeatureCache
from freezer_app.core.tree import ModelTree
from freezer_app.core.trust import USER, CodeTrust

if TYPE_CHECKING:
    from timm.data import Mixup
    from timm.utils import ModelEmaV3

    from freezer_app.core.train.distributed import Distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


@dataclass
class RunParts:
    """What `prepare` builds; the trainer owns it for the length of the run."""

    device: torch.device
    precision: Precision
    report: DataReport
    loaded: LoadedModel
    model: nn.Module
    tree: ModelTree
    channels_last: bool
    loaders: Loaders
    steps_per_epoch: int
    total_steps: int  # steps this run trains (the step limit included)
    schedule_steps: int  # steps the learning-rate schedule spans: every epoch
    warmup_steps: int
    groups: list[GroupSpec]
    optimizer: torch.optim.Optimizer
    scheduler: LrSchedule  # timm's, stepped per optimizer step
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module
    layers: LayerIndex
    probe: TelemetryProbe
    verifier: FrozenVerifier
    features: FeatureCache
    saved: dict[str, Any] | None  # the checkpoint being resumed
    # Images per step over every process (each process trains its share): batch_size × the
    # number of processes, or, on resume, the run's own (the step grid stays the same).
    global_batch: int = 0
    world: int = 1
    # Batches per epoch; with train.accum_steps N, steps_per_epoch is ceil(batches / N): a
    # step is an optimizer step, and the last one of an epoch may take fewer batches.
    batches_per_epoch: int = 0
    accum_steps: int = 1
    mixup: Mixup | None = None  # train.mixup / train.cutmix: applied to each training batch
    ema: ModelEmaV3 | None = None  # train.ema: the averaged copy of the model


@torch.no_grad()
def check_output(
    model: nn.Module, device: torch.device, size: int, num_classes: int, label: str
) -> None:
    """One forward pass on two blank images before anything is written: the model must take
    this image size and return one score per class (a factory that ignores num_classes would
    otherwise train 7 outputs for 3 classes and predict "class 4")."""
    from freezer_app.core.train.trainer import logits_of

    was_training = model.training
    model.eval()
    try:
        out = logits_of(model(torch.zeros(2, 3, size, size, device=device)))
    except Exception as e:
        if is_oom(e):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        raise ProjectError(
            f"{label} cannot take {size}×{size} images: {type(e).__name__}: {first}",
            "Pick an image size the model accepts (--image-size).",
        ) from None
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] != num_classes:
        got = "×".join(str(d) for d in out.shape)
        raise ProjectError(
            f"{label} returns {got} scores for a batch of 2, but the data has {num_classes} "
            "classes: it needs one score per class.",
            "Let your factory take a num_classes argument and size its classifier with it "
            "(Freezer passes the class count), or give the model a head of that size.",
        )


def total_steps(project: Project, steps_per_epoch: int) -> int:
    t = project.train
    total = t.epochs * steps_per_epoch
    return min(total, t.max_steps) if t.max_steps else total


def prepare(
    project: Project,
    folder: RunFolder,
    report: DataReport | None,
    trust: CodeTrust | None = None,
    saved: dict[str, Any] | None = None,
    dist: Distributed | None = None,
) -> RunParts:
    """Everything for a new run, or (with `saved`, the checkpoint) for resuming one.

    trust: whether a factory .py named by project.model may run (core/trust.py). One named
    by the checkpoint of a resumed run counts as named by a file.
    dist: this process's rank in a torch.distributed run: its device, and its share of each
    global batch (`train.batch_size` is per process, as in timm's train.py)."""
    t = project.train
    resume = saved is not None
    world = dist.world if dist else 1
    project.validate()
    if not resume and (dist is None or dist.main):
        folder.check_new()  # rank 0 may have created it already
    seed_everything(t.seed)
    device = dist.device if dist else select_device(t.device)
    precision = select_precision(device, t.amp)
    # A resumed run keeps its global batch under any number of processes: the same steps.
    global_batch = int(saved.get("global_batch") or t.batch_size) if saved else t.batch_size * world
    if global_batch < world:
        raise ProjectError(
            f"A global batch of {global_batch} images cannot be shared by {world} processes.",
            "Resume with fewer processes, or start a new run.",
        )

    if report is None:
        report = scan_folder(project.data.path, project.data.val_split, t.seed)
    if len(report.train) < world:
        # Every process needs an image of every step (DistributedDataParallel waits for all).
        raise ProjectError(
            f"{len(report.train)} training image(s) cannot be shared by {world} processes.",
            "Use fewer processes (--nproc-per-node), or add training images.",
        )
    if resume and project.data.classes and project.data.classes != report.classes:
        raise ProjectError(
            "The dataset's classes changed since this run started "
            f"({', '.join(project.data.classes)} then, {', '.join(report.classes)} now).",
            "Resume with the same data, or start a new run.",
        )
    project.data.classes = list(report.classes)
    project.num_classes = report.num_classes

    if saved is not None:
        # The architecture the run resolved when it started: the bundle or weights file it
        # started from may have moved since, and the weights come from the checkpoint.
        loaded = load_model(
            # A factory path in it is relative to the run folder, like those in project.json.
            absolute_model(str(saved["architecture"]), folder.path),
            num_classes=report.num_classes,
            trust=(trust or USER).read_from(folder.last_checkpoint),
        )
        loaded.data_config = dict(saved["data_config"])
        if saved.get("transform_input") is not None:
            set_transform_input(loaded.spec.name, loaded.module, saved["transform_input"])
    else:
        # Fail fast, before any download: every selection of the timeline must resolve.
        preview = preview_model(project.model, num_classes=report.num_classes, trust=trust)
        preview_tree = ModelTree(preview.module, project.model)
        timeline.check(project.plan, preview_tree)
        check_lr_mult(project.plan, preview_tree)
        loaded = load_model(
            project.model,
            num_classes=report.num_classes,
            pretrained=project.pretrained,
            weights=project.weights,
            trust=trust,
        )
    # On the CPU (gloo) DDP refuses SyncBatchNorm: the trainer says it is not used there.
    if t.sync_bn and world > 1 and device.type == "cuda":
        # timm's conversion keeps its BatchNormAct layers' activations (torch's does not).
        from timm.layers import convert_sync_batchnorm

        loaded.module = convert_sync_batchnorm(loaded.module)
    model = loaded.module
    tree = ModelTree(model, project.model)
    timeline.check(project.plan, tree)
    check_lr_mult(project.plan, tree)
    channels_last = wants_channels_last(model, device, t.channels_last)
    try:
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    except Exception as e:
        if not is_oom(e):
            raise
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise ProjectError(
            f"The model does not fit in the memory of {device}.",
            "Pick a smaller model, or train on another device (--device cpu).",
        ) from None

    size = project.data.image_size or int(loaded.data_config["input_size"][-1])
    check_output(model, device, size, report.num_classes, str(loaded.spec))

    d = project.data
    train_tf, eval_tf = build_transforms(
        loaded.data_config, d.image_size, d.augmentation, d.auto_augment, d.random_erase
    )
    counts = report.counts(report.train)
    balance = class_weights(counts) if t.class_balance != "off" else None
    mixing = bool(t.mixup or t.cutmix)
    workers = project.data.workers if project.data.workers is not None else default_workers()
    loaders = make_loaders(
        report,
        train_tf,
        eval_tf,
        global_batch,
        workers,
        t.seed,
        pin_memory=device.type == "cuda",
        random_train=train_is_random(d.augmentation),
        cache_bytes=cache_budget(project.data.image_cache),
        image_size=size,
        rank=dist.rank if dist else 0,
        world=world,
        # Each image weighted by its class's weight: every class is drawn equally often.
        sample_weights=[balance[label] for _, label in report.train]
        if balance and t.class_balance == "sampler"
        else None,
    )
    batches_per_epoch = len(loaders.train_sampler)
    steps_per_epoch = math.ceil(batches_per_epoch / t.accum_steps)
    total = total_steps(project, steps_per_epoch)
    # The schedule spans every epoch whatever the step limit: a run stopped by --max-steps is
    # the start of the full run, so resuming it gives the uninterrupted run's steps exactly.
    schedule_steps = t.epochs * steps_per_epoch
    warmup = min(int(t.warmup_epochs * steps_per_epoch), schedule_steps // 5)

    groups = param_groups(model, tree, t, project.plan.lr_mults())
    optimizer = build_optimizer(groups, t)
    scheduler = LrSchedule(optimizer, t, schedule_steps, warmup, steps_per_epoch)
    ema = None
    if t.ema is not None:
        from timm.utils import ModelEmaV3

        # A copy of the model as it starts (a resume loads the saved average into it). Made
        # before anything else holds the model; the update takes every floating tensor of the
        # state dict, so frozen ones (never changed) stay bit-identical in the copy too.
        ema = ModelEmaV3(model, decay=t.ema)
        ema.requires_grad_(False)
    mixup = None
    if mixing:
        from timm.data import Mixup

        mixup = Mixup(
            mixup_alpha=t.mixup,
            cutmix_alpha=t.cutmix,
            label_smoothing=t.label_smoothing,
            num_classes=report.num_classes,
            mode="batch",
        )
    if mixing:
        from timm.loss import SoftTargetCrossEntropy

        # Mixup's targets are soft (label smoothing folded in): timm's soft-target loss.
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif balance and t.class_balance == "loss":
        weight = torch.tensor(balance, dtype=torch.float32, device=device)
        criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    layers = LayerIndex(model, tree)
    verifier = FrozenVerifier(model)
    features = FeatureCache(
        model,
        tree,
        t.feature_cache,
        t.feature_cache_budget,
        architecture=str(loaded.spec),
        # The transform as printed rounds mean and std: the data config says them exactly.
        transform=repr(eval_tf) + json.dumps(loaded.data_config, sort_keys=True, default=str),
        image_size=size,
        train_items=report.train,
        val_items=report.val,
        # Mixed batches differ every epoch too: features of training images cannot be reused.
        augmented=train_is_random(d.augmentation) or mixing,
        device=device,
        autocast_dtype=precision.autocast_dtype,
        channels_last=channels_last,
        verifier=verifier,
        # Each rank would cache only its own share, and the split forward would bypass
        # DistributedDataParallel.
        disabled="the run uses several processes" if world > 1 else "",
    )
    return RunParts(
        device=device,
        precision=precision,
        report=report,
        loaded=loaded,
        model=model,
        tree=tree,
        channels_last=channels_last,
        loaders=loaders,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        schedule_steps=schedule_steps,
        warmup_steps=warmup,
        groups=groups,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type) if precision.use_scaler else None,
        criterion=criterion,
        layers=layers,
        probe=TelemetryProbe(layers, device, t.telemetry_every),
        verifier=verifier,
        features=features,
        saved=saved,
        global_batch=global_batch,
        world=world,
        batches_per_epoch=batches_per_epoch,
        accum_steps=t.accum_steps,
        mixup=mixup,
        ema=ema,
    )
