"""Evaluation over an image folder and prediction for single images.

Both take any model string (run folder, bundle, weights file, ``timm:NAME``...) or an already
loaded model, and return plain data the CLI prints and the GUI draws: accuracy, per-class
precision and recall, the confusion matrix with the images behind every cell, its most
confused pairs of classes, and the worst predictions.

Which images: a folder with ``train/`` and ``val/`` is evaluated on ``val/``; any other folder
(one sub-folder per class) on all of its images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from freezer_app.core.catalog import LoadedModel, load_model
from freezer_app.core.data import TRAIN_DIRS, VAL_DIRS, build_transforms, load_rgb, scan_folder
from freezer_app.core.device import select_device
from freezer_app.core.errors import Cancelled, DataError
from freezer_app.core.text import printable

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


# ---------------------------------------------------------------------- results
@dataclass
class ImagePrediction:
    """One evaluated image: its true and predicted class (indices into `classes`)."""

    path: str
    true: int
    predicted: int
    confidence: float  # probability of the predicted class
    true_probability: float  # probability of the true class

    @property
    def correct(self) -> bool:
        return self.true == self.predicted


@dataclass
class ClassMetrics:
    name: str
    precision: float | None  # None: the model never predicted this class
    recall: float | None  # None: no image of this class
    support: int  # images of this class
    predicted: int  # images predicted as this class


@dataclass
class Confusion:
    """One off-diagonal confusion-matrix cell: images of class `true` predicted as `predicted`
    (indices into `classes`)."""

    true: int
    predicted: int
    count: int
    share_of_true: float  # count / images of the true class


@dataclass
class Evaluation:
    model: str
    data: str  # the folder whose images were evaluated
    split: str  # "val" (the val/ folder of a train/val layout) or "all"
    classes: list[str]
    accuracy: float
    correct: int
    count: int
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # [true class][predicted class]
    predictions: list[ImagePrediction]  # every image, in folder order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)

    def cell(self, true: int, predicted: int) -> list[ImagePrediction]:
        """The images behind one confusion-matrix cell, most confident first."""
        hits = [p for p in self.predictions if p.true == true and p.predicted == predicted]
        return sorted(hits, key=lambda p: -p.confidence)

    def most_confused(self, n: int | None = 10) -> list[Confusion]:
        """The n off-diagonal cells with the most images (all of them with n=None), most first;
        equal counts in class order (true, then predicted). Empty cells are left out: with many
        classes they are most of the matrix and say nothing."""
        cells = [
            Confusion(t, p, count, count / sum(row))
            for t, row in enumerate(self.confusion)
            for p, count in enumerate(row)
            if t != p and count > 0
        ]
        # The sort is stable and the cells were built in class order: that breaks the ties.
        cells.sort(key=lambda c: -c.count)
        return cells if n is None else cells[: max(0, n)]

    def worst(self, n: int = 10) -> list[ImagePrediction]:
        """The n images the model got most wrong: lowest probability for the true class."""
        return sorted(self.predictions, key=lambda p: p.true_probability)[:n]

    def to_dict(self, worst: int = 10, most_confused: int = 10) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "split": self.split,
            "classes": self.classes,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "count": self.count,
            "per_class": [asdict(c) for c in self.per_class],
            "confusion": self.confusion,
            "worst": [self._named(p) for p in self.worst(worst)],
            "most_confused": [
                {
                    "true": self.classes[c.true],
                    "predicted": self.classes[c.predicted],
                    "count": c.count,
                    "share_of_true": c.share_of_true,
                }
                for c in self.most_confused(most_confused)
            ],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "notes": self.notes,
        }

    def _named(self, p: ImagePrediction) -> dict[str, Any]:
        return {
            "path": p.path,
            "true": self.classes[p.true],
            "predicted": self.classes[p.predicted],
            "confidence": p.confidence,
            "true_probability": p.true_probability,
        }

    def summary(self, worst: int = 5, most_confused: int = 10) -> str:
        """Accuracy, a per-class table, the confusion matrix, the most confused pairs and the
        worst predictions."""
        lines = [
            f"model: {self.model}",
            f"data: {self.data} ({self.count} images, "
            + ("the val/ folder" if self.split == "val" else "all images")
            + ")",
            f"accuracy: {self.accuracy:.4f} ({self.correct} of {self.count})",
            "",
        ]
        # Widths of the names as printed (escaped), so the columns line up.
        names = [printable(c) for c in self.classes]
        width = max(8, *(len(c) for c in names))
        fmt = lambda v: "    -" if v is None else f"{v:.3f}"
        lines.append(f"{'class':<{width}}  precision  recall  support")
        for name, c in zip(names, self.per_class):
            lines.append(
                f"{name:<{width}}  {fmt(c.precision):>9}  {fmt(c.recall):>6}  {c.support:>7}"
            )
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        col = max(6, *(len(c) for c in names), len(str(self.count)))
        lines.append(" " * width + "".join(f"  {c[:col]:>{col}}" for c in names))
        for name, row in zip(names, self.confusion):
            lines.append(f"{name:<{width}}" + "".join(f"  {v:>{col}}" for v in row))
        # With many classes the matrix is hard to read: name its largest off-diagonal cells.
        confused = self.most_confused(most_confused)
        if confused:
            lines += ["", "most confused (images of the true class, and their share of it):"]
            for c in confused:
                lines.append(
                    f"  {names[c.true]} predicted as {names[c.predicted]}: "
                    f"{c.count} ({c.share_of_true:.0%})"
                )
        wrong = [p for p in self.worst(worst) if not p.correct]
        if wrong:
            # Ordered as worst(): the lowest probability given to the true class first.
            lines += ["", "worst mistakes (lowest probability of the true class first):"]
            for p in wrong:
                lines.append(
                    f"  {p.path}: {self.classes[p.true]} {p.true_probability:.2f}, predicted "
                    f"{self.classes[p.predicted]} {p.confidence:.2f}"
                )
        if self.skipped:
            lines += ["", f"skipped {len(self.skipped)} unreadable file(s):"]
            lines += [f"  {p}: {r}" for p, r in self.skipped[:20]]
        lines += [f"note: {n}" for n in self.notes]
        # Class and file names come from the file system: escape what a terminal would obey.
        return "\n".join(printable(line) for line in lines)


@dataclass
class ClassProbability:
    label: str
    index: int
    probability: float


@dataclass
class PredictionResult:
    """Top-k classes for one image, or why it could not be read."""

    path: str
    top: list[ClassProbability] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- shared
def as_loaded(model: str | Path | LoadedModel) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(str(model))


def class_names(loaded: LoadedModel) -> list[str]:
    """The model's label names, or "class N" when it has none."""
    return list(loaded.label_names or [f"class {i}" for i in range(loaded.num_classes)])


