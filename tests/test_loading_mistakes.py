"""Mistakes a new user makes when naming a model or its weights: each is a clear message (or
does what they meant), never a prediction from a random head, a misleading name or torch's
advice to unpickle with code execution."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_project

from freezer_app.cli import main
from freezer_app.core.catalog import load_model, resolve_source
from freezer_app.core.errors import FreezerError, ModelNotFoundError, WeightsError
from freezer_app.core.export import export
from freezer_app.core.train import Trainer
from freezer_app.core.weights import read_shapes, read_state_dict

CLASSES = ["circles", "squares", "stripes"]


@pytest.fixture(scope="module")
def run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mistakes") / "run"
    assert Trainer(make_project(demo_data, epochs=1), out).run().reason == "completed"
    return out


@pytest.fixture(scope="module")
def pth(run: Path) -> Path:
    """`freezer-app export RUN --format pth`: model.pth and model.config.json."""
    out = run.parent / "exports" / "model.pth"
    export(run, "pth", out)
    assert out.with_name("model.config.json").is_file()
    return out


@pytest.fixture(scope="module")
def image(demo_data: Path) -> Path:
    return sorted((demo_data / "val" / "circles").iterdir())[0]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# ------------------------------------------------- 1: a head for another number of classes
def test_predict_refuses_a_num_classes_the_run_was_not_trained_for(
    run: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "predict", str(run), "--num-classes", "5", str(image))
    assert code == 2 and out == ""
    assert "hold a classifier for 3 classes, not 5" in err
    assert "Leave out --num-classes" in err and "--num-classes 3" in err
    # The count it was trained for is fine.
    code, out, _ = _cli(capsys, "predict", str(run), "--num-classes", "3", str(image))
    assert code == 0 and any(c in out for c in CLASSES)


def test_eval_names_the_conflicting_num_classes_not_missing_class_names(
    run: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(run), "--data", str(demo_data), "--workers", "0"]
    code, out, err = _cli(capsys, *args, "--num-classes", "5")
    assert code == 2 and out == ""
    assert "hold a classifier for 3 classes, not 5 (--num-classes 5)" in err
    assert "no class names" not in err


def test_weights_without_num_classes_keep_their_own_classifier(
    pth: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """timm:test_resnet --weights model.pth: the weights' 3 classes, not 1000 random ones."""
    loaded = load_model("timm:test_resnet", weights=pth)
    assert loaded.num_classes == 3 and loaded.dropped_head_keys == []
    assert loaded.weights_note == "weights from model.pth"
    assert torch.equal(loaded.module.fc.weight, torch.load(pth, weights_only=True)["fc.weight"])
    preview = load_model("timm:test_resnet", weights=pth, meta=True)
    assert preview.num_classes == 3 and preview.dropped_head_keys == []

    code, out, err = _cli(capsys, "predict", "timm:test_resnet", "--weights", str(pth), str(image))
    assert code == 0, err
    # Three classes, named from the model.config.json beside the weights.
    assert "class 4" not in out and all(c in out for c in CLASSES)

    args = ["predict", "timm:test_resnet", "--weights", str(pth), "--num-classes", "4"]
    code, out, err = _cli(capsys, *args, str(image))
    assert code == 2 and out == ""
    assert f"The weights in {pth} hold a classifier for 3 classes, not 4" in err


def test_pretrained_with_another_num_classes_is_refused_before_any_download(
    image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "timm:test_resnet", "--pretrained", "--num-classes", "5", str(image)]
    code, out, err = _cli(capsys, *args)
    assert code == 2 and out == ""
    assert "pretrained weights of timm:test_resnet hold a classifier for 1000 classes" in err


