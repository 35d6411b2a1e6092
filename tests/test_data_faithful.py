"""Data kept faithful: every image used once per epoch, high-bit-depth images scaled (not
clipped), truncated images and unreadable folders named before training, names escaped."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from freezer_app.core.data import (
    EpochBatchSampler,
    ImageItems,
    load_rgb,
    scan_folder,
)
from freezer_app.core.errors import DataError


# ---------------------------------------------------------------------- every image once
def _cases() -> list[tuple[int, int]]:
    cases = set()
    for b in (1, 2, 3, 4, 5, 7, 8, 16, 32):
        for n in (1, 2, 3, b - 1, b, b + 1, 2 * b - 1, 2 * b, 2 * b + 1, 3 * b + 1, 5 * b + 2):
            if n >= 1:
                cases.add((n, b))
    cases |= {(17, 8), (9, 8), (100, 33), (65, 64), (129, 64), (1000, 999)}
    return sorted(cases)


def _epoch(sampler: EpochBatchSampler, epoch: int, start: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start)
    out = []
    for batch in sampler:
        assert all(e == epoch for _, e in batch)
        out.append([i for i, _ in batch])
    return out


def test_every_epoch_uses_every_image_exactly_once() -> None:
    for n, b in _cases():
        for seed in (0, 7):
            sampler = EpochBatchSampler(n, b, seed)
            for epoch in range(3):
                batches = _epoch(sampler, epoch)
                flat = [i for batch in batches for i in batch]
                assert sorted(flat) == list(range(n)), (n, b, seed, epoch)
                assert len(sampler) == len(batches)
                size = min(b, n)
                # Full batches but the last one or two; never a batch of one that BatchNorm
                # cannot train on, unless there is one image or the batch size is 1.
                assert all(len(x) <= max(size, 3) for x in batches), (n, b)
                if n >= 2 and size >= 2:
                    assert min(len(x) for x in batches) >= 2, (n, b, [len(x) for x in batches])
                assert all(len(x) == size for x in batches[:-2]), (n, b)
                if size == 1:
                    assert all(len(x) == 1 for x in batches)
                # A pure function of (seed, epoch, start batch): a fresh sampler (a resumed
                # run) sees the same batches, and starting mid-epoch gives the rest of them.
                again = EpochBatchSampler(n, b, seed)
                assert _epoch(again, epoch) == batches
                for start in {0, 1, len(batches) // 2, len(batches) - 1, len(batches)}:
                    assert _epoch(again, epoch, start) == batches[start:], (n, b, start)
    # Different epochs are shuffled differently.
    sampler = EpochBatchSampler(17, 8, 0)
    assert _epoch(sampler, 0) != _epoch(sampler, 1)


class _Index(Dataset):
    def __len__(self) -> int:
        return 17

    def __getitem__(self, key: tuple[int, int]) -> int:
        return key[0]


def test_a_loader_over_17_images_in_batches_of_8_trains_on_all_17() -> None:
    sampler = EpochBatchSampler(17, 8, seed=0)
    loader = DataLoader(_Index(), batch_sampler=sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = torch.cat(list(loader)).tolist()
        assert sorted(seen) == list(range(17))


# ---------------------------------------------------------------------- 16-bit and float
def _gradient(lo: float, hi: float, dtype: type) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, 64), (8, 1)).astype(dtype)


def _assert_gradient(image: Image.Image, lo: int = 0, hi: int = 255) -> None:
    assert image.mode == "RGB"
    a = np.asarray(image).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    row = a[0, :, 0]
    assert abs(row[0] - lo) <= 1 and abs(row[-1] - hi) <= 1, (row[0], row[-1])
    assert (np.diff(row) >= 0).all() and len(set(row.tolist())) >= 60, row


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    png16 = tmp_path / "g16.png"
    Image.fromarray(_gradient(0, 65535, np.uint16)).save(png16)
    assert Image.open(png16).mode == "I;16"
    _assert_gradient(load_rgb(str(png16)))
    # Big-endian 16-bit, and a 16-bit image that uses a quarter of the range: /257 keeps it dark.
    big = tmp_path / "g16b.tif"
    Image.fromarray(_gradient(0, 65535, np.uint16).astype(">u2")).save(big)
    assert Image.open(big).mode.startswith("I;16")
    _assert_gradient(load_rgb(str(big)))
    quarter = tmp_path / "quarter.png"
    Image.fromarray(_gradient(0, 16383, np.uint16)).save(quarter)
    _assert_gradient(load_rgb(str(quarter)), 0, 64)
    # Float in 0..1 times 255; float of any other range by its own min..max; so is 32-bit int.
    unit = tmp_path / "unit.tif"
    Image.fromarray(_gradient(0.0, 1.0, np.float32)).save(unit)
    assert Image.open(unit).mode == "F"
    _assert_gradient(load_rgb(str(unit)))
    other = tmp_path / "depth.tif"
    Image.fromarray(_gradient(-3.0, 40.0, np.float32)).save(other)
    _assert_gradient(load_rgb(str(other)))
    wide = tmp_path / "wide.tif"
    Image.fromarray(_gradient(-1000, 90000, np.int32)).save(wide)
    assert Image.open(wide).mode == "I"
    _assert_gradient(load_rgb(str(wide)))
    # NaN becomes black instead of poisoning the scale.
    nan = _gradient(0.0, 1.0, np.float32)
    nan[:, 0] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    a = np.asarray(load_rgb(str(tmp_path / "nan.tif")))
    assert a[0, 0, 0] == 0 and a[0, -1, 0] == 255

    # Through the dataset, as training sees it: still a gradient.
    tensor, label = ImageItems([(str(png16), 1)], lambda im: torch.from_numpy(np.array(im)))[0]
    assert label == 1 and tensor[0, 0, 0] == 0 and tensor[0, -1, 0] == 255

    # The data check says what was done.
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(_gradient(0, 65535, np.uint16)).save(root / cls / "g16.png")
        Image.fromarray(_gradient(0.0, 1.0, np.float32)).save(root / cls / "f.tif")
        Image.new("L", (8, 8)).save(root / cls / "gray.png")
    report = scan_folder(root, val_split=0)
    assert report.converted == {"I;16": 2, "F": 2, "L": 2}
    text = report.summary()
    assert "converted 2 I;16 image(s): 16-bit grayscale scaled to 8 bits (value / 257)" in text
    assert "converted 2 F image(s): 32-bit float grayscale scaled to 8 bits" in text
    assert "converted to RGB: 2 L" in text
    assert report.to_dict()["conversions"]["I;16"].startswith("16-bit grayscale scaled")


# ---------------------------------------------------------------------- truncated images
def test_truncated_images_are_skipped_and_listed_before_training(tmp_path: Path) -> None:
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.jpg", quality=90)
    whole = (root / "cats" / "0.jpg").read_bytes()
    (root / "cats" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    png = (tmp_path / "p.png").read_bytes()
    (root / "dogs" / "cut.png").write_bytes(png[: len(png) // 2])

    report = scan_folder(root, val_split=0)
    skipped = {s.path: s.reason for s in report.skipped}
    assert set(skipped) == {"cats/cut.jpg", "dogs/cut.png"}
    assert all(r.startswith("truncated") for r in skipped.values()), skipped
    assert "cats/cut.jpg: truncated" in report.summary()
    assert len(report.train) == 6 and not any("cut" in p for p, _ in report.train)
    # Training then meets no surprise: no warning mid-epoch.
    items = ImageItems(report.train, lambda im: torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(items)):
            items[i]


# ---------------------------------------------------------------------- unreadable folders
_SCANDIR = os.scandir


def _deny(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Make os.scandir fail with EACCES on these folders (tests run as root, which chmod 000
    does not stop)."""
    real = _SCANDIR
    denied = {str(f) for f in folders}

    def scandir(path: os.PathLike | str = ".") -> object:
        if os.fspath(path) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _classes(root: Path, *names: str, n: int = 3) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_unreadable_folders_are_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _classes(tmp_path / "d", "cats", "dogs")
    _classes(root / "cats", "private")  # a sub-folder with images of its own
    _deny(monkeypatch, root / "dogs")
    with pytest.raises(DataError) as e:
        scan_folder(root, val_split=0)
    assert "cannot be read" in str(e.value) and "dogs (permission denied)" in str(e.value)
    assert "no usable images" not in str(e.value)

    # An unreadable sub-folder of a class that has other images: skipped and listed.
    _deny(monkeypatch, root / "cats" / "private")
    report = scan_folder(root, val_split=0)
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("cats/private/", "folder cannot be read (permission denied)")
    ]
    assert report.counts(report.train) == [3, 3]
    assert "cats/private/: folder cannot be read (permission denied)" in report.summary()

    # The image folder itself.
    _deny(monkeypatch, root)
    with pytest.raises(DataError, match=r"cannot be read \(permission denied\)"):
        scan_folder(root)


