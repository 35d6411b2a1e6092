"""Other tools' training checkpoints (timm's CheckpointSaver, PyTorch Lightning) as --weights,
read with weights_only=True and nothing else allowed."""

from __future__ import annotations

import argparse
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from conftest import FAST
from safetensors.torch import load_file

from freezer_app.cli import main
from freezer_app.core import weights
from freezer_app.core.catalog import load_model
from freezer_app.core.errors import WeightsError
from freezer_app.core.weights import read_shapes, read_state_dict


def _source() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=3)


def _timm_checkpoint(path: Path, model: torch.nn.Module) -> Path:
    """What timm's CheckpointSaver writes (timm/utils/checkpoint_saver.py `_save`)."""
    args = argparse.Namespace(model="test_resnet", lr=0.05, epochs=3, mixup=0.0, aa=None)
    ema = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    torch.save(
        {
            "epoch": 2,
            "arch": "test_resnet",
            "state_dict": model.state_dict(),
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
            "version": 2,
            "args": args,
            "state_dict_ema": ema,
            "metric": 71.5,
        },
        path,
    )
    return path


def _attribute_dict_class() -> type:
    """A stand-in for Lightning's AttributeDict, named as Lightning names it."""

    class AttributeDict(dict):
        def __getattr__(self, key: str) -> object:
            try:
                return self[key]
            except KeyError as e:
                raise AttributeError(key) from e

        def __setattr__(self, key: str, value: object) -> None:
            self[key] = value

    AttributeDict.__module__ = "lightning.fabric.utilities.data"
    AttributeDict.__qualname__ = "AttributeDict"
    return AttributeDict


def _lightning_checkpoint(path: Path, model: torch.nn.Module, prefix: str = "model.") -> Path:
    """What a LightningModule holding the network as `self.model` saves to a .ckpt, written
    where `lightning` is importable, then read on a machine without it."""
    attribute_dict = _attribute_dict_class()
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities"]
    module = types.ModuleType("lightning.fabric.utilities.data")
    module.AttributeDict = attribute_dict  # type: ignore[attr-defined]
    added = {name: types.ModuleType(name) for name in names if name not in sys.modules}
    added["lightning.fabric.utilities.data"] = module
    sys.modules.update(added)
    try:
        hparams = attribute_dict(lr=1e-3, num_classes=3, backbone="test_resnet")
        state = OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
        torch.save(
            {
                "epoch": 4,
                "global_step": 50,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": state,
                "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": 4}}},
                "callbacks": {
                    "ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {
                        "best_model_score": torch.tensor(0.9),
                        "dirpath": "/somewhere/checkpoints",
                    }
                },
                "optimizer_states": [torch.optim.Adam(model.parameters()).state_dict()],
                "lr_schedulers": [{"last_epoch": 4, "base_lrs": [1e-3]}],
                "hparams_name": "kwargs",
                "hyper_parameters": hparams,
            },
            path,
        )
    finally:
        for name in added:
            del sys.modules[name]
    return path


def _equal(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    theirs = source.state_dict()
    ours = loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_timm_checkpoint_loads_its_state_dict(tmp_path: Path) -> None:
    source = _source()
    path = _timm_checkpoint(tmp_path / "model_best.pth.tar.pth", source)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses the Namespace
        torch.load(path, weights_only=True)
    state = read_state_dict(path)
    assert state.keys() == source.state_dict().keys()
    assert read_shapes(path) == {k: tuple(v.shape) for k, v in source.state_dict().items()}
    loaded = load_model("timm:test_resnet", num_classes=3, weights=path)
    _equal(loaded.module, source)  # the training weights, not the EMA copy
    # A new number of classes keeps the body and re-initialises the head.
    other = load_model("timm:test_resnet", num_classes=5, weights=path)
    assert torch.equal(other.module.conv1[0].weight, source.conv1[0].weight)
    assert set(other.dropped_head_keys) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("prefix", ["model.", "net.", "model.module."])
def test_lightning_checkpoint_loads_without_lightning(tmp_path: Path, prefix: str) -> None:
    assert "lightning" not in sys.modules
    source = _source()
    path = _lightning_checkpoint(tmp_path / "epoch=4-step=50.ckpt", source, prefix)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = load_model("timm:test_resnet", num_classes=3, weights=path)
    _equal(loaded.module, source)
    # The preview (names and shapes only) agrees.
    preview = load_model("timm:test_resnet", num_classes=3, weights=path, meta=True)
    assert preview.dropped_head_keys == []
    assert "lightning" not in sys.modules
    # The allow-list was only in force while reading.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_lightning_keys_beside_the_model_are_left_out(tmp_path: Path) -> None:
    """A LightningModule's own tensors (a weighted loss) beside `model.`: the model is whole
    under the prefix, so the others are not its weights."""
    source = _source()
    state = {"model." + k: v for k, v in source.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 1}, path)
    _equal(load_model("timm:test_resnet", num_classes=3, weights=path).module, source)


