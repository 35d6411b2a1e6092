"""Image-folder datasets: scanning and validation, the train/val split, transforms, loaders.

Layout (torchvision `ImageFolder`): one sub-folder per class, either directly under the root
(then a seeded, stratified validation split is taken) or under `train/` and `val/`.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import Compose, Normalize, PILToTensor

from freezer_app.core.errors import DataError
from freezer_app.core.image_cache import DecodedImages, PreparedImages, can_share_with_workers
from freezer_app.core.shards import merge_short_tail, shard
from freezer_app.core.text import printable

AUGMENTATIONS = ("none", "light", "strong")
# data.auto_augment: timm's policy strings (RandAugment "rand-...", AugMix "augmix-...", AutoAugment
# "original", "v0", "3a"...), suggested in the form; "off" turns the preset's policy off.
AUTO_AUGMENT_EXAMPLES = (
    "off",
    "rand-m9-mstd0.5-inc1",
    "trivialaugment",
    "augmix-m5-w4-d2",
    "original",
    "v0",
)
# timm has no TrivialAugment by name: its RandAugment with one op per image at a uniformly
# drawn magnitude, always applied, is that recipe with timm's op set.
AUTO_AUGMENT_ALIASES = {"trivialaugment": "rand-n1-m10-mstd101-inc1-p1"}
# The training-image preset of each data.augmentation, as create_transform arguments.
_PRESETS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.6, 1.0), "hflip": 0.5, "color_jitter": None, "auto_augment": None},
    "strong": {
        "scale": (0.25, 1.0),
        "hflip": 0.5,
        "color_jitter": 0.3,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "re_prob": 0.25,
    },
}
# The data check warns when the largest class has more than this many times the smallest's
# training images (train.class_balance is the remedy it names).
IMBALANCE_RATIO = 5.0
# Grayscale modes with more than 8 bits per pixel, and what loading does to them (load_rgb).
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_SCALED = {
    **{m: "16-bit grayscale scaled to 8 bits (value / 257)" for m in _UINT16_MODES},
    "I": "32-bit integer grayscale scaled to 8 bits (its darkest value to black, brightest to white)",
    "F": "32-bit float grayscale scaled to 8 bits (0..1 times 255; any other range from its "
    "darkest value to black, brightest to white)",
}
TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation")


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class DataReport:
    """What was found in an image folder, before any training starts."""

    root: str
    layout: str  # "train/val" or "split"
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    skipped: list[SkippedFile] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)  # image mode -> count (conversion_note)
    warnings: list[str] = field(default_factory=list)

    def counts(self, items: list[tuple[str, int]]) -> list[int]:
        c = Counter(label for _, label in items)
        return [c.get(i, 0) for i in range(len(self.classes))]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> str:
        """A readable report for the terminal or a dialog."""
        train_counts, val_counts = self.counts(self.train), self.counts(self.val)
        how = (
            "train/ and val/ folders"
            if self.layout == "train/val"
            else "validation split from one folder"
        )
        lines = [
            f"{printable(self.root)}: {len(self.classes)} classes, {len(self.train)} training and "
            f"{len(self.val)} validation images ({how})"
        ]
        names = [printable(c) for c in self.classes]  # folder names may hold escape codes
        width = max(len(c) for c in names)
        for name, t, v in zip(names, train_counts, val_counts):
            lines.append(f"  {name:<{width}}  train {t:>6}  val {v:>6}")
        rgb = {m: n for m, n in self.converted.items() if m not in _SCALED}
        if rgb:
            modes = ", ".join(f"{n} {printable(m)}" for m, n in sorted(rgb.items()))
            lines.append(f"converted to RGB: {modes}")
        for mode, n in sorted(self.converted.items()):
            if mode in _SCALED:
                lines.append(f"converted {n} {mode} image(s): {conversion_note(mode)}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            for s in self.skipped[:20]:
                lines.append(f"  {printable(s.path)}: {printable(s.reason)}")
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        lines += [f"warning: {printable(w)}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "train_counts": self.counts(self.train),
            "val_counts": self.counts(self.val),
            "skipped": [s.__dict__ for s in self.skipped],
            "converted": self.converted,
            "conversions": {m: conversion_note(m) for m in self.converted},
            "warnings": self.warnings,
        }


def conversion_note(mode: str) -> str:
    """What loading does to an image of this mode (see load_rgb); "RGB" is kept as it is."""
    if mode == "RGB":
        return "kept as RGB"
    return _SCALED.get(mode, f"{printable(mode)} converted to RGB")


def _check_image(path: Path) -> tuple[str | None, str | None]:
    """(mode, None) for an image that decodes completely, (None, reason) otherwise.

    Every image is decoded once here, before training (a JPEG at 1/8 scale, which still reads
    all of its data), so a truncated or corrupt file is skipped and listed now, not met mid-epoch.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            img.verify()
        with Image.open(path) as img:
            img.draft(None, (1, 1))  # JPEG: decode at the smallest scale; others: no effect
            img.load()
        return mode, None
    except PermissionError:
        return None, "cannot be read (permission denied)"
    except UnidentifiedImageError:
        return None, "not an image PIL can read"
    except EOFError:
        return None, "truncated: the file ends before its image data does"
    except (OSError, SyntaxError, ValueError) as e:
        if "truncated" in str(e).lower():
            return None, "truncated: the file ends before its image data does"
        return None, f"cannot be decoded ({e})"
    except Image.DecompressionBombError:
        return None, "too large (decompression bomb guard)"