def test_a_new_head_on_purpose_still_works(
    pth: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training (and inspecting) from weights with a new number of classes re-initialises the
    head, as before."""
    loaded = load_model("timm:test_resnet", num_classes=5, weights=pth)
    assert loaded.num_classes == 5
    assert set(loaded.dropped_head_keys) == {"fc.weight", "fc.bias"}
    assert "head re-initialised for 5 classes" in loaded.weights_note
    code, out, _ = _cli(capsys, "inspect", str(run), "--num-classes", "5")
    assert code == 0 and "head re-initialised for 5 classes" in out


# ------------------------------------------------- 2: Freezer's own pth export as MODEL
def test_a_pth_export_opens_like_a_bundle(
    pth: Path, demo_data: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = resolve_source(str(pth))
    assert str(source.spec) == "timm:test_resnet" and source.weights == pth
    assert source.num_classes == 3 and source.label_names == CLASSES
    assert source.data_config and source.data_config["input_size"] == [3, 32, 32]

    code, out, err = _cli(capsys, "predict", str(pth), str(image), "--top-k", "1")
    assert code == 0, err
    assert out.split(": ")[1].split()[0] in CLASSES
    code, out, err = _cli(capsys, "eval", str(pth), "--data", str(demo_data), "--workers", "0")
    assert code == 0, err
    assert "accuracy" in out


def test_a_pth_export_of_a_model_file_needs_trust(
    factory_file: Path, tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exported" / "net.pth"
    export(f"{factory_file}:build", "pth", out)
    # Without the model file beside it: what to copy where, or how to name it.
    code, _, err = _cli(capsys, "predict", str(out), str(image))
    assert code == 2 and f"Copy {factory_file.name} beside net.pth" in err
    shutil.copy(factory_file, out.parent / factory_file.name)
    code, _, err = _cli(capsys, "predict", str(out), str(image))
    assert code == 2 and "--trust-code" in err
    code, printed, err = _cli(capsys, "predict", str(out), str(image), "--trust-code")
    assert code == 0, err
    assert "class" in printed


def test_a_weights_file_nothing_describes_names_the_real_syntax(
    pth: Path, tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare.pth"
    shutil.copy(pth, bare)
    code, out, err = _cli(capsys, "predict", str(bare), str(image))
    assert code == 2 and out == ""
    assert "Cannot tell which architecture bare.pth belongs to" in err
    assert "--model" not in err
    assert f"freezer-app predict timm:resnet18 --weights {bare} IMAGE" in err
    # What the hint says works.
    code, _, err = _cli(capsys, "predict", "timm:test_resnet", "--weights", str(bare), str(image))
    assert code == 0, err


# ------------------------------------------------- 3: a path that is not there
@pytest.mark.parametrize(
    "text", ["runs/nonexist", "./runs/nonexist", "nothere.pth", "~/no-such-freezer-run", "m.py"]
)
def test_a_missing_path_is_reported_as_missing(
    text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="No such file or folder"):
        resolve_source(text)
    code, out, err = _cli(capsys, "inspect", text)
    assert code == 2 and out == ""
    assert "No such file or folder" in err and "Unknown" not in err


def test_export_of_a_missing_run_is_not_an_unknown_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "export", "runs/nonexist")
    assert code == 2 and "runs/nonexist" in err and "Unknown" not in err


def test_library_names_are_still_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert str(resolve_source("timm:test_resnet").spec) == "timm:test_resnet"
    assert str(resolve_source("test_resnet").spec) == "timm:test_resnet"
    assert str(resolve_source("torchvision:resnet18").spec) == "torchvision:resnet18"
    # Prefixed forms with a slash are names, not paths.
    for text in ("hf-hub:org/name", "timm:hf-hub:org/name", "local-dir:some/folder"):
        with pytest.raises(ModelNotFoundError, match="Unknown"):
            resolve_source(text)
    with pytest.raises(ModelNotFoundError, match="Unknown timm model 'test_resnt'"):
        resolve_source("timm:test_resnt")
    # An existing .py without its function: say how to name it.
    (tmp_path / "net.py").write_text("def build():\n    pass\n")
    with pytest.raises(ModelNotFoundError, match="names no function") as e:
        resolve_source("net.py")
    assert "net.py:build" in (e.value.hint or "")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ModelNotFoundError, match="not a model Freezer can open"):
        resolve_source("./notes.txt")


# ------------------------------------------------- 4: a file that is not weights
@pytest.mark.parametrize(
    "content",
    [b"hello\n", b"a\nb\n", b'{"lr": 0.1}\n', b"# notes\n- thing\n", b""],
    ids=["word", "lines", "json", "markdown", "empty"],
)
def test_a_text_file_as_weights_is_not_a_weights_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    for read in (read_state_dict, read_shapes):
        with pytest.raises(WeightsError) as e:
            read(path)
        text = f"{e.value.message} {e.value.hint}"
        assert "notes.txt is not a weights file Freezer can read" in text
        assert "safetensors" in text and "weights_only" not in text
        assert "could run code" not in text


def test_inspect_with_a_text_file_as_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("trained for 10 epochs, lr 0.1\n")
    code, out, err = _cli(capsys, "inspect", "timm:test_resnet", "--weights", str(notes))
    assert code == 2 and out == ""
    assert "not a weights file Freezer can read" in err
    assert "weights_only" not in err and "Python objects" not in err


def test_safetensors_under_another_suffix_is_named(pth: Path, run: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "model.pth"
    shutil.copy(run / "model.safetensors", renamed)
    with pytest.raises(WeightsError, match="is a safetensors file") as e:
        read_state_dict(renamed)
    assert "model.safetensors" in (e.value.hint or "")


class _Code:
    def __reduce__(self):
        return (print, ("ran",))


def test_a_refused_pickle_never_passes_on_torchs_advice(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Code()}, path)
    with pytest.raises(FreezerError) as e:
        load_model("timm:test_resnet", weights=path)
    text = f"{e.value.message} {e.value.hint}"
    assert "could run code" in text and "(print)" in text
    assert "weights_only" not in text and "trusted source" not in text


def test_predicting_with_random_weights_is_said(
    run: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "predict", "timm:test_resnet", str(image))
    assert code == 0 and "random weights" in err and "--pretrained" in err
    code, _, err = _cli(capsys, "predict", str(run), str(image))
    assert code == 0 and "random weights" not in err


def test_an_existing_folder_with_a_colon_in_its_name_is_a_path(
    run: Path,
    tmp_path: Path,
    image: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shutil.copytree(run, tmp_path / "exp:1")
    monkeypatch.chdir(tmp_path)
    code, printed, err = _cli(capsys, "predict", "exp:1", str(image))
    assert code == 0, err
    assert any(c in printed for c in CLASSES)
