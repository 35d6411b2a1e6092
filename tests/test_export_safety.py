"""Exports never delete what Freezer did not write, and every failed write is a clear message that
leaves nothing half-written: --force replaces only a previous export of the same kind, a full disk
or a denied write is an ExportError saying where, how much was needed and what was kept, stale
temporary files of killed exports are removed, and a bundle's config.json types are checked."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_project

from freezer_app.cli import main
from freezer_app.core.errors import ExportError, FreezerError, TargetExistsError
from freezer_app.core.export import export
from freezer_app.core.files import WriteError
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.train import Trainer

MARKER = ".freezer-export"


@pytest.fixture(scope="module")
def run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained test_resnet run (32 px, no data workers)."""
    out = tmp_path_factory.mktemp("export-safety") / "run"
    plan = FreezePlan(preset="freeze-stages:1")
    result = Trainer(make_project(demo_data, epochs=1, plan=plan), out).run()
    assert result.reason == "completed"
    return out


@pytest.fixture(scope="module")
def bundle(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-safety-bundle") / "bundle"
    export(run, "bundle", out)
    return out


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


# ---------------------------------------------------------------------- --force
def test_force_replaces_only_what_freezer_wrote(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reported case: `export RUN --out . --force` in a folder with the user's files.
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    (home / "photos" / "cat.jpg").write_bytes(b"jpeg")
    before = _tree(home)
    monkeypatch.chdir(home)
    assert main(["export", str(run), "--out", ".", "--force"]) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "notes.txt" in err and "Traceback" not in err
    assert _tree(home) == before
    # Without --force the message does not suggest it: --force would not help.
    with pytest.raises(ExportError, match="did not write") as e:
        export(run, "bundle", home)
    assert not isinstance(e.value, TargetExistsError) and "Pass --force" not in str(e.value)

    # A bundle writes its marker (format and files); --force replaces a marked bundle.
    bundle = tmp_path / "bundle"
    export(run, "bundle", bundle)
    marker = json.loads((bundle / MARKER).read_text())
    assert marker["format"] == "bundle"
    assert set(marker["files"]) == {p.name for p in bundle.iterdir()} - {MARKER}
    with pytest.raises(TargetExistsError, match="--force"):
        export(run, "bundle", bundle)
    export(run, "bundle", bundle, force=True, checkpoint="best")
    assert json.loads((bundle / "training.json").read_text())["checkpoint"] == "best"
    # ... but not once it holds something Freezer did not write, nor without its marker.
    (bundle / "my_notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="my_notes.txt"):
        export(run, "bundle", bundle, force=True)
    assert (bundle / "my_notes.txt").read_text() == "mine"
    (bundle / "my_notes.txt").unlink()
    (bundle / MARKER).unlink()
    with pytest.raises(ExportError, match="did not write"):
        export(run, "bundle", bundle, force=True)
    assert (bundle / "model.safetensors").exists()
    # A code folder is not a bundle, and a bundle is not a code folder.
    code = tmp_path / "code"
    export(run, "code", code)
    assert json.loads((code / MARKER).read_text())["format"] == "code"
    with pytest.raises(ExportError, match="code export, not a bundle"):
        export(run, "bundle", code, force=True)
    export(run, "code", code, force=True)
    # An empty folder holds nothing to lose.
    (tmp_path / "empty").mkdir()
    export(run, "bundle", tmp_path / "empty", force=True)
    assert (tmp_path / "empty" / MARKER).is_file()

    # Single-file formats replace a regular file only: never a folder or a symbolic link.
    (tmp_path / "model.onnx").mkdir()
    (tmp_path / "model.onnx" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="is a folder"):
        export(run, "onnx", tmp_path / "model.onnx", force=True)
    real = tmp_path / "elsewhere.pth"
    real.write_bytes(b"not a model")
    (tmp_path / "link.pth").symlink_to(real)
    with pytest.raises(ExportError, match="symbolic link"):
        export(run, "pth", tmp_path / "link.pth", force=True)
    assert (tmp_path / "link.pth").is_symlink() and real.read_bytes() == b"not a model"
    (tmp_path / "file_not_folder").write_text("mine")
    with pytest.raises(ExportError, match="is a file, and a bundle export is a folder"):
        export(run, "bundle", tmp_path / "file_not_folder", force=True)
    export(run, "pth", tmp_path / "m.pth")
    export(run, "pth", tmp_path / "m.pth", force=True, checkpoint="best")
    assert "fc.weight" in torch.load(tmp_path / "m.pth", weights_only=True)


def test_export_dialog_shows_the_refusal_instead_of_asking(
    run: Path, tmp_path: Path, qtbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtWidgets import QMessageBox

    from freezer_app.gui.export_dialog import ExportDialog

    asked: list[tuple] = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.Yes
    )
    dialog = ExportDialog(run)
    qtbot.addWidget(dialog)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("mine")
    dialog.format.setCurrentIndex(dialog.format.findData("bundle"))
    dialog.out.setText(str(target))
    dialog.start()
    assert asked == [] and dialog.task is None
    assert "did not write" in dialog.status.text() and "thesis.tex" in dialog.status.text()
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]
    dialog.reject()


# ---------------------------------------------------------------------- failed writes
def _safetensors_full(tensors, filename, metadata=None):
    from safetensors import SafetensorError

    Path(filename).write_bytes(b"partial")
    raise SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )


def _torch_save_full(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def _write_full(path, data):
    Path(path).write_bytes(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def _onnx_full(model, args, f, **kwargs):
    Path(f).write_bytes(b"half an onnx file")
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_save_denied(obj, f, *args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(f))


@pytest.mark.parametrize(
    ("fmt", "name", "patch", "reason"),
    [
        (
            "bundle",
            "bundle",
            ("freezer_app.core.files.save_file", _safetensors_full),
            "the disk is full",
        ),
        ("pth", "model.pth", ("torch.save", _torch_save_full), "the disk is full"),
        ("pth", "model.pth", ("torch.save", _torch_save_denied), "permission denied"),
        (
            "torchscript",
            "m.pt",
            ("freezer_app.core.files.write_raw", _write_full),
            "the disk is full",
        ),
        ("onnx", "m.onnx", ("torch.onnx.export", _onnx_full), "the disk is full"),
        ("code", "plan.py", ("freezer_app.core.files.write_raw", _write_full), "the disk is full"),
    ],
    ids=["bundle", "pth", "pth-denied", "torchscript", "onnx", "code"],
)
def test_a_failed_write_is_a_clear_export_error_that_keeps_the_previous_export(
    run: Path,
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    name: str,
    patch: tuple,
    reason: str,
) -> None:
    out = tmp_path / "out" / name
    # The previous export, replaced only once the new one is complete: any regular file for the
    # single-file formats, a bundle Freezer wrote, the .py and .json of the code format.
    if fmt == "bundle":
        shutil.copytree(bundle, out)
    else:
        out.parent.mkdir()
        out.write_bytes(b"previous export")
        if fmt == "code":
            out.with_suffix(".json").write_text("{}")
    before = _tree(tmp_path / "out")
    monkeypatch.setattr(*patch, raising=False)
    with pytest.raises(ExportError) as e:
        export(run, fmt, out, force=True)
    assert isinstance(e.value, WriteError)  # also what callers of the writers catch
    text = str(e.value)
    assert f"Could not write the {fmt} export {out}: {reason}" in text
    assert "onnxscript" not in text and "Traceback" not in text
    if reason == "the disk is full" and fmt != "code":
        assert re.search(r"it needs about [\d.]+ MB; [\d.,]+ [KM]B is free on the disk", text)
    assert "Nothing half-written was kept" in text and f"previous export at {out}" in text
    assert _tree(tmp_path / "out") == before  # no temporary file; the old export intact


_TORCHSCRIPT_CHILD = """
import sys
from freezer_app.core.export import export
from freezer_app.core.errors import ExportError
try:
    export(sys.argv[1], "torchscript", sys.argv[2])
    print("written")
except ExportError as e:
    print(str(e).replace("\\n", " "))
"""


def test_a_real_full_disk_fails_every_format_cleanly(run: Path, tmp_path: Path) -> None:
    """A 1 MB tmpfs (the model takes 1.5 MB). TorchScript runs in a child process: torch's own
    TorchScript writer aborted the whole process when the disk filled up."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    tried = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {tried.stderr.decode().strip()}")
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(_TORCHSCRIPT_CHILD),
                str(run),
                str(mount / "m.pt"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        messages = {}
        for fmt, name in [("bundle", "b"), ("pth", "m.pth"), ("onnx", "m.onnx")]:
            with pytest.raises(ExportError) as e:
                export(run, fmt, mount / name)
            messages[fmt] = str(e.value)
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        messages["torchscript"] = out.strip().splitlines()[-1]
        for fmt, message in messages.items():
            assert message.startswith(f"Could not write the {fmt} export"), message
            assert "the disk is full (it needs about" in message, message
        assert sorted(p.name for p in mount.iterdir()) == []  # not one temporary file
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ---------------------------------------------------------------------- temporary files
_KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
from freezer_app.core import files
folder = Path(sys.argv[1])
with files.atomic_dir(folder / "bundle") as tmp:
    (tmp / "model.safetensors").write_bytes(b"x" * 1000)
    with files.atomic_path(folder / "model.pth") as tmp_file:
        tmp_file.write_bytes(b"x" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporary_files_of_killed_exports_are_removed_at_the_next_export(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freezer_app.core import files
    from freezer_app.core.export import bundle as bundle_mod

    folder = tmp_path / "exports"
    folder.mkdir()
    # Writes killed half-way (SIGKILL: no cleanup ran) leave their temporary names behind.
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_CHILD), str(folder)], timeout=120
    )
    assert child.returncode == -signal.SIGKILL
    killed = sorted(p.name for p in folder.iterdir())
    assert len(killed) == 2
    assert all(
        re.fullmatch(r"\.(bundle|model\.pth)\.freezer-tmp-[0-9a-f]{8}-\d+-\w+", n) for n in killed
    )
    # One of a live process (the test's parent), fresh: still being written, kept.
    live = files.temp_name(folder / "other.pth")
    live = live.with_name(re.sub(r"-\d+-(\w+)$", rf"-{os.getppid()}-\1", live.name))
    live.write_bytes(b"busy")
    # One of a live PID but two hours old: the PID was reused, or the writer hangs; removed.
    old = files.temp_name(folder / "old.pth")
    old = old.with_name(re.sub(r"-\d+-(\w+)$", rf"-{os.getppid()}-\1", old.name))
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    # Files that merely look alike are the user's: kept.
    mine = [folder / ".model.pth.tmp", folder / "notes.freezer-tmp.txt"]
    for p in mine:
        p.write_text("mine")

    seen: list[str] = []
    real_check = bundle_mod._bundle_check

    def spy(src, tmp):
        seen.append(tmp.name)
        return real_check(src, tmp)

    monkeypatch.setattr(bundle_mod, "_bundle_check", spy)
    export(run, "bundle", folder / "bundle")
    assert re.fullmatch(rf"\.bundle\.freezer-tmp-[0-9a-f]{{8}}-{os.getpid()}-\w+", seen[0])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["bundle", live.name, *(p.name for p in mine)]
    )


# ---------------------------------------------------------------------- bundle config types
@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("num_classes", "three", '"num_classes" must be a whole number of 1 or more, not "three"'),
        ("num_classes", 0, '"num_classes" must be a whole number of 1 or more, not 0'),
        ("label_names", "abc", '"label_names" must be a list of class names'),
        ("pretrained_cfg.input_size", [3, "32", 32], '"pretrained_cfg.input_size" must be'),
        ("pretrained_cfg.mean", "grey", '"pretrained_cfg.mean" must be a list of numbers'),
        ("architecture", 7, '"architecture" must be a model name'),
    ],
)
def test_bundle_config_types_are_checked(
    bundle: Path, tmp_path: Path, key: str, value: object, named: str
) -> None:
    # A new path each time: model strings are resolved once per path.
    copy = tmp_path / f"bundle-{key}-{value}".replace(" ", "")
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
    if key == "architecture":
        del config["freezer"]["model"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(FreezerError) as e:
        export(copy, "pth", tmp_path / "m.pth")
    assert named in str(e.value) and str(copy / "config.json") in str(e.value)
    assert "not supported" not in str(e.value)
    assert not (tmp_path / "m.pth").exists()


def test_force_never_writes_into_a_run_folder_outside_its_export_folder(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (run / "project.json").read_bytes(), (run / "model.safetensors").read_bytes()
    for fmt, target in (("code", "project.py"), ("pth", "model.safetensors")):
        assert (
            main(["export", str(run), "--format", fmt, "--out", str(run / target), "--force"]) == 2
        )
        assert "inside the run folder" in capsys.readouterr().err
    assert ((run / "project.json").read_bytes(), (run / "model.safetensors").read_bytes()) == before
    # Its export/ folder is where exports of it go.
    assert (
        main(["export", str(run), "--format", "pth", "--out", str(run / "export" / "m.pth")]) == 0
    )