def _why(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return str(e.strerror or e).lower()


def _unreadable(folder: Path, e: OSError) -> DataError:
    return DataError(
        f"Folder {printable(folder)} cannot be read ({_why(e)}).",
        "Give your user read access to it (e.g. chmod -R u+rX on it) or choose another folder.",
    )


def _class_dirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(
                Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")
            )
    except OSError as e:
        raise _unreadable(folder, e) from e


def _list_files(class_dir: Path) -> tuple[list[Path], list[OSError]]:
    """The files under a class folder, and the (sub)folders that could not be read."""
    errors: list[OSError] = []
    files = [
        Path(top, name)
        for top, _dirs, names in os.walk(class_dir, onerror=errors.append)
        for name in names
        if not name.startswith(".") and Path(top, name).is_file()
    ]
    return sorted(files), errors


def scan_folder(
    root: str | Path,
    val_split: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> DataReport:
    """Find classes and images, check every file, and split off validation images.

    Every image is decoded once; unreadable, truncated or corrupt files, non-images and
    unreadable sub-folders are skipped and listed with the reason (never a surprise mid-epoch).
    Raises DataError for a missing, unreadable or empty folder, a class with no usable images
    or whose folder cannot be read, or fewer than two classes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Image folder not found: {printable(root)}",
            "Choose a folder with one sub-folder per class.",
        )
    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    train_dir = next((subdirs[n] for n in TRAIN_DIRS if n in subdirs), None)
    val_dir = next((subdirs[n] for n in VAL_DIRS if n in subdirs), None)
    layout = "train/val" if train_dir and val_dir else "split"
    source = train_dir if train_dir and not val_dir else root
    folders = {"train": train_dir, "val": val_dir} if layout == "train/val" else {"all": source}

    files: dict[str, dict[str, list[Path]]] = {}
    unreadable: dict[str, dict[str, str]] = {}  # split -> class -> "folder (why)"
    skipped_dirs: list[SkippedFile] = []
    for split, folder in folders.items():
        assert folder is not None
        class_dirs = _class_dirs(folder)
        if not class_dirs:
            loose = [p for p in folder.iterdir() if p.is_file()]
            detail = (
                f"It holds {len(loose)} file(s) but no class sub-folders."
                if loose
                else "It is empty."
            )
            raise DataError(
                f"No class folders in {printable(folder)}. {detail}",
                "Put each class's images in a sub-folder named after the class "
                "(e.g. data/cats/*.jpg, data/dogs/*.jpg).",
            )
        files[split] = {}
        for d in class_dirs:
            files[split][d.name], errors = _list_files(d)
            for e in errors:
                where = Path(e.filename) if e.filename else d
                rel = where.relative_to(root) if where.is_relative_to(root) else where
                if where == d:
                    unreadable.setdefault(split, {})[d.name] = f"{rel} ({_why(e)})"
                skipped_dirs.append(SkippedFile(f"{rel}/", f"folder cannot be read ({_why(e)})"))

    classes = sorted(files["train" if layout == "train/val" else "all"])
    if layout == "train/val":
        extra = sorted(set(files["val"]) - set(classes))
        if extra:
            raise DataError(
                f"val/ has class folder(s) that train/ lacks: "
                f"{', '.join(printable(c) for c in extra)}.",
                "Give train/ and val/ the same class folders.",
            )
    if len(classes) < 2:
        raise DataError(
            f"Found {len(classes)} class folder(s) in {printable(root)}; "
            "training a classifier needs at least two.",
            "Add a sub-folder of images for each class.",
        )

    all_files = [
        (split, cls, f)
        for split, by_class in files.items()
        for cls, fs in by_class.items()
        for f in fs
    ]
    report = DataReport(str(root), layout, classes, [], [], skipped=skipped_dirs)
    modes: Counter[str] = Counter()
    good: dict[str, dict[str, list[str]]] = {s: {c: [] for c in classes} for s in files}
    total = len(all_files)
    done = 0
    for (split, cls, path), (mode, reason) in _check_files(all_files, should_cancel):
        done += 1
        if progress and (done % 64 == 0 or done == total):
            progress(done, total)
        if reason:
            report.skipped.append(SkippedFile(str(path.relative_to(root)), reason))
            continue
        assert mode is not None
        if mode != "RGB":
            modes[mode] += 1
        good[split].setdefault(cls, []).append(str(path))
    report.converted = dict(modes)

    index = {c: i for i, c in enumerate(classes)}
    empty = [c for c in classes if not any(good[s].get(c) for s in good if s != "val")]
    cannot_read = [
        printable(where)
        for split, by_class in unreadable.items()
        if split != "val"
        for c, where in by_class.items()
        if c in empty
    ]
    if cannot_read:
        raise DataError(
            f"Class folder(s) that cannot be read: {', '.join(cannot_read)}.",
            "Give your user read access to them (e.g. chmod -R u+rX on each) or remove them.",
        )
    if empty:
        raise DataError(
            f"Class folder(s) with no usable images: {', '.join(printable(c) for c in empty)}.",
            "Add images to them or remove the folders.",
        )
    if layout == "train/val":
        report.train = [(f, index[c]) for c in classes for f in good["train"][c]]
        report.val = [(f, index[c]) for c in classes for f in good["val"].get(c, [])]
        missing_val = [c for c in classes if not good["val"].get(c)]
        if missing_val:
            report.warnings.append(
                f"no validation images for: {', '.join(printable(c) for c in missing_val)}"
            )
    else:
        report.train, report.val = stratified_split(
            {index[c]: good["all"][c] for c in classes}, val_split, seed
        )
        if val_split > 0:
            few = [c for c in classes if len(good["all"][c]) < 2]
            if few:
                report.warnings.append(
                    f"too few images to validate on: {', '.join(printable(c) for c in few)}"
                )
    if not report.val:
        report.warnings.append("no validation images: accuracy cannot be measured")
    imbalance = imbalance_warning(report)
    if imbalance:
        report.warnings.append(imbalance)
    return report


def imbalance_warning(report: DataReport) -> str | None:
    """A warning when the largest class has more than IMBALANCE_RATIO× the smallest's
    training images: a model then learns to favour the large classes."""
    counts = report.counts(report.train)
    if not counts or min(counts) == 0:
        return None
    large, small = max(counts), min(counts)
    if large <= IMBALANCE_RATIO * small:
        return None
    return (
        f"classes are imbalanced: {printable(report.classes[counts.index(large)])} has "
        f"{large} training images, {printable(report.classes[counts.index(small)])} "
        f"{small} ({large / small:.1f}×); --class-balance sampler or loss evens them out"
    )


def class_weights(counts: list[int]) -> list[float]:
    """Inverse-frequency class weights, normalised so that the images' mean weight is 1
    (n / (classes × count), scikit-learn's "balanced"): a balanced set gets all ones."""
    n, k = sum(counts), len(counts)
    return [n / (k * c) if c else 0.0 for c in counts]


_SCAN_THREADS = 8
# Files checked ahead of the one being reported: a cancel waits for at most these.
_SCAN_AHEAD = 4 * _SCAN_THREADS


def _check_files(
    items: list[tuple[str, str, Path]],
    should_cancel: Callable[[], bool] | None,
) -> Iterator[tuple[tuple[str, str, Path], tuple[str | None, str | None]]]:
    """(item, _check_file(path)) for each item, in order, on a thread pool.

    At most _SCAN_AHEAD files are queued at once, and `should_cancel` is asked after each file:
    a cancel raises DataError at once, drops what is queued and leaves the few files being
    decoded to finish in the background (nothing waits for them)."""
    pool = ThreadPoolExecutor(max_workers=_SCAN_THREADS, thread_name_prefix="scan")
    pending: deque = deque()
    queue = iter(items)
    try:
        for item in itertools.islice(queue, _SCAN_AHEAD):
            pending.append((item, pool.submit(_check_file, item[2])))
        while pending:
            if should_cancel and should_cancel():
                raise DataError("Dataset check cancelled.", "Start it again when ready.")
            item, future = pending.popleft()
            result = future.result()
            for more in itertools.islice(queue, 1):
                pending.append((more, pool.submit(_check_file, more[2])))
            yield item, result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _check_file(path: Path) -> tuple[str | None, str | None]:
    if path.suffix.lower() not in IMG_EXTENSIONS:
        return None, "not an image file (extension)"
    return _check_image(path)


def stratified_split(
    by_class: dict[int, list[str]], val_fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Seeded split that keeps each class's share in validation; every class keeps a training image."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(
            f"Validation split must be in [0, 1), got {val_fraction}.", "Use e.g. --val-split 0.2."
        )
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction) if val_fraction > 0 else 0
        if val_fraction > 0 and n_val == 0 and len(items) >= 2:
            n_val = 1
        n_val = min(n_val, len(items) - 1)
        val += [(f, label) for f in items[:n_val]]
        train += [(f, label) for f in items[n_val:]]
    return sorted(train), sorted(val)


# ---------------------------------------------------------------------- transforms
def timm_policy(policy: str | None) -> str | None:
    """The auto-augment policy as timm's create_transform takes it (None: off)."""
    if policy is None or policy.strip().lower() == "off":
        return None
    policy = policy.strip()
    return AUTO_AUGMENT_ALIASES.get(policy.lower(), policy)


def auto_augment_problem(policy: str | None) -> str | None:
    """Why timm cannot build this auto-augment policy, or None when it can (a 32 px trial
    transform: no image is read)."""
    aa = timm_policy(policy)
    if aa is None:
        return None
    # timm skips a section without a number (rand-m9-bogus trains as rand-m9): each section
    # after the name must be KEY+VALUE (m9, mstd0.5, inc1, w0.2), or the policy is misspelt.
    name, *sections = aa.split("-")
    if name in ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a"):
        for section in sections:
            # (a "t..." section names timm's transform set, e.g. rand-m9-t3a)
            if not re.fullmatch(r"[a-z]+\d[\d.]*|t\w+", section):
                return f"{section!r} in {aa!r} is not a KEY+number section (e.g. m9, mstd0.5)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            create_transform(input_size=(3, 32, 32), is_training=True, auto_augment=aa)
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as e:
        return str(e) or "timm cannot read it"
    return None


def train_is_random(augmentation: str) -> bool:
    """Whether training images are augmented (a random transform), so neither they nor their
    features can be kept ready between epochs (the image and feature caches)."""
    return augmentation != "none"


def build_transforms(
    data_config: dict[str, Any],
    image_size: int | None = None,
    augmentation: str = "light",
    auto_augment: str | None = None,
    random_erase: float | None = None,
) -> tuple[Callable, Callable]:
    """(train, eval) transforms from the model's own data config (timm's create_transform).

    augmentation picks a preset of create_transform arguments (_PRESETS); auto_augment (a timm
    policy, "off", or None: the preset's) and random_erase (a probability, or None: the
    preset's) override its own. "none" is resize and center crop only."""
    if augmentation not in AUGMENTATIONS:
        raise DataError(
            f"Unknown augmentation {augmentation!r}.", f"Use one of: {', '.join(AUGMENTATIONS)}."
        )
    size = image_size or int(data_config["input_size"][-1])
    common = {
        "input_size": (3, size, size),
        "interpolation": data_config.get("interpolation", "bilinear"),
        "mean": tuple(data_config.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(data_config.get("std", (0.229, 0.224, 0.225))),
    }
    eval_tf = create_transform(
        **common, is_training=False, crop_pct=data_config.get("crop_pct", 0.875), crop_mode="center"
    )
    if not train_is_random(augmentation):
        return eval_tf, eval_tf
    args = dict(_PRESETS[augmentation])
    if auto_augment is not None:
        args["auto_augment"] = timm_policy(auto_augment)
    if random_erase is not None:
        args["re_prob"] = random_erase
    problem = auto_augment_problem(args["auto_augment"])
    if problem:
        raise DataError(
            f"Unknown auto-augment policy {args['auto_augment']!r} ({problem}).",
            "Use e.g. " + ", ".join(AUTO_AUGMENT_EXAMPLES[1:]) + ", or off.",
        )
    train_tf = create_transform(**common, is_training=True, **args)
    return train_tf, eval_tf


# ---------------------------------------------------------------------- datasets
def scale_to_8bit(img: Image.Image) -> Image.Image:
    """A grayscale image of more than 8 bits ("I;16", "I", "F") as 8-bit grayscale ("L"),
    scaled by its value range instead of clipped (PIL's own convert clips at 255, which turns
    a 16-bit image white and a 0..1 float image black).

    - 16-bit (I;16, I;16B, ...): value / 257, so 0..65535 maps exactly onto 0..255. The fixed
      divisor keeps brightness comparable between images, as for 8-bit files.
    - 32-bit float (F): values all within 0..1 (the usual convention) are multiplied by 255;
      any other range is stretched from the image's darkest value (black) to its brightest
      (white). NaN and infinite values become black.
    - 32-bit integer (I): no standard white level, so stretched darkest to brightest.
    A constant image outside these ranges becomes black. Values are rounded to the nearest level.
    """
    a = np.asarray(img).astype(np.float64)
    finite = np.isfinite(a)
    if img.mode in _UINT16_MODES:
        scaled = a / 257.0
    else:
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = a * 255.0
        elif hi > lo:
            scaled = (a - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(a)
    scaled = np.where(finite, scaled, 0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def load_rgb(path: str) -> Image.Image:
    """An image file as RGB: transparency composited onto white, images of more than 8 bits
    per pixel scaled to 8 (scale_to_8bit), any other mode converted by PIL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about palette transparency; we convert anyway
        with Image.open(path) as img:
            if img.mode in _SCALED:
                return scale_to_8bit(img).convert("RGB")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # Composite onto white so transparent areas don't turn black.
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return img.convert("RGB")


class ImageItems(Dataset):
    """Images and labels; keys are (index, epoch) so augmentation is a function of both.

    Seeding per sample makes augmentation independent of worker count and lets a resumed run
    see exactly the images the uninterrupted run would have seen.
    """

    def __init__(
        self,
        items: list[tuple[str, int]],
        transform: Callable,
        seed: int = 0,
        random_transform: bool = True,
        decoded: DecodedImages | None = None,
    ) -> None:
        self.items = items
        self.transform = transform
        self.seed = seed
        self.decoded = decoded  # decoded images kept across epochs (random transforms)
        # A deterministic transform (validation, augment "none") needs no per-sample seeding.
        self.random_transform = random_transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int]:
        # (index, epoch) or (index, epoch, draw): the draw-th time a class-balancing sampler
        # drew this image in the epoch gets an augmentation of its own.
        index, epoch, draw = (*key, 0)[:3] if isinstance(key, tuple) else (key, 0, 0)
        for attempt in range(len(self.items)):
            at = (index + attempt) % len(self.items)
            path, label = self.items[at]
            image = self.decoded.get(at) if self.decoded is not None else None
            if image is not None:
                break
            try:
                image = load_rgb(path)
                if self.decoded is not None:
                    self.decoded.put(at, image)
                break
            except (OSError, ValueError) as e:
                # Decoding failed after the header check passed (e.g. truncated data): warn and
                # use the next image rather than crash mid-epoch.
                warnings.warn(f"skipping unreadable image {printable(path)}: {e}", stacklevel=1)
        else:
            raise DataError("No image in the dataset could be decoded.", "Check the image files.")
        if not self.random_transform:
            return self.transform(image), label
        sample_seed = (self.seed * 1_000_003 + epoch * 7_919 + index + draw * 104_729) % (2**31)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also seeds every accelerator backend,
            # whose lazy-init bookkeeping (a formatted stack per call) tripled loading time.
            torch.default_generator.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed)
            tensor = self.transform(image)
        random.setstate(py_state)
        np.random.set_state(np_state)
        return tensor, label


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Shuffled batches whose order depends only on (seed, epoch); can start mid-epoch.

    Each epoch uses every index exactly once (see `batches`), and `set_epoch(epoch, start_batch)`
    skips the batches already trained, so a resumed run sees exactly the remaining batches.

    weights (train.class_balance sampler): each epoch instead draws n indices with replacement,
    index i with probability weights[i] / sum (torch.multinomial, WeightedRandomSampler's
    draw), from the same (seed, epoch) generator: as deterministic, and resumable mid-epoch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        world: int = 1,
        weights: list[float] | None = None,
    ) -> None:
        self.n = n
        self.batch_size = max(1, min(batch_size, n))
        self.seed = seed
        self.shuffle = shuffle
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights else None
        # Processes sharing each batch (torch.distributed): every one needs an image of it.
        self.world = max(1, world)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def batches(self) -> list[list[int]]:
        """This epoch's batches: a permutation of range(n) (seeded by seed and epoch) cut into
        batches of `batch_size`, the last one shorter when n does not divide evenly.

        A last batch of a single image would break BatchNorm in training ("Expected more than
        1 value per channel"), so when shuffling the last two batches share their
        batch_size + 1 images instead: in halves (batch 8: 5 and 4), or, for batch size 2, as
        one batch of 3. Every index still appears exactly once. (With batch size 1 every batch
        holds one image, as asked.) With several processes a short tail joins the batch
        before it instead (shards.merge_short_tail), so that no rank's share is one image.
        """
        if self.shuffle and self.weights is not None:
            g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
            order = torch.multinomial(self.weights, self.n, True, generator=g).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        size = self.batch_size
        out = [order[i : i + size] for i in range(0, self.n, size)]
        if self.world > 1:
            # Each rank gets two images or more whenever a full batch gives it two.
            return merge_short_tail(out, self.world, 2 if size >= 2 * self.world else 1)
        if self.shuffle and size >= 2 and len(out) > 1 and len(out[-1]) == 1:
            tail = out.pop(-2) + out.pop()  # size + 1 images
            half = (len(tail) + 1) // 2
            out += [tail[:half], tail[half:]] if size >= 3 else [tail]
        return out

    def draws(self) -> list[list[int]] | None:
        """For each image of `batches()`, how many times this epoch drew it before (drawing
        with replacement: each repeat is augmented differently); None without weights."""
        if self.weights is None or not self.shuffle:
            return None
        seen: dict[int, int] = {}
        out = []
        for batch in self.batches():
            row = []
            for i in batch:
                row.append(seen.get(i, 0))
                seen[i] = row[-1] + 1
            out.append(row)
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches()[self.start_batch :]:
            yield [(i, self.epoch) for i in batch]

    def __len__(self) -> int:
        return len(self.batches())


class Batch(NamedTuple):
    """A batch of a split: its dataset indices, images (None when not loaded) and labels."""

    indices: list[int]
    x: torch.Tensor | None
    y: torch.Tensor
    # Images in the whole batch of all processes (torch.distributed); 0: this batch alone.
    total: int = 0


Skip = Callable[[list[int]], bool]


class Loaders:
    """The run's batches: training batches in the sampler's order and the validation batches.

    Deterministic transforms (validation; training with augmentation "none") hand over uint8
    images, normalised later on the device (`finish`): 4× less to copy, and small enough to
    keep in the PreparedImages, so later epochs skip decoding and the worker processes altogether.
    """

    def __init__(
        self,
        train: DataLoader,
        val: DataLoader | None,
        train_sampler: EpochBatchSampler,
        train_order: ListedBatches,
        val_order: ListedBatches | None,
        train_cache: PreparedImages | None = None,
        val_cache: PreparedImages | None = None,
        train_finish: DeviceNormalize | None = None,
        val_finish: DeviceNormalize | None = None,
        pin_memory: bool = False,
        val_batch_size: int = 1,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.train = train
        self.val = val
        self.train_sampler = train_sampler
        self._train_order = train_order
        self._val_order = val_order
        self.train_cache = train_cache
        self.val_cache = val_cache
        self.train_finish = train_finish
        self.val_finish = val_finish
        self.pin_memory = pin_memory
        self._val_batches: list[list[int]] = []
        self._labels = {
            split: torch.as_tensor([label for _, label in loader.dataset.items])  # type: ignore[attr-defined]
            for split, loader in (("train", train), ("val", val))
            if loader is not None
        }
        # With several processes each trains on its share of every global batch and
        # validates its own share of the validation images (core/train/distributed.py).
        self.rank, self.world = rank, world
        if val is not None:
            mine = shard(list(range(len(val.dataset))), rank, world)  # type: ignore[arg-type]
            size = max(1, min(val_batch_size, len(mine)))
            self._val_batches = [mine[i : i + size] for i in range(0, len(mine), size)]

    def train_batches(
        self, epoch: int, start_batch: int = 0, skip: Skip | None = None
    ) -> Iterator[Batch]:
        """This epoch's batches from `start_batch` on (raw: apply `train_finish` on the device).
        Batches `skip` accepts come without images (x None): their features are cached."""
        self.train_sampler.set_epoch(epoch, start_batch)
        whole = self.train_sampler.batches()[start_batch:]
        batches = [shard(b, self.rank, self.world) for b in whole]
        totals = [len(b) for b in whole]
        every_draw = self.train_sampler.draws()
        draws = (
            [shard(d, self.rank, self.world) for d in every_draw[start_batch:]]
            if every_draw is not None
            else None
        )
        return self._serve(
            "train",
            self.train,
            self._train_order,
            self.train_cache,
            batches,
            epoch,
            skip,
            totals,
            draws,
        )

    def train_batch_sizes(self, epoch: int) -> list[int]:
        """The image count of each of this epoch's (global) training batches, all of them: a
        step of accumulated batches weights each by its share of the step's images."""
        self.train_sampler.set_epoch(epoch, self.train_sampler.start_batch)
        return [len(b) for b in self.train_sampler.batches()]

    def val_batches(self, skip: Skip | None = None) -> Iterator[Batch]:
        if self.val is None or self._val_order is None:
            return iter(())
        return self._serve(
            "val", self.val, self._val_order, self.val_cache, self._val_batches, 0, skip
        )

    def load(
        self, split: str, indices: list[int], epoch: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch's images, loaded here (a batch served without images whose cached
        features can no longer be used, after a plan change mid-epoch)."""
        loader = self.train if split == "train" else self.val
        assert loader is not None
        cache = self.train_cache if split == "train" else self.val_cache
        if cache is not None and cache.holds(indices):
            return cache.get(indices)
        return default_collate([loader.dataset[(i, epoch)] for i in indices])

    def _serve(
        self,
        split: str,
        loader: DataLoader,
        order: ListedBatches,
        cache: PreparedImages | None,
        batches: list[list[int]],
        epoch: int,
        skip: Skip | None,
        totals: list[int] | None = None,
        draws: list[list[int]] | None = None,
    ) -> Iterator[Batch]:
        labels = self._labels[split]
        totals = totals or [len(b) for b in batches]
        skipped = [skip is not None and skip(b) for b in batches]
        # Decided once, before the loader starts: with a class-balancing sampler an image can
        # recur within an epoch, so a batch the cache lacks now may be held by the time it is
        # served, and the loader's batches must still line up with those it was given.
        cached = [not s and cache is not None and cache.holds(b) for b, s in zip(batches, skipped)]
        keep = [not s and not c for s, c in zip(skipped, cached)]
        missing = [b for b, k in zip(batches, keep) if k]
        if draws is None:
            order.set([[(i, epoch) for i in b] for b in missing])
        else:
            kept_draws = [d for d, k in zip(draws, keep) if k]
            order.set([list(zip(b, [epoch] * len(b), d)) for b, d in zip(missing, kept_draws)])
        loaded = iter(loader) if missing else iter(())
        for batch, skipped_batch, held, total in zip(batches, skipped, cached, totals):
            if skipped_batch:
                yield Batch(batch, None, labels[torch.as_tensor(batch)], total)
                continue
            if held:
                assert cache is not None
                x, y = cache.get(batch)
                if self.pin_memory:
                    x, y = x.pin_memory(), y.pin_memory()
                yield Batch(batch, x, y, total)
                continue
            x, y = next(loaded)
            if cache is not None:
                cache.put(batch, x, y)
            yield Batch(batch, x, y, total)

    def cached_images(self) -> tuple[int, int]:
        """(images held, bytes) in the RAM caches."""
        decoded = getattr(self.train.dataset, "decoded", None)
        caches = [c for c in (self.train_cache, self.val_cache, decoded) if c is not None]
        return sum(c.count for c in caches), sum(c.nbytes for c in caches)

    def close(self) -> None:
        """End the worker processes now (persistent workers otherwise live as long as the
        loader object, e.g. until the window that ran the training quits); free the caches."""
        for loader in (self.train, self.val):
            iterator = getattr(loader, "_iterator", None) if loader is not None else None
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            if loader is not None:
                loader._iterator = None
        self.train_cache = self.val_cache = None
        if self.train is not None:
            self.train.dataset.decoded = None  # type: ignore[attr-defined]


class ListedBatches(Sampler[list[tuple[int, ...]]]):
    """The batch sampler the DataLoader reads: exactly the batches it was last given (those
    of this epoch the image cache does not hold), as (index, epoch[, draw]) keys."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, ...]]] = []

    def set(self, batches: list[list[tuple[int, ...]]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class DeviceNormalize:
    """ToTensor + Normalize for a batch of uint8 images, on whatever device it is on. The same
    float operations in the same order as torchvision's, so the values are bit-identical."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        # 255 as a tensor too: CUDA divides by a Python number as a multiplication by its
        # reciprocal, one bit off torchvision's CPU division for half of the byte values.
        self.constants = (
            torch.tensor(255.0),
            torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
        )
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        if x.device not in self._on:
            cuda = x.device.type == "cuda"  # elsewhere non_blocking may not wait for the data
            self._on[x.device] = tuple(c.to(x.device, non_blocking=cuda) for c in self.constants)
        scale, mean, std = self._on[x.device]
        return x.float().div_(scale).sub_(mean).div_(std)


def split_normalize(transform: Callable) -> tuple[Callable, DeviceNormalize] | None:
    """A Compose ending in ToTensor + Normalize as (the PIL part then PILToTensor, the rest for
    the device); None for any other transform."""
    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, Compose) or not steps or len(steps) < 2:
        return None
    to_tensor, normalize = steps[-2], steps[-1]
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or not isinstance(
        normalize, Normalize
    ):
        return None
    mean = tuple(float(v) for v in torch.as_tensor(normalize.mean).flatten())
    std = tuple(float(v) for v in torch.as_tensor(normalize.std).flatten())
    return Compose([*steps[:-2], PILToTensor()]), DeviceNormalize(mean, std)


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loaders(
    report: DataReport,
    train_tf: Callable,
    eval_tf: Callable,
    batch_size: int,
    workers: int,
    seed: int,
    pin_memory: bool = False,
    random_train: bool = True,
    cache_bytes: int = 0,
    image_size: int | None = None,
    rank: int = 0,
    world: int = 1,
    sample_weights: list[float] | None = None,
) -> Loaders:
    """Train and validation loaders; pinned memory and persistent workers where they help.

    sample_weights: one per training image, for a class-balancing sampler (EpochBatchSampler).

    random_train: whether the training transform is random (augmentation). A deterministic
    one is split (split_normalize) and its finished images kept in up to `cache_bytes` of RAM
    (PreparedImages), as the validation images always are; for a random one the decoded
    images are kept instead (DecodedImages, shared with the workers), and augmented anew.
    """
    train_split = None if random_train else split_normalize(train_tf)
    val_split = split_normalize(eval_tf)
    shape = (3, image_size, image_size) if image_size else None
    budget = cache_bytes
    val_cache = None
    if report.val and val_split and shape and budget > 0:
        # Validation first: it is read every epoch, whatever the augmentation.
        val_cache = PreparedImages(len(report.val), shape, budget)
        budget -= val_cache.nbytes_budgeted
    train_cache = None
    decoded = None
    if train_split and shape and budget > 0:
        train_cache = PreparedImages(len(report.train), shape, budget)
    elif not train_split and budget > 0 and can_share_with_workers(workers):
        decoded = DecodedImages(len(report.train), budget)
    train_ds = ImageItems(
        report.train, train_split[0] if train_split else train_tf, seed, random_train, decoded
    )
    # batch_size is the global batch: with `world` processes each takes its share of it.
    sampler = EpochBatchSampler(
        len(train_ds), batch_size, seed, world=world, weights=sample_weights
    )
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 2}
    train_order = ListedBatches()
    # Their own generators: a loader draws its workers' base seed from the global generator
    # at each iter() otherwise, and the cache skips iter() in later epochs, so dropout's
    # random numbers would depend on whether the cache held an epoch.
    train = DataLoader(
        train_ds,
        batch_sampler=train_order,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
    val = val_order = None
    if report.val:
        val_ds = ImageItems(report.val, val_split[0] if val_split else eval_tf, seed, False)
        val_order = ListedBatches()
        val = DataLoader(
            val_ds,
            batch_sampler=val_order,
            num_workers=workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed + 1),
            **extra,
        )
    return Loaders(
        train,
        val,
        sampler,
        train_order,
        val_order,
        train_cache,
        val_cache,
        train_split[1] if train_split else None,
        val_split[1] if val_split else None,
        pin_memory,
        max(1, batch_size // world) * 2,
        rank,
        world,
    )


# ---------------------------------------------------------------------- demo data
DEMO_CLASSES = ("circles", "squares", "stripes")


def write_demo_data(
    root: str | Path, per_class: int = 40, val_per_class: int = 10, size: int = 64, seed: int = 0
) -> Path:
    """A small generated image folder that a model can learn: circles, squares and stripes
    in random colours, positions and sizes on noisy backgrounds, split into train/ and val/."""
    root = Path(root).expanduser()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for cls in DEMO_CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                background = rng.uniform(0, 90, 3)
                img = np.clip(background + rng.normal(0, 18, (size, size, 3)), 0, 255)
                colour = rng.uniform(140, 255, 3)
                cx, cy = rng.uniform(0.3, 0.7, 2) * size
                r = rng.uniform(0.15, 0.3) * size
                if cls == "circles":
                    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
                elif cls == "squares":
                    mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
                else:
                    angle = rng.uniform(0, math.pi)
                    period = rng.uniform(0.12, 0.2) * size
                    phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
                    mask = (phase % 1.0) < 0.5
                img[mask] = colour
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{cls}_{i:03d}.png")
    return root