def test_a_prefix_that_does_not_fit_still_names_the_keys(tmp_path: Path) -> None:
    state = {"model." + k: v for k, v in timm.create_model("test_vit").state_dict().items()}
    path = tmp_path / "vit.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(WeightsError, match="missing keys: conv1.0.weight"):
        load_model("timm:test_resnet", weights=path)


def test_train_from_foreign_checkpoints(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _source()
    for path in (
        _timm_checkpoint(tmp_path / "timm.pth", source),
        _lightning_checkpoint(tmp_path / "lightning.ckpt", source),
    ):
        out = tmp_path / f"run-{path.stem}"
        code = main(
            [
                "train",
                "--model",
                "timm:test_resnet",
                "--weights",
                str(path),
                "--data",
                str(demo_data),
                "--epochs",
                "1",
                "--max-steps",
                "2",
                "--preset",
                "head-only",
                "--out",
                str(out),
                *FAST,
            ]
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "frozen check: PASSED" in captured.out
        # The frozen body is the checkpoint's, bit for bit.
        trained = load_file(str(out / "model.safetensors"))
        for key, value in source.state_dict().items():
            if not key.startswith("fc."):
                assert torch.equal(trained[key], value), key


class Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran() -> None:
    Payload.ran = True


class Harmless:
    """A plain class (no __reduce__): rebuilding it would still name a global not allowed."""

    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize("kind", ["reduce", "class"])
def test_other_globals_are_refused_and_never_run(tmp_path: Path, kind: str) -> None:
    source = _source()
    extra = Payload() if kind == "reduce" else Harmless()
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": source.state_dict(), "args": argparse.Namespace(lr=1.0), "x": extra}, path
    )
    Payload.ran = False
    for read in (read_state_dict, read_shapes):
        with pytest.raises(WeightsError, match="could run code") as e:
            read(path)
        name = "_mark_ran" if kind == "reduce" else "Harmless"
        assert f"test_foreign_checkpoints.{name}" in e.value.message
        assert "Save only the weights" in (e.value.hint or "")
    with pytest.raises(WeightsError, match="could run code"):
        load_model("timm:test_resnet", num_classes=3, weights=path)
    assert not Payload.ran


def test_lightning_stand_in_is_a_plain_dict_and_allows_nothing_else(tmp_path: Path) -> None:
    """The AttributeDict is read back as a plain dict; another global of the same module is
    still refused by name."""
    path = _lightning_checkpoint(tmp_path / "a.ckpt", _source())
    with weights._safe_globals_allowed():
        ckpt = torch.load(path, weights_only=True)
    assert type(ckpt["hyper_parameters"]) is dict
    assert ckpt["hyper_parameters"] == {"lr": 1e-3, "num_classes": 3, "backbone": "test_resnet"}

    # {"state_dict": lightning.fabric.utilities.data.suspicious()}
    data_pkl = (
        b"\x80\x02}q\x00X\n\x00\x00\x00state_dictq\x01"
        b"clightning.fabric.utilities.data\nsuspicious\nq\x02)Rq\x03s."
    )
    crafted = _with_data_pkl(tmp_path, data_pkl)
    with pytest.raises(WeightsError, match=r"lightning\.fabric\.utilities\.data\.suspicious"):
        read_state_dict(crafted)


def _with_data_pkl(tmp_path: Path, data_pkl: bytes) -> Path:
    """A torch.save zip file whose pickle is `data_pkl`."""
    template = tmp_path / "template.pt"
    torch.save({}, template)
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(crafted, "w") as dst:
        for info in src.infolist():
            data = data_pkl if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)
    return crafted


def test_numpy_numbers_in_hyper_parameters_are_read_as_numbers(tmp_path: Path) -> None:
    """Lightning's hyper_parameters often hold NumPy numbers (a learning rate from np.logspace):
    read as Python numbers; a NumPy array or an object dtype is still refused."""
    import numpy as np

    source = _source()
    path = tmp_path / "np.ckpt"
    hparams = {"lr": np.float64(3e-4), "layers": np.int64(4), "half": np.float32(0.5)}
    hparams["flag"] = np.bool_(True)
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": hparams}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    _equal(load_model("timm:test_resnet", num_classes=3, weights=path).module, source)
    with weights._safe_globals_allowed():
        ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"] == {"lr": 3e-4, "layers": 4, "half": 0.5, "flag": True}
    assert type(ckpt["hyper_parameters"]["lr"]) is float

    array = tmp_path / "array.ckpt"
    torch.save({"state_dict": source.state_dict(), "mean": np.zeros(3)}, array)
    with pytest.raises(WeightsError, match="could run code"):
        read_state_dict(array)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        weights._numpy_number(np.dtype("O"), b"")
