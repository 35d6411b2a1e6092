"""No code runs unasked: a model's .py runs when the user names it, and when a file names it
only with --trust-code (or a yes in the window). Each payload writes a marker when imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_project
from safetensors.torch import save_file

from freezer_app.cli import main
from freezer_app.core import trust
from freezer_app.core.catalog import META_MODEL, META_NUM_CLASSES, load_model, preview_model
from freezer_app.core.project import Project, absolute_model
from freezer_app.core.trust import CodeTrust, UntrustedCodeError, file_digest


@pytest.fixture(autouse=True)
def fresh_approvals(monkeypatch: pytest.MonkeyPatch) -> None:
    """What this process allowed before must not leak between tests."""
    monkeypatch.setattr(trust, "_approved", set())


def forget() -> None:
    trust._approved.clear()


def payload(folder: Path, factory_file: Path, marker: Path) -> Path:
    """payload.py in `folder`: the factory file's models, plus a line that leaves `marker`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "payload.py"
    path.write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n" + factory_file.read_text())
    return path


def weights_naming(folder: Path, factory_file: Path, model: str) -> Path:
    """A .safetensors whose metadata says `model` built it (3 classes)."""
    state = load_model(f"{factory_file}:build", num_classes=3).module.state_dict()
    path = folder / "model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(path),
        metadata={META_MODEL: model, META_NUM_CLASSES: "3"},
    )
    return path


def refused(capsys: pytest.CaptureFixture[str], code: int, py: Path) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(py) in err and "--trust-code" in err and "not run" in err
    assert "Traceback" not in err
    return err