# ---------------------------------------------------------------------- names escaped
def test_printable_escapes_control_characters_only() -> None:
    from freezer_app.core.text import printable

    assert printable("cats") == "cats"
    assert printable("chats été 猫 dogs") == "chats été 猫 dogs"
    assert printable("red\x1b[31mX\x07") == "red\\x1b[31mX\\x07"
    assert printable("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert printable("abc\u202edef") == "abc\\u202edef"  # right-to-left override
    assert printable("bad\udcffbyte") == "bad\\udcffbyte"  # undecodable file-name byte
    assert printable("\x9b") == "\\x9b"  # C1 control sequence introducer
    assert printable(printable("x\x1by")) == printable("x\x1by")


def test_class_names_with_escape_codes_are_printed_escaped(tmp_path: Path) -> None:
    evil = "cats\x1b[2J\x1b[31m"
    root = _classes(tmp_path / "d", evil, "dogs\nwarning: forged line")
    report = scan_folder(root, val_split=0.5)
    text = report.summary()
    assert "\x1b" not in text and "cats\\x1b[2J\\x1b[31m" in text
    assert "dogs\\nwarning: forged line" in text
    assert not any(line.startswith("warning: forged") for line in text.splitlines())
    assert report.classes[0] == evil  # the data keeps the real name

    (root / "birds\x1b[0m").mkdir()
    with pytest.raises(DataError) as e:
        scan_folder(root)
    assert "\x1b" not in str(e.value) and "birds\\x1b[0m" in str(e.value)


def test_the_window_shows_escaped_names_and_every_reason(tmp_path: Path, qtbot) -> None:
    from freezer_app.gui.panels import DataPanel
    from freezer_app.gui.project_controller import ProjectController

    root = _classes(tmp_path / "d", "cats\x1b[31m", "dogs")
    Image.fromarray(_gradient(0, 65535, np.uint16)).save(root / "dogs" / "g16.png")
    (root / "dogs" / "notes.txt").write_text("x")
    report = scan_folder(root, val_split=0)
    controller = ProjectController()
    panel = DataPanel(controller)
    qtbot.addWidget(panel)
    panel.show_report(report)
    texts = []
    for i in range(panel.report.topLevelItemCount()):
        item = panel.report.topLevelItem(i)
        texts.append(item.text(0))
        texts += [item.child(j).text(0) for j in range(item.childCount())]
    assert "cats\\x1b[31m" in texts and not any("\x1b" in t for t in texts)
    # The mode in words ("16-bit grayscale", not "I;16"), and what was done to it.
    assert any("16-bit grayscale: 16-bit grayscale scaled to 8 bits" in t for t in texts), texts
    assert not any("I;16" in t for t in texts), texts
    assert any(t.startswith("dogs/notes.txt: not an image file") for t in texts), texts
