"""Model catalog: names, building, weights files, previews, offline behaviour."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from freezer_app.core.catalog import (
    FILE,
    TIMM,
    TORCHVISION,
    load_model,
    parse_model,
    preview_model,
    search_models,
)
from freezer_app.core.errors import ModelNotFoundError, OfflineError, WeightsError
from freezer_app.core.layout import TORCHVISION_HEADS, find_head_paths
from freezer_app.core.torchvision_compat import (
    AUX_HEADS,
    constructor_kwargs,
    loader_code,
    strip_aux_heads,
    transform_input_of,
)


def test_parse_prefixed_and_bare_names(factory_file: Path) -> None:
    assert parse_model("timm:test_resnet") == parse_model("test_resnet")
    assert parse_model("timm:test_resnet").kind == TIMM
    assert parse_model("torchvision:resnet18").kind == TORCHVISION
    # Bare names prefer timm, which also has a resnet18.
    assert parse_model("resnet18").kind == TIMM
    # Only torchvision has this one.
    assert parse_model("mnasnet0_5").kind == TORCHVISION
    spec = parse_model(f"{factory_file}:build")
    assert spec.kind == FILE and spec.factory == "build"
    # A pretrained tag is part of a timm name.
    assert parse_model("timm:resnet18.a1_in1k").name == "resnet18.a1_in1k"


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("timm:test_resnt", "test_resnet"),
        ("resnet5O", "resnet50"),
        ("torchvision:resnet19", "resnet18"),
    ],
)
def test_unknown_model_suggests_close_names(text: str, suggestion: str) -> None:
    with pytest.raises(ModelNotFoundError) as e:
        parse_model(text)
    assert suggestion in str(e.value)


def test_search_covers_timm_and_torchvision() -> None:
    found = search_models("resnet18")
    assert "timm:resnet18" in found and "torchvision:resnet18" in found
    assert all("resnet18" in n for n in found)
    assert "timm:test_vit" in search_models("TEST_V")
    assert search_models("torchvision:vit_*") == [
        n for n in search_models("vit_") if n.startswith("torchvision:vit_")
    ]
    assert len(search_models("")) > 1300


def test_timm_model_gets_the_class_count() -> None:
    loaded = load_model("timm:test_resnet", num_classes=4)
    assert loaded.num_classes == 4
    assert loaded.head_paths == ("fc",)
    assert loaded.module.fc.out_features == 4
    assert loaded.data_config["input_size"] == (3, 160, 160)


def test_torchvision_model_without_weights() -> None:
    loaded = load_model("torchvision:mobilenet_v3_small", num_classes=5)
    assert loaded.head_paths == ("classifier.3",)
    assert loaded.module.classifier[3].out_features == 5
    out = loaded.module(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5)
    assert loaded.data_config["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_torchvision_head_table_matches_the_library() -> None:
    """The head of every torchvision model class is exactly what changes size with num_classes."""
    seen: set[str] = set()
    for name in torchvision.models.list_models(module=torchvision.models):
        cls_name = type(preview_model(f"torchvision:{name}").module).__name__
        if cls_name in seen:
            continue
        seen.add(cls_name)
        a = preview_model(f"torchvision:{name}", num_classes=7).module
        b = preview_model(f"torchvision:{name}", num_classes=9).module
        shapes_b = dict(b.named_parameters())
        changed = {
            n.rsplit(".", 1)[0] for n, p in a.named_parameters() if p.shape != shapes_b[n].shape
        }
        heads, source = find_head_paths(a)
        assert source == "torchvision head attribute"
        assert changed == set(heads), name
    assert seen == set(TORCHVISION_HEADS)


def test_user_factory_with_and_without_num_classes(factory_file: Path) -> None:
    loaded = load_model(f"{factory_file}:build", num_classes=3)
    assert loaded.module.classifier.out_features == 3
    fixed = load_model(f"{factory_file}:build_fixed", num_classes=3)
    assert fixed.module.classifier.out_features == 3  # head replaced, last Linear
    assert fixed.head_paths == ("classifier",)
    with pytest.raises(ModelNotFoundError, match="not a torch.nn.Module"):
        load_model(f"{factory_file}:not_a_model")
    with pytest.raises(
        ModelNotFoundError, match="(?s)no callable named 'biuld'.*Did you mean: build"
    ):
        load_model(f"{factory_file}:biuld")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model("missing_file.py:build")


def test_preview_allocates_nothing_even_for_a_billion_parameters() -> None:
    loaded = preview_model("timm:vit_giant_patch14_dinov2")
    params = list(loaded.module.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) > 1_000_000_000


def test_preview_of_models_that_compute_sizes_with_tensors() -> None:
    # torchvision's RegNet calls .tolist() while building, which the meta device cannot do.
    loaded = preview_model("torchvision:regnet_x_400mf", num_classes=3)
    assert all(p.is_meta for p in loaded.module.parameters())
    assert loaded.num_classes == 3


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_and_head_is_dropped_for_other_class_count(
    tmp_path: Path, suffix: str
) -> None:
    source = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    same = load_model("timm:test_resnet", num_classes=10, weights=path)
    assert torch.equal(same.module.fc.weight, source.fc.weight)
    assert same.dropped_head_keys == []
    other = load_model("timm:test_resnet", num_classes=3, weights=path)
    assert torch.equal(other.module.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert sorted(other.dropped_head_keys) == ["fc.bias", "fc.weight"]
    assert "head re-initialised" in other.weights_note


def test_wrapped_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=2)
    path = tmp_path / "ckpt.pth"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path
    )
    loaded = load_model("timm:test_resnet", num_classes=2, weights=path)
    assert torch.equal(loaded.module.fc.bias, source.fc.bias)


def test_mismatched_weights_name_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", num_classes=2).state_dict(), str(path))
    with pytest.raises(WeightsError) as e:
        load_model("timm:test_resnet", num_classes=2, weights=path)
    text = str(e.value)
    assert "missing keys: conv1.0.weight" in text
    assert "unexpected keys: blocks.0" in text


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weights": Evil()}, path)
    with pytest.raises(WeightsError, match="could run code"):
        load_model("timm:test_resnet", weights=path)


def test_garbage_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a real file")
    with pytest.raises(WeightsError, match="Could not read"):
        load_model("timm:test_resnet", weights=path)
    with pytest.raises(WeightsError, match="not found"):
        load_model("timm:test_resnet", weights=tmp_path / "nope.pth")


def test_offline_pretrained_is_a_clear_error_not_a_hang() -> None:
    start = time.monotonic()
    with pytest.raises(OfflineError) as e:
        load_model("timm:test_resnet", pretrained=True)
    assert "cannot be downloaded" in str(e.value)
    assert "--weights" in str(e.value)
    with pytest.raises(OfflineError):
        load_model("torchvision:resnet18", pretrained=True)
    assert time.monotonic() - start < 60


def test_weights_file_names_its_architecture(tmp_path: Path) -> None:
    from freezer_app.core.catalog import META_MODEL, META_NUM_CLASSES

    source = timm.create_model("test_vit", num_classes=3)
    path = tmp_path / "model.safetensors"
    save_file(
        source.state_dict(),
        str(path),
        metadata={META_MODEL: "timm:test_vit", META_NUM_CLASSES: "3"},
    )
    loaded = load_model(str(path))
    assert loaded.spec == parse_model("timm:test_vit")
    assert loaded.num_classes == 3
    assert torch.equal(loaded.module.head.weight, source.head.weight)
    (tmp_path / "anon.pth").write_bytes(path.read_bytes())
    bare = tmp_path / "sub" / "anon.pth"
    bare.parent.mkdir()
    torch.save(source.state_dict(), bare)
    with pytest.raises(WeightsError, match="Cannot tell which architecture"):
        load_model(str(bare))


def test_meta_preview_checks_weights_without_copying_a_model(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys"):
        load_model("timm:test_resnet", weights=path, meta=True)


def test_models_with_auxiliary_heads_return_plain_logits_when_training() -> None:
    model = load_model("torchvision:googlenet", num_classes=3).module.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    with pytest.raises(Exception, match="1 or more"):
        load_model("timm:test_resnet", num_classes=0)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_torchvision_quirks_rebuild_the_trained_architecture(name: str) -> None:
    """Freezer builds GoogLeNet and Inception v3 without auxiliary classifiers; the pretrained
    layout has them (their last layers are heads too) until strip_aux_heads, and loader_code
    rebuilds what Freezer trained, transform_input included."""
    trained = load_model(f"torchvision:{name}", num_classes=3, meta=True).module
    assert transform_input_of(name, trained) is False
    assert transform_input_of("resnet18", trained) is None
    with torch.device("meta"):
        full = torchvision.models.get_model(
            name, weights=None, num_classes=3, **constructor_kwargs(name, pretrained=True)
        )
    assert full.transform_input is True  # torchvision's pretrained weights expect it
    heads, _ = find_head_paths(full)
    assert set(heads) == {"fc", *AUX_HEADS[type(full).__name__]}
    strip_aux_heads(name, full)
    assert full.state_dict().keys() == trained.state_dict().keys()
    namespace: dict = {}
    with torch.device("meta"):
        exec("import torchvision\n" + loader_code(name, 3, transform_input=True), namespace)
    rebuilt = namespace["model"]
    assert rebuilt.state_dict().keys() == trained.state_dict().keys()
    assert rebuilt.transform_input is True
    assert constructor_kwargs("resnet18", pretrained=True) == {}
