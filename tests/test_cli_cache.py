"""`freezer-app cache list|clear` on real feature caches (written by FeatureStore.persist)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

from freezer_app.cli import main
from freezer_app.cli.common import EXIT_OK, EXIT_USAGE
from freezer_app.core.feature_store import FeatureStore, key_hash


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FREEZER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


def make_cache(
    tmp_path: Path, architecture: str, cut: str, size: int, n: int, used: float | None = None
) -> Path:
    """A cache of `n` rows of 16 floats, as a training run leaves it; `used`: its last use."""
    images = []
    for i in range(n):
        p = tmp_path / "images" / architecture.replace(":", "_") / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (i + 1))
        images.append(str(p))
    key = {"architecture": architecture, "cut": cut, "image_size": size, "weights": "w"}
    store = FeatureStore(key, images, (16,), torch.float32, ram_bytes=2**20)
    store.put(list(range(n)), torch.randn(n, 16))
    store.persist()
    store.close()
    assert store.folder.name == key_hash(key)
    if used is not None:
        os.utime(store.folder / "index.json", (used, used))
    return store.folder


@pytest.fixture
def two(tmp_path: Path, root: Path) -> tuple[Path, Path]:
    now = time.time()
    older = make_cache(tmp_path, "timm:resnet18", "global_pool.flatten", 224, 5, now - 3600)
    newer = make_cache(tmp_path, "torchvision:vgg11", "features.20", 64, 3, now)
    assert older.parent == root
    return older, newer


def test_list_shows_a_table_most_recent_first(
    capsys: pytest.CaptureFixture[str], root: Path, two: tuple[Path, Path]
) -> None:
    older, newer = two
    code, out, err = run(capsys, "cache", "list")
    assert code == EXIT_OK, err
    lines = out.splitlines()
    header = ["id", "architecture", "cut", "image size", "images", "on disk", "last used"]
    assert re.split(r"\s{2,}", lines[0]) == header
    first, second = lines[1].split(), lines[2].split()
    assert first[:5] == [newer.name[:12], "torchvision:vgg11", "features.20", "64", "px"]
    assert first[5] == "3"
    assert second[:6] == [older.name[:12], "timm:resnet18", "global_pool.flatten", "224", "px", "5"]
    # Size on disk in human units, the last use as a local date and time.
    assert second[7] in ("B", "KB") and float(second[6].replace(",", "")) > 0
    expected = time.strftime(
        "%Y-%m-%d %H:%M", time.localtime(newer.joinpath("index.json").stat().st_mtime)
    )
    assert lines[1].endswith(expected)
    assert lines[3].startswith("total: 2 feature caches, 8 images, ")
    assert lines[4] == f"folder: {root}"


def test_list_json(capsys: pytest.CaptureFixture[str], root: Path, two: tuple[Path, Path]) -> None:
    older, newer = two
    code, out, _ = run(capsys, "cache", "list", "--json")
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["folder"] == str(root)
    assert [c["id"] for c in data["caches"]] == [newer.name, older.name]
    vgg = data["caches"][0]
    assert vgg["architecture"] == "torchvision:vgg11" and vgg["cut"] == "features.20"
    assert vgg["image_size"] == 64 and vgg["images"] == 3 and vgg["folder"] == str(newer)
    assert data["total_bytes"] == sum(c["bytes"] for c in data["caches"]) > 0


def test_an_empty_cache_says_so(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    code, out, _ = run(capsys, "cache", "list")
    assert code == EXIT_OK and out == f"no feature caches in {root}\n"
    code, out, _ = run(capsys, "cache", "list", "--json")
    assert json.loads(out) == {"folder": str(root), "caches": [], "total_bytes": 0}
    code, out, _ = run(capsys, "cache", "clear")
    assert code == EXIT_OK and out == f"no feature caches in {root}\n"


def test_clear_all(capsys: pytest.CaptureFixture[str], root: Path, two: tuple[Path, Path]) -> None:
    older, newer = two
    code, out, err = run(capsys, "cache", "clear")
    assert code == EXIT_OK, err
    assert not older.exists() and not newer.exists()
    assert f"removed {newer.name[:12]}" in out and f"removed {older.name[:12]}" in out
    assert out.splitlines()[-1].startswith("removed 2 feature caches, freed ")
    assert out.splitlines()[-1].endswith(f" in {root}")
    _, out, _ = run(capsys, "cache", "list")
    assert out == f"no feature caches in {root}\n"


def test_clear_one_by_a_prefix_of_its_id(
    capsys: pytest.CaptureFixture[str], root: Path, two: tuple[Path, Path]
) -> None:
    older, newer = two
    code, out, err = run(capsys, "cache", "clear", older.name[:6], "--json")
    assert code == EXIT_OK, err
    data = json.loads(out)
    assert [c["id"] for c in data["removed"]] == [older.name]
    assert data["freed_bytes"] == data["removed"][0]["bytes"] > 0 and data["not_removed"] == []
    assert not older.exists() and newer.exists()
    # The same cache named twice (whole id and a prefix) is removed once.
    code, out, _ = run(capsys, "cache", "clear", newer.name, newer.name[:12])
    assert code == EXIT_OK and not newer.exists()
    assert out.splitlines()[-1].startswith("removed 1 feature cache, freed ")


def test_an_unknown_id_removes_nothing(
    capsys: pytest.CaptureFixture[str], root: Path, two: tuple[Path, Path]
) -> None:
    older, newer = two
    unknown = "zz" if not older.name.startswith("zz") else "yy"
    code, out, err = run(capsys, "cache", "clear", older.name[:12], unknown)
    assert code == EXIT_USAGE and out == ""
    assert f"no feature cache has the id '{unknown}'" in err and "nothing was removed" in err
    assert "freezer-app cache list" in err
    assert older.exists() and newer.exists()


def test_an_ambiguous_id_removes_nothing(
    capsys: pytest.CaptureFixture[str], root: Path, two: tuple[Path, Path]
) -> None:
    # Two more folders whose names share a start: a prefix of both names neither alone.
    for name in ("abc123", "abc456"):
        (root / name).mkdir()
    code, out, err = run(capsys, "cache", "clear", "abc")
    assert code == EXIT_USAGE and out == ""
    assert "'abc' matches 2 feature caches" in err and "freezer-app cache list" in err
    assert all(p.exists() for p in (*two, root / "abc123", root / "abc456"))
    # A folder without an index (a run that never finished one) is listed and can go.
    _, out, _ = run(capsys, "cache", "list")
    assert ["abc123", "(incomplete)", "-", "-", "0"] in [
        line.split()[:5] for line in out.splitlines()
    ]
    code, _, _ = run(capsys, "cache", "clear", "abc4")
    assert code == EXIT_OK and not (root / "abc456").exists() and (root / "abc123").exists()


def test_cache_alone_prints_its_help(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    code, out, _ = run(capsys, "cache")
    assert code == EXIT_USAGE
    assert out.startswith("usage: freezer-app cache") and "list" in out and "clear" in out