@pytest.fixture
def decoy(tmp_path: Path, factory_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory holds another payload.py: relative paths in files must never
    reach it."""
    cwd = tmp_path / "cwd"
    marker = tmp_path / "cwd-payload-ran"
    payload(cwd, factory_file, marker)
    monkeypatch.chdir(cwd)
    return marker


def test_weights_metadata_naming_a_py_needs_trust(
    tmp_path: Path,
    factory_file: Path,
    demo_data: Path,
    decoy: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "downloaded"
    py = payload(folder, factory_file, marker)
    weights = weights_naming(folder, factory_file, "payload.py:build")
    image = str(next((demo_data / "val" / "circles").iterdir()))

    refused(capsys, main(["inspect", str(weights)]), py)
    refused(capsys, main(["predict", str(weights), image]), py)
    with pytest.raises(UntrustedCodeError, match="payload.py"):
        load_model(str(weights))
    with pytest.raises(UntrustedCodeError):
        preview_model(str(weights))
    assert not marker.exists() and not decoy.exists()

    # The window's kind of trust: asked with the file, its SHA-256 and who named it.
    asked = []
    with pytest.raises(UntrustedCodeError):
        load_model(str(weights), trust=CodeTrust(confirm=lambda c: asked.append(c) or False))
    assert [(c.path, c.digest, c.named_in) for c in asked] == [
        (py.resolve(), file_digest(py), str(weights))
    ]
    assert not marker.exists()

    assert main(["inspect", str(weights), "--trust-code"]) == 0
    assert "3 classes" in capsys.readouterr().out
    assert marker.exists()  # the file beside the weights, never the current directory's
    assert not decoy.exists()
    forget()
    assert main(["predict", str(weights), image, "--trust-code"]) == 0
    assert not decoy.exists()


def test_bundle_config_naming_a_py_needs_trust(
    tmp_path: Path,
    factory_file: Path,
    demo_data: Path,
    decoy: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "ran"
    bundle = tmp_path / "bundle"
    py = payload(bundle, factory_file, marker)
    state = load_model(f"{factory_file}:build", num_classes=3).module.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(bundle / "model.safetensors"))
    (bundle / "config.json").write_text(
        json.dumps(
            {
                "architecture": "net",
                "num_classes": 3,
                "label_names": ["circles", "squares", "stripes"],
                "pretrained_cfg": {"input_size": [3, 32, 32]},
                "freezer": {"model": "payload.py:build"},
            }
        )
    )
    image = str(next((demo_data / "val" / "stripes").iterdir()))
    refused(capsys, main(["predict", str(bundle), image]), py)
    refused(capsys, main(["eval", str(bundle), "--data", str(demo_data)]), py)
    refused(capsys, main(["inspect", str(bundle)]), py)
    assert not marker.exists() and not decoy.exists()

    assert main(["predict", str(bundle), image, "--trust-code"]) == 0
    assert capsys.readouterr().out.startswith(image)
    assert marker.exists() and not decoy.exists()


def test_project_file_naming_a_py_needs_trust_to_train_resume_and_export(
    tmp_path: Path,
    factory_file: Path,
    demo_data: Path,
    decoy: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "shared-project"
    py = payload(folder, factory_file, marker)
    make_project(demo_data, model="payload.py:build", epochs=1, max_steps=2).save(
        folder / "project.json"
    )
    out = tmp_path / "run"
    fast = ["--quiet", "--workers", "0"]
    refused(capsys, main(["train", str(folder / "project.json"), "--out", str(out), *fast]), py)
    assert not marker.exists() and not out.exists() and not decoy.exists()

    code = main(["train", str(folder / "project.json"), "--out", str(out), "--trust-code", *fast])
    assert code == 0, capsys.readouterr().err
    assert marker.exists() and not decoy.exists()
    # The run records where the code is, so it never depends on the current directory.
    assert json.loads((out / "project.json").read_text())["model"] == f"{py.resolve()}:build"

    # A later command is a new process: repeating, resuming or exporting asks again.
    forget()
    marker.unlink()
    again = tmp_path / "again"
    refused(capsys, main(["train", str(out / "project.json"), "--out", str(again), *fast]), py)
    refused(capsys, main(["train", "--resume", str(out), "--quiet"]), py)
    refused(capsys, main(["export", str(out), "--out", str(tmp_path / "bundle")]), py)
    assert not marker.exists() and not again.exists() and not (tmp_path / "bundle").exists()

    code = main(["train", "--resume", str(out), "--max-steps", "3", "--quiet", "--trust-code"])
    assert code == 0, capsys.readouterr().err
    forget()
    code = main(["export", str(out), "--out", str(tmp_path / "bundle"), "--trust-code"])
    assert code == 0, capsys.readouterr().err
    assert marker.exists() and not decoy.exists()


def test_model_named_by_the_user_runs_and_file_paths_are_the_files_own(
    tmp_path: Path, factory_file: Path, decoy: Path
) -> None:
    # A .py the user names (a command's MODEL, --model, the Open model file dialog) runs.
    marker = tmp_path / "ran"
    py = payload(tmp_path / "mine", factory_file, marker)
    assert main(["inspect", f"{py}:build", "--num-classes", "3"]) == 0
    assert marker.exists()
    # Relative paths inside a file belong to that file's folder, existing or not.
    base = tmp_path / "elsewhere"
    assert absolute_model("payload.py:build", base) == f"{(base / 'payload.py').resolve()}:build"
    assert absolute_model("exports/bundle", base) == str((base / "exports/bundle").resolve())
    assert absolute_model("weights.safetensors", base) == str(base / "weights.safetensors")
    assert absolute_model("timm:test_resnet", base) == "timm:test_resnet"
    base.mkdir()
    make_project(tmp_path, model="exports/bundle").save(base / "project.json")
    assert Project.load(base / "project.json").model == str(base / "exports" / "bundle")
    assert not decoy.exists()


def test_window_asks_before_running_a_projects_code_and_remembers_per_file_and_hash(
    qtbot, tmp_path: Path, factory_file: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtCore import QSettings, QThreadPool
    from PySide6.QtWidgets import QMessageBox

    from freezer_app.gui.main_window import MainWindow
    from freezer_app.gui.trust_dialog import TITLE

    marker = tmp_path / "ran"
    folder = tmp_path / "project"
    py = payload(folder, factory_file, marker)
    make_project(demo_data, model="payload.py:build").save(folder / "project.json")
    asked: list[str] = []
    answers: list[QMessageBox.StandardButton] = []

    def question(parent, title, text, *args, **kwargs):
        if title != TITLE:
            return QMessageBox.StandardButton.Discard  # "unsaved project?"
        asked.append(text)
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "question", question)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings)
    qtbot.addWidget(w)

    def settle(win: MainWindow) -> None:
        # The data scan ends with the class count, which rebuilds the preview (running the
        # .py again): let both finish before the file changes, or the window rightly asks again.
        qtbot.waitUntil(lambda: win.scan_task is None and win.preview_task is None, timeout=30_000)

    try:
        answers.append(QMessageBox.StandardButton.No)
        assert not w.open_project(folder / "project.json")
        assert len(asked) == 1 and str(py.resolve()) in asked[0]
        assert file_digest(py) in asked[0]
        assert not marker.exists()
        title, message, hint = w.last_error
        assert str(py.resolve()) in message and "--trust-code" in hint

        answers.append(QMessageBox.StandardButton.Yes)
        assert w.open_project(folder / "project.json")
        # Asked before anything ran; the preview that runs it is built in the background.
        assert len(asked) == 2
        settle(w)
        assert marker.exists()
        assert w.controller.tree is not None and "classifier" in w.controller.tree.nodes

        # Remembered for this file and these contents, also in a later session...
        forget()
        w2 = MainWindow(settings)
        qtbot.addWidget(w2)
        assert w2.open_project(folder / "project.json")
        settle(w2)
        assert len(asked) == 2
        # ...until the file changes: then it asks again.
        py.write_text(py.read_text() + "\n# changed\n")
        forget()
        marker.unlink()
        answers.append(QMessageBox.StandardButton.No)
        assert not w2.open_project(folder / "project.json")
        assert len(asked) == 3 and not marker.exists()

        # A weights file opened on the Model tab whose metadata names a .py: asked too.
        downloaded = tmp_path / "downloaded"
        py2 = payload(downloaded, factory_file, tmp_path / "weights-ran")
        weights = weights_naming(downloaded, factory_file, "payload.py:build")
        answers.append(QMessageBox.StandardButton.No)
        w2.choose_model(str(weights), "file")
        assert len(asked) == 4 and str(py2.resolve()) in asked[-1]
        assert not (tmp_path / "weights-ran").exists()
        assert str(py2.resolve()) in w2.last_error[1]

        # A .py the user picks with "Open model file (.py)…" runs without a question.
        mine = payload(tmp_path / "mine", factory_file, tmp_path / "mine-ran")
        w2.choose_model(f"{mine}:build")
        qtbot.waitUntil(lambda: w2.preview_task is None, timeout=30_000)
        assert len(asked) == 4 and (tmp_path / "mine-ran").exists()
        assert w2.project.model == f"{mine}:build"
    finally:
        for win in (w, locals().get("w2")):
            if win is not None:
                win.project_ctl.undo_stack.setClean()
                win.close()
        QThreadPool.globalInstance().waitForDone(60_000)
