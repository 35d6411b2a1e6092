"""`freezer-app inspect` and `freezer-app models` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from freezer_app.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_tree_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "inspect", "timm:test_resnet", "--num-classes", "3", "--preset", "head-only"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("timm:test_resnet  (ResNet, 3 classes")
    fc = next(line for line in lines if line.strip().startswith("fc "))
    assert fc.split()[1:] == ["Linear", "291", "291", "trainable"]
    conv = next(line for line in lines if line.strip().startswith("layer1.0.conv1 "))
    assert conv.split()[-1] == "frozen"
    assert "trainable 291 / 372,979 parameters (0.08%)" in out
    # Modules without parameters are left out by default, shown with --all.
    assert "act1" not in out
    _, out_all, _ = run(capsys, "inspect", "timm:test_resnet", "--all", "--depth", "1")
    assert "act1" in out_all and "layer1.0" not in out_all


def test_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "inspect",
        "timm:test_vit",
        "--preset",
        "train-last:1",
        "--freeze",
        "head.bias",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    model = timm.create_model("test_vit")
    assert data["model"] == "timm:test_vit"
    assert data["total_params"] == sum(p.numel() for p in model.parameters())
    assert set(data["requires_grad"]) == {n for n, _ in model.named_parameters()}
    assert data["requires_grad"]["head.weight"] is True
    assert data["requires_grad"]["head.bias"] is False
    assert data["requires_grad"]["blocks.0.attn.qkv.weight"] is False
    assert data["trainable_params"] == sum(
        p.numel() for n, p in model.named_parameters() if data["requires_grad"][n]
    )


def test_code_output_is_runnable(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "inspect", "timm:test_resnet", "--preset", "freeze-stages:2", "--code"
    )
    assert code == 0
    model = timm.create_model("test_resnet")
    exec(out, {"model": model, "torch": torch})
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}


def test_list_presets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "torchvision:resnet18", "--list-presets")
    assert code == 0
    assert "head: fc (from torchvision head attribute)" in out
    assert "freeze-stages:4" in out and "train-last:1" in out


def test_user_mistakes_are_messages_not_tracebacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "inspect", "timm:test_resnt")
    assert code == 2 and out == ""
    assert "Unknown timm model 'test_resnt'" in err and "test_resnet" in err
    code, _, err = run(capsys, "inspect", "timm:test_resnet", "--freeze", "layer5")
    assert code == 2 and "layer4" in err and "Traceback" not in err
    code, _, err = run(capsys, "inspect", "timm:test_resnet", "--weights", str(tmp_path / "no.pth"))
    assert code == 2 and "not found" in err


def test_models_search(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "test_vit")
    assert code == 0
    assert "timm:test_vit" in out.splitlines()
    code, out, _ = run(capsys, "models", "resnet18", "--source", "torchvision")
    assert out.split() == ["torchvision:resnet18"]


def test_installed_entry_point() -> None:
    exe = Path(sys.executable).with_name("freezer-app")
    result = subprocess.run(
        [str(exe), "inspect", "timm:test_resnet", "--preset", "head-only", "--depth", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "trainable 97,000 / 469,688 parameters" in result.stdout
    bad = subprocess.run(
        [str(exe), "inspect", "nosuchmodel"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