def _eval_transform(loaded: LoadedModel) -> tuple[Callable, int]:
    _, eval_tf = build_transforms(loaded.data_config, None, "none")
    return eval_tf, int(loaded.data_config["input_size"][-1])


class _Images(Dataset):
    """Images for inference; a file that fails to decode is flagged, never swapped."""

    def __init__(self, paths: list[str], transform: Callable, size: int) -> None:
        self.paths, self.transform, self.size = paths, transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(load_rgb(self.paths[index])), index, ""
        except Exception as e:  # any decoding failure is reported for that file
            return torch.zeros(3, self.size, self.size), index, _reason(e)


def _reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"cannot read image ({text})"


class _OnDevice:
    """Run a model in eval mode on a device, and put it back as it was afterwards."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device = module, device

    def __enter__(self) -> torch.nn.Module:
        first = next(self.module.parameters(), None)
        self.was_device = first.device if first is not None else torch.device("cpu")
        self.was_training = self.module.training
        return self.module.to(self.device).eval()

    def __exit__(self, *exc: object) -> None:
        self.module.to(self.was_device).train(self.was_training)


def _batches(
    module: torch.nn.Module,
    dataset: _Images,
    device: torch.device,
    batch_size: int,
    workers: int,
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
    what: str,
):
    """Yield (indices, probabilities, errors) per batch, checking for cancel between batches."""
    loader = DataLoader(
        dataset, batch_size=max(1, batch_size), shuffle=False, num_workers=max(0, workers)
    )
    done, total = 0, len(dataset)
    with torch.inference_mode():
        for x, indices, errors in loader:
            if should_cancel is not None and should_cancel():
                raise Cancelled(f"{what} cancelled.", "Start it again when ready.")
            logits = module(x.to(device))
            if not isinstance(logits, torch.Tensor):
                raise DataError(
                    f"The model returns {type(logits).__name__}, not a tensor of logits.",
                    "Use a classification model whose forward() returns one tensor.",
                )
            probs = logits.float().softmax(-1).cpu()
            yield indices.tolist(), probs, list(errors)
            done += len(indices)
            if progress is not None:
                progress(done, total)


# ---------------------------------------------------------------------- evaluate
def eval_folder(root: str | Path) -> tuple[Path, str]:
    """The folder evaluate() reads and its split: val/ of a train/val layout, else the root."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Image folder not found: {root}", "Choose a folder with one sub-folder per class."
        )
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    has_train = any(n in subdirs for n in TRAIN_DIRS)
    val = next((subdirs[n] for n in VAL_DIRS if n in subdirs), None)
    if val is not None and has_train:
        return val, "val"
    return root, "all"


