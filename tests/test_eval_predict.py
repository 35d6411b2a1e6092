"""`evaluate` and `predict` in core and as `freezer-app eval` / `predict`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_project

from freezer_app.cli import main
from freezer_app.core.errors import Cancelled, DataError
from freezer_app.core.evaluate import eval_folder, evaluate, predict
from freezer_app.core.export import export
from freezer_app.core.run_folder import read_jsonl
from freezer_app.core.train import Trainer

CLASSES = ["circles", "squares", "stripes"]


@pytest.fixture(scope="module")
def run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    assert Trainer(make_project(demo_data, epochs=1), out).run().reason == "completed"
    return out


def _flat_copy(demo_data: Path, dest: Path, classes: list[str] | None = None) -> Path:
    """The val/ images in a folder without train/ and val/."""
    for cls in classes or CLASSES:
        shutil.copytree(demo_data / "val" / cls, dest / cls)
    return dest


def test_evaluate_matches_the_runs_validation(run: Path, demo_data: Path) -> None:
    seen: list[tuple[int, int]] = []
    result = evaluate(
        run, demo_data, batch_size=8, device="cpu", progress=lambda *a: seen.append(a)
    )
    assert result.split == "val" and Path(result.data) == demo_data / "val"
    assert result.classes == CLASSES
    assert result.count == 30 and len(result.predictions) == 30
    # The same weights, images and transforms as the run's last validation.
    last = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("type") == "epoch"][-1]
    assert result.accuracy == pytest.approx(last["val_acc"])
    cm = result.confusion
    assert sum(map(sum, cm)) == 30 and [sum(row) for row in cm] == [10, 10, 10]
    assert result.correct == sum(cm[i][i] for i in range(3))
    for i, c in enumerate(result.per_class):
        assert c.name == CLASSES[i] and c.support == 10
        assert c.recall == pytest.approx(cm[i][i] / 10)
        column = sum(row[i] for row in cm)
        assert c.precision == (pytest.approx(cm[i][i] / column) if column else None)
        for j in range(3):
            cell = result.cell(i, j)
            assert len(cell) == cm[i][j]
            assert all(Path(p.path).parent.name == CLASSES[i] for p in cell)
    worst = result.worst(5)
    assert [p.true_probability for p in worst] == sorted(p.true_probability for p in worst)
    assert worst[0].true_probability == min(p.true_probability for p in result.predictions)
    assert seen[-1] == (30, 30) and len(seen) == 4
    data = result.to_dict(worst=3)
    assert len(data["worst"]) == 3 and data["worst"][0]["true"] in CLASSES
    json.dumps(data)


def test_every_model_form_gives_the_same_evaluation(
    run: Path, demo_data: Path, tmp_path: Path
) -> None:
    reference = evaluate(run, demo_data, device="cpu")
    bundle = export(run, "bundle", tmp_path / "bundle").path
    flat = _flat_copy(demo_data, tmp_path / "flat")
    assert eval_folder(flat) == (flat, "all")
    for model in (bundle, str(run / "model.safetensors")):
        other = evaluate(model, flat, device="cpu")
        assert other.split == "all"
        assert other.confusion == reference.confusion
        assert other.accuracy == reference.accuracy


def test_class_folders_must_be_the_models_classes(
    run: Path, demo_data: Path, tmp_path: Path
) -> None:
    folder = _flat_copy(demo_data, tmp_path / "d", ["circles", "squares"])
    shutil.copytree(demo_data / "val" / "stripes", folder / "triangles")
    with pytest.raises(
        DataError, match=r"(?s)not trained on: triangles.*circles, squares, stripes"
    ):
        evaluate(run, folder, device="cpu")
    # A subset of the model's classes is fine: the missing one is noted.
    shutil.rmtree(folder / "triangles")
    result = evaluate(run, folder, device="cpu")
    assert result.count == 20 and result.classes == CLASSES
    assert result.per_class[2].support == 0 and result.per_class[2].recall is None
    assert result.notes == ["no images for: stripes"]
    # A model without class names must have as many outputs as there are folders.
    with pytest.raises(DataError, match="no class names and 1000 outputs"):
        evaluate("timm:test_resnet", folder, device="cpu")


def test_unreadable_images_are_listed_not_fatal(run: Path, demo_data: Path, tmp_path: Path) -> None:
    folder = _flat_copy(demo_data, tmp_path / "d")
    (folder / "circles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = evaluate(run, folder, device="cpu")
    assert result.count == 30
    assert [Path(p).name for p, _ in result.skipped] == ["broken.png"]
    with pytest.raises(Cancelled, match="Evaluation cancelled"):
        evaluate(run, folder, device="cpu", should_cancel=lambda: True)


def test_predict_top_k_with_class_names(run: Path, demo_data: Path, tmp_path: Path) -> None:
    images = sorted((demo_data / "val" / "squares").iterdir())[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    results = predict(run, [*images, bad, tmp_path / "missing.png"], top_k=2, device="cpu")
    assert [r.path for r in results[:3]] == [str(p) for p in images]
    for r in results[:3]:
        assert r.error is None and len(r.top) == 2
        assert r.top[0].probability >= r.top[1].probability
        assert {c.label for c in r.top} <= set(CLASSES)
        assert CLASSES[r.top[0].index] == r.top[0].label
    assert "cannot read image" in results[3].error
    assert results[4].error == "file not found"
    # Evaluation and prediction agree.
    ev = {p.path: p for p in evaluate(run, demo_data, device="cpu").predictions}
    for r in results[:3]:
        assert ev[r.path].predicted == r.top[0].index
        assert ev[r.path].confidence == pytest.approx(r.top[0].probability, abs=1e-6)
    unnamed = predict("timm:test_resnet", images[:1], top_k=3, device="cpu")[0]
    assert all(c.label == f"class {c.index}" for c in unnamed.top)


# ---------------------------------------------------------------------- CLI
def test_cli_eval(run: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run), "--data", str(demo_data), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "accuracy: " in text and "(30 images, the val/ folder)" in text
    assert "validation split" not in text  # it has a val/ folder: no held-out share to name
    assert "precision  recall  support" in text
    assert "confusion matrix (rows: true class, columns: predicted)" in text
    for cls in CLASSES:
        assert cls in text
    args = ["eval", str(run), "--data", str(demo_data), "--workers", "0", "--json"]
    assert main([*args, "--worst", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["count"] == 30 and data["classes"] == CLASSES
    assert len(data["confusion"]) == 3 and len(data["worst"]) == 2
    assert {"name", "precision", "recall", "support"} <= set(data["per_class"][0])
    assert data["model"].startswith(str(run))


def test_cli_eval_errors(
    run: Path, demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _flat_copy(demo_data, tmp_path / "d", ["circles"])
    shutil.copytree(demo_data / "val" / "squares", folder / "hexagons")
    assert main(["eval", str(run), "--data", str(folder), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "hexagons" in err and "Traceback" not in err
    assert main(["eval", str(run), "--data", str(tmp_path / "nope"), "--workers", "0"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_predict(
    run: Path, demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sorted((demo_data / "val" / "circles").iterdir())[0]
    assert main(["predict", str(run), str(image), "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and all(c in line for c in CLASSES)
    assert main(["predict", str(run), str(image), "--json", "--top-k", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["path"] == str(image) and data[0]["top"][0]["label"] in CLASSES
    assert len(data[0]["top"]) == 1 and data[0]["error"] is None
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["predict", str(run), str(image), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert str(image) in out
    assert f"error: {bad}: cannot read image" in err and "Traceback" not in err
