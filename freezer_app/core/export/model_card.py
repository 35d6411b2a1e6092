"""The bundle's README.md: a model card with the code to load the model, its input, the freeze
plan, the training settings and metrics, and the frozen check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freezer_app.core.catalog import FILE, TIMM, TORCHVISION
from freezer_app.core.export.api import ExportSource
from freezer_app.core.freeze import resolve
from freezer_app.core.tree import ModelTree


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _front_matter(src: ExportSource, library: str) -> list[str]:
    """The Hugging Face model card metadata: what the Hub shows and filters on."""
    loaded = src.loaded
    training = src.training or {}
    pretrained = bool(training.get("pretrained"))
    cfg = getattr(loaded.module, "pretrained_cfg", None) or {}
    # The licence of the weights it started from, where timm records one; else the
    # author's to choose.
    license_ = cfg.get("license") if pretrained and isinstance(cfg, dict) else None
    lines = [
        "---",
        f"library_name: {library}",
        f"license: {license_ or 'other'}",
        "pipeline_tag: image-classification",
    ]
    if pretrained and loaded.spec.kind == TIMM:
        # Only a model that started from pretrained weights has a base model to name.
        hub = cfg.get("hf_hub_id") if isinstance(cfg, dict) else None
        lines.append(f"base_model: {hub or 'timm/' + loaded.spec.name}")
    lines += ["tags:", "- image-classification", "- freezer-app"]
    if not pretrained:
        lines.append("- trained-from-random-init" if training else "- freezer-export")
    return [*lines, "---"]


def readme(src: ExportSource, loading_code: str, check_how: str) -> str:
    """README.md of a bundle; loading_code is shown under "Load it". No local paths: the
    folder may be copied or pushed to the Hub."""
    from freezer_app.core.telemetry import Drift, FrozenCheck

    loaded = src.loaded
    spec = loaded.spec
    library = {TIMM: "timm", TORCHVISION: "torchvision", FILE: "pytorch"}[spec.kind]
    # A user's model file by its name alone: the bundle carries its own copy.
    shown = f"{Path(spec.name).name}:{spec.factory}" if spec.kind == FILE else str(spec)
    title = src.name or (Path(spec.name).name if spec.kind == FILE else spec.name)
    labels = src.label_names
    dc = loaded.data_config
    lines = [
        *_front_matter(src, library),
        "",
        f"# {title}",
        "",
        f"`{shown}` fine-tuned with Freezer (freezer-app) for {loaded.num_classes} "
        f"classes: {', '.join(labels)}.",
        "",
        "## Load it",
        "",
        "```python",
        loading_code.rstrip(),
        "```",
        "",
        f"Checked when exported: {check_how} reproduces the trained model's logits.",
        "",
        "Continue fine-tuning it with Freezer: "
        "`freezer-app train --model PATH/TO/THIS/FOLDER --data IMAGES`, or predict: "
        "`freezer-app predict PATH/TO/THIS/FOLDER image.jpg`. After "
        "`freezer-app push PATH/TO/THIS/FOLDER USER/REPO`, timm loads it from anywhere with "
        '`timm.create_model("hf-hub:USER/REPO", pretrained=True)`.',
        "",
        "## Input",
        "",
        f"- size: {'x'.join(str(s) for s in dc.get('input_size', ()))}",
        f"- mean {list(dc.get('mean', ()))}, std {list(dc.get('std', ()))}",
        f"- interpolation: {dc.get('interpolation')}, crop_pct: {dc.get('crop_pct')}",
    ]
    if src.plan is not None:
        tree = ModelTree(loaded.module, shown)
        mask = resolve(src.plan, tree)
        lines += [
            "",
            "## Freeze plan",
            "",
            f"{src.plan.describe()}: {int(tree.numel[mask].sum()):,} of {tree.total_params:,} "
            f"parameters trained; BatchNorm: {src.plan.bn_policy}. "
            "See `freeze_plan.json` and `freeze_plan.py`.",
        ]
    training = src.training or {}
    summary = training.get("data_summary") or {}
    if summary.get("train_images"):
        train_n, val_n = summary["train_images"], summary.get("val_images") or {}
        lines += [
            "",
            "## Data",
            "",
            f"{sum(train_n.values()):,} training and {sum(val_n.values()):,} validation images:",
            "",
            "| class | train | val |",
            "|---|---|---|",
            *(f"| {c} | {train_n[c]} | {val_n.get(c, 0)} |" for c in train_n),
        ]
    if training:
        t = training.get("train") or {}
        lines += ["", "## Training", ""]
        start = (
            "pretrained weights"
            if training.get("pretrained")
            else (
                f"weights from {training['weights']}" if training.get("weights") else "random init"
            )
        )
        lines.append(f"- started from {start}")
        if t:
            lines.append(
                f"- {training.get('epochs_completed')} epoch(s), {training.get('steps')} steps; "
                f"{t.get('optimizer')} lr {t.get('lr')}, batch size {t.get('batch_size')}, "
                f"weight decay {t.get('weight_decay')}, {t.get('schedule')} schedule"
            )
        for key, label in (("final_metrics", "final epoch"), ("best_metrics", "best epoch")):
            m = training.get(key)
            if m:
                lines.append(
                    f"- {label} ({m.get('epoch')}): train_loss {_fmt(m.get('train_loss'))}, "
                    f"val_loss {_fmt(m.get('val_loss'))}, val_acc {_fmt(m.get('val_acc'))}"
                )
        lines.append(f"- weights exported: {training.get('checkpoint', src.checkpoint)}")
        check = training.get("frozen_check")
        if check:
            fc = FrozenCheck(
                int(check.get("epoch", 0)),
                int(check.get("step", 0)),
                int(check.get("checked", 0)),
                [Drift(**d) for d in check.get("drifted", [])],
            )
            lines.append(f"- frozen check: {fc.summary()}")
        lines.append("- all settings: `training.json`")
    lines += [
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights (keys as `model.state_dict()`)",
        "- `config.json`: architecture, classes and preprocessing (timm / Hugging Face layout)",
    ]
    if src.plan is not None:
        lines.append("- `freeze_plan.json`, `freeze_plan.py`: which layers were frozen")
    if training:
        lines.append("- `training.json`: training settings, metrics and the frozen check")
    return "\n".join(lines) + "\n"