def evaluate(
    model: str | Path | LoadedModel,
    data: str | Path,
    *,
    batch_size: int = 32,
    device: str = "auto",
    workers: int = 0,
    val_split: float | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Evaluation:
    """Accuracy, per-class precision/recall and the confusion matrix of `model` on `data`.

    The data folder's class names must be among the model's label names (a model without
    label names must have as many outputs as the folder has classes, in sorted order).
    A folder without train/ and val/ is evaluated on all its images, or, with `val_split`
    and `seed`, on exactly the validation share a training run with those settings held out.
    progress(done, total) is called after each batch; should_cancel() is checked before each
    (raising Cancelled).
    """
    folder, split = eval_folder(data)
    if split == "all" and val_split:
        report = scan_folder(folder, val_split=val_split, seed=seed)
        items = list(report.val)
        split = "val"
    else:
        report = scan_folder(folder, val_split=0.0)
        items = report.train + report.val
    loaded = as_loaded(model)
    classes, mapping, notes = _match_classes(loaded, report.classes)
    if not items:
        raise DataError(f"No readable images in {folder}.", "Check the image files.")
    transform, size = _eval_transform(loaded)
    dataset = _Images([p for p, _ in items], transform, size)
    truth = [mapping[label] for _, label in items]
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    predictions: list[ImagePrediction] = []
    skipped = [(s.path, s.reason) for s in report.skipped]
    target = select_device(device)
    with _OnDevice(loaded.module, target) as module:
        for indices, probs, errors in _batches(
            module, dataset, target, batch_size, workers, progress, should_cancel, "Evaluation"
        ):
            if probs.shape[-1] != n:
                raise DataError(
                    f"The model has {probs.shape[-1]} outputs but {n} class names.",
                    "Evaluate a model trained for these classes.",
                )
            confidence, predicted = probs.max(-1)
            for row, (i, error) in enumerate(zip(indices, errors)):
                if error:
                    skipped.append((dataset.paths[i], error))
                    continue
                t, p = truth[i], int(predicted[row])
                confusion[t, p] += 1
                predictions.append(
                    ImagePrediction(
                        dataset.paths[i], t, p, float(confidence[row]), float(probs[row, t])
                    )
                )
    if not predictions:
        raise DataError(f"None of the images in {folder} could be read.", "Check the files.")
    correct = int(np.trace(confusion))
    count = int(confusion.sum())
    per_class = []
    for i, name in enumerate(classes):
        support, predicted_n = int(confusion[i].sum()), int(confusion[:, i].sum())
        per_class.append(
            ClassMetrics(
                name,
                float(confusion[i, i] / predicted_n) if predicted_n else None,
                float(confusion[i, i] / support) if support else None,
                support,
                predicted_n,
            )
        )
    return Evaluation(
        model=_describe(model, loaded),
        data=str(folder),
        split=split,
        classes=classes,
        accuracy=correct / count,
        correct=correct,
        count=count,
        per_class=per_class,
        confusion=confusion.tolist(),
        predictions=predictions,
        skipped=skipped,
        notes=notes,
    )


def _describe(model: str | Path | LoadedModel, loaded: LoadedModel) -> str:
    name = str(model) if not isinstance(model, LoadedModel) else str(loaded.spec)
    return f"{name} ({loaded.spec}, {loaded.weights_note})" if name != str(loaded.spec) else name


def _match_classes(
    loaded: LoadedModel, data_classes: list[str]
) -> tuple[list[str], dict[int, int], list[str]]:
    """The model's classes and, for each data class index, the model's output index."""
    labels = loaded.label_names
    if not labels:
        if len(data_classes) != loaded.num_classes:
            raise DataError(
                f"The model has no class names and {loaded.num_classes} outputs, but the folder "
                f"has {len(data_classes)} classes ({', '.join(data_classes)}).",
                "Evaluate a model trained on these classes (a run folder or bundle knows its "
                "class names).",
            )
        notes = ["the model has no class names; the folder's sorted class folders were used"]
        return list(data_classes), {i: i for i in range(len(data_classes))}, notes
    unknown = [c for c in data_classes if c not in labels]
    if unknown:
        raise DataError(
            f"The folder has class(es) the model was not trained on: {', '.join(unknown)}. "
            f"The model's classes: {', '.join(labels)}.",
            "Name the class folders as the model's classes, or evaluate a model trained on them.",
        )
    notes = []
    missing = [c for c in labels if c not in data_classes]
    if missing:
        notes.append(f"no images for: {', '.join(missing)}")
    return list(labels), {i: labels.index(c) for i, c in enumerate(data_classes)}, notes


# ---------------------------------------------------------------------- predict
def predict(
    model: str | Path | LoadedModel,
    images: Sequence[str | Path],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> list[PredictionResult]:
    """The top_k classes with probabilities for each image (an unreadable image gets an
    error message instead)."""
    loaded = as_loaded(model)
    names = class_names(loaded)
    transform, size = _eval_transform(loaded)
    paths = [str(p) for p in images]
    dataset = _Images(paths, transform, size)
    results = [PredictionResult(p) for p in paths]
    k = max(1, min(top_k, loaded.num_classes or top_k))
    target = select_device(device)
    with _OnDevice(loaded.module, target) as module:
        for indices, probs, errors in _batches(
            module, dataset, target, batch_size, 0, progress, should_cancel, "Prediction"
        ):
            values, classes = probs.topk(min(k, probs.shape[-1]), dim=-1)
            for row, (i, error) in enumerate(zip(indices, errors)):
                if error:
                    results[i].error = error
                    continue
                results[i].top = [
                    ClassProbability(names[c] if c < len(names) else f"class {c}", int(c), float(v))
                    for v, c in zip(values[row].tolist(), classes[row].tolist())
                ]
    return results
