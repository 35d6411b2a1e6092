"""Image-folder checks: every bad-data case gets its message; odd images are handled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freezer_app.core.data import (
    ImageItems,
    build_transforms,
    scan_folder,
    stratified_split,
)
from freezer_app.core.errors import DataError


def _image(path: Path, mode: str = "RGB", size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    img.save(path, format="JPEG" if path.suffix == ".jpg" else "PNG" if mode != "CMYK" else "TIFF")
    return path


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _image(root / cls / f"{i}.png")
    return root


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="It is empty") as e:
        scan_folder(tmp_path / "empty")
    assert "sub-folder named after the class" in str(e.value)
    loose = tmp_path / "loose"
    _image(loose / "a.png")
    with pytest.raises(DataError, match="1 file\\(s\\) but no class sub-folders"):
        scan_folder(loose)


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least two"):
        scan_folder(_folder(tmp_path / "d", {"cats": 3}))


def test_class_without_images(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cats": 3, "dogs": 3})
    (root / "birds").mkdir()
    (root / "birds" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no usable images: birds"):
        scan_folder(root)


def test_bad_files_are_skipped_and_listed_and_odd_modes_converted(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cats": 4, "dogs": 4})
    (root / "cats" / "readme.txt").write_text("hello")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "dogs" / "fake.jpg").write_bytes(b"GIF89a nonsense")
    _image(root / "cats" / "gray.png", "L")
    _image(root / "cats" / "alpha.png", "RGBA")
    _image(root / "dogs" / "print.tif", "CMYK")
    report = scan_folder(root, val_split=0.25)
    skipped = {s.path: s.reason for s in report.skipped}
    assert set(skipped) == {"cats/readme.txt", "dogs/broken.png", "dogs/fake.jpg"}
    assert "not an image file" in skipped["cats/readme.txt"]
    assert report.converted == {"L": 1, "RGBA": 1, "CMYK": 1}
    assert len(report.train) + len(report.val) == 11
    text = report.summary()
    assert "skipped 3 file(s)" in text and "converted to RGB: 1 CMYK, 1 L, 1 RGBA" in text
    # Every kept image loads as a 3-channel tensor.
    _, eval_tf = build_transforms({"input_size": (3, 24, 24)}, 24, "none")
    ds = ImageItems(report.train + report.val, eval_tf)
    assert all(ds[i][0].shape == (3, 24, 24) for i in range(len(ds)))


def test_train_val_layout_and_class_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _folder(root / "train", {"a": 3, "b": 3})
    _folder(root / "val", {"a": 1, "b": 1})
    report = scan_folder(root)
    assert report.layout == "train/val"
    assert report.classes == ["a", "b"]
    assert report.counts(report.train) == [3, 3] and report.counts(report.val) == [1, 1]
    _folder(root / "val", {"c": 1})
    with pytest.raises(DataError, match="val/ has class folder\\(s\\) that train/ lacks: c"):
        scan_folder(root)


def test_stratified_split_is_seeded_and_keeps_every_class() -> None:
    by_class = {0: [f"a{i}" for i in range(10)], 1: [f"b{i}" for i in range(5)], 2: ["c0"]}
    train, val = stratified_split(by_class, 0.2, seed=1)
    assert stratified_split(by_class, 0.2, seed=1) == (train, val)
    assert stratified_split(by_class, 0.2, seed=2) != (train, val)
    counts = lambda items, label: sum(1 for _, y in items if y == label)
    assert (counts(val, 0), counts(val, 1), counts(val, 2)) == (2, 1, 0)
    assert counts(train, 2) == 1  # a single image stays in training
    with pytest.raises(DataError, match="\\[0, 1\\)"):
        stratified_split(by_class, 1.0, seed=0)


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 2, "b": 2})
    report = scan_folder(root, val_split=0)
    train_tf, _ = build_transforms({"input_size": (3, 24, 24)}, 24, "strong")
    ds = ImageItems(report.train, train_tf, seed=3)
    import torch

    assert torch.equal(ds[(1, 0)][0], ds[(1, 0)][0])
    assert not torch.equal(ds[(1, 0)][0], ds[(1, 1)][0])
    with pytest.raises(DataError, match="Unknown augmentation"):
        build_transforms({"input_size": (3, 24, 24)}, 24, "wild")


def test_atomic_writes_have_the_usual_file_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import freezer_app.core.files as files

    monkeypatch.setattr(files, "_UMASK", 0o022)
    files.write_text(tmp_path / "a.txt", "x")
    with files.atomic_dir(tmp_path / "bundle") as tmp:
        (tmp / "f").write_text("y")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755
    (tmp_path / "a.txt").chmod(0o640)
    files.write_text(tmp_path / "a.txt", "z")  # replacing keeps the file's own mode
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
