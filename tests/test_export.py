"""Exports: every format reloads in a fresh process with the outside tool only, and matches the
trained model's logits; no export is ever left half-written or overwrites without --force."""

from __future__ import annotations

import errno
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_project

from freezer_app.cli import main
from freezer_app.cli.export import EXPORT_CHECKPOINTS, EXPORT_FORMATS
from freezer_app.core.catalog import META_MODEL, load_model
from freezer_app.core.errors import (
    Cancelled,
    ExportError,
    TargetExistsError,
    WeightsError,
)
from freezer_app.core.export import (
    CHECKPOINTS,
    FORMATS,
    ExportSource,
    default_export_path,
    existing_targets,
    export,
)
from freezer_app.core.export import bundle as bundle_mod
from freezer_app.core.export.api import open_source
from freezer_app.core.files import WriteError
from freezer_app.core.freeze import FreezePlan, apply_plan
from freezer_app.core.train import Trainer
from freezer_app.core.trust import CodeTrust, UntrustedCodeError
from freezer_app.core.weights import read_metadata

TOL = 1e-4


@pytest.fixture(scope="module")
def run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained test_resnet run with part of the model frozen."""
    out = tmp_path_factory.mktemp("export") / "run"
    plan = FreezePlan(preset="freeze-stages:1")
    result = Trainer(make_project(demo_data, epochs=1, plan=plan), out).run()
    assert result.reason == "completed"
    return out


@pytest.fixture(scope="module")
def tv_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-tv") / "run"
    project = make_project(demo_data, epochs=1, max_steps=2, model="torchvision:mobilenet_v3_small")
    Trainer(project, out).run()
    return out


@pytest.fixture(scope="module")
def googlenet_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GoogLeNet: trained without its auxiliary classifiers, at 64 px."""
    out = tmp_path_factory.mktemp("export-googlenet") / "run"
    project = make_project(
        demo_data, epochs=1, max_steps=2, batch_size=8, model="torchvision:googlenet"
    )
    project.data.image_size = 64
    Trainer(project, out).run()
    return out


def _reference(model_text: str, folder: Path, batch: int = 4, size: int = 32) -> tuple[Path, Path]:
    """A fixed input and the original model's logits on it, saved for the fresh process."""
    loaded = load_model(model_text)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = loaded.module.eval()(x)
    torch.save(x, folder / "input.pt")
    torch.save(ref, folder / "ref.pt")
    return folder / "input.pt", folder / "ref.pt"


def _fresh(code: str) -> dict:
    """Run `code` in a new interpreter that cannot import Freezer; it prints one JSON object."""
    prelude = "import sys\nsys.modules['freezer_app'] = None  # outside tools only\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _readme_code(bundle: Path, image: Path) -> str:
    readme = (bundle / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code, readme
    # The README's paths are relative to the bundle: as run from its folder.
    return (
        code.group(1)
        .replace('"image.jpg"', repr(str(image)))
        .replace('"local-dir:."', repr(f"local-dir:{bundle}"))
        .replace('folder = "."', f"folder = {str(bundle)!r}")
        .replace('"./model.safetensors"', repr(f"{bundle}/model.safetensors"))
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------- every format
def test_every_format_reloads_in_a_fresh_process(run: Path, demo_data: Path) -> None:
    results = {fmt: export(run, fmt) for fmt in FORMATS}
    assert {fmt: Path(r.path) for fmt, r in results.items()} == {
        "bundle": run / "export" / "bundle",
        "pth": run / "export" / "model.pth",
        "torchscript": run / "export" / "model.torchscript.pt",
        "pt2": run / "export" / "model.pt2",
        "onnx": run / "export" / "model.onnx",
        "triton": run / "export" / "triton",
        "code": run / "export" / "code",
    }
    bundle = run / "export" / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == [
        ".freezer-export",  # the marker: --force replaces only a folder Freezer wrote
        "README.md",
        "config.json",
        "freeze_plan.json",
        "freeze_plan.py",
        "model.safetensors",
        "training.json",
    ]
    config = json.loads((bundle / "config.json").read_text())
    assert config["architecture"] == "test_resnet"
    assert config["num_classes"] == 3
    assert config["label_names"] == ["circles", "squares", "stripes"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert config["freezer"]["model"] == "timm:test_resnet"
    training = json.loads((bundle / "training.json").read_text())
    assert training["frozen_check"]["passed"] is True
    assert training["final_metrics"]["epoch"] == 1
    assert training["train"]["lr"] == 3e-3
    assert json.loads((bundle / "freeze_plan.json").read_text())["preset"] == "freeze-stages:1"
    assert "PASSED" in (bundle / "README.md").read_text()
    assert results["torchscript"].validated and results["torchscript"].max_abs_diff < TOL
    assert results["onnx"].validated and results["onnx"].max_abs_diff < TOL
    assert any("ONNX validated with onnxruntime" in n for n in results["onnx"].notes)

    x_path, ref_path = _reference(str(run), run)
    model = load_model(str(run)).module
    apply_plan(model, FreezePlan(preset="freeze-stages:1"))
    expected_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    image = next((demo_data / "val" / "circles").iterdir())
    e = run / "export"
    out = _fresh(
        f"""
        import contextlib, io, json, runpy
        import torch, timm
        x = torch.load({str(x_path)!r})
        out = {{}}
        def diff(m):
            with torch.no_grad():
                return (m(x) - torch.load({str(ref_path)!r})).abs().max().item()

        m = timm.create_model("local-dir:{e / "bundle"}", pretrained=True).eval()
        out["bundle"] = diff(m)
        out["labels"] = m.pretrained_cfg["label_names"]
        out["input_size"] = list(timm.data.resolve_data_config({{}}, model=m)["input_size"])

        state = torch.load({str(e / "model.pth")!r}, weights_only=True)
        m = timm.create_model("test_resnet", num_classes=3)
        m.load_state_dict(state)
        out["pth"] = diff(m.eval())
        with open({str(e / "model.config.json")!r}) as f:
            out["pth_config"] = json.load(f)

        extra = {{"config.json": ""}}
        ts = torch.jit.load({str(e / "model.torchscript.pt")!r}, _extra_files=extra)
        out["torchscript"] = diff(ts)
        out["torchscript_config"] = json.loads(extra["config.json"])

        extra = {{"config.json": ""}}
        program = torch.export.load({str(e / "model.pt2")!r}, extra_files=extra)
        out["pt2"] = diff(program.module())
        out["pt2_config"] = json.loads(extra["config.json"])

        try:
            import onnxruntime
        except ImportError:
            out["onnx"] = None
        else:
            s = onnxruntime.InferenceSession({str(e / "model.onnx")!r})
            y = torch.from_numpy(s.run(None, {{"input": x.numpy()}})[0])
            out["onnx"] = (y - torch.load({str(ref_path)!r})).abs().max().item()
            meta = s.get_modelmeta().custom_metadata_map
            out["onnx_labels"] = json.loads(meta["labels"])
            out["onnx_config"] = json.loads(meta["config"])

        ns = runpy.run_path({str(e / "code" / "freeze_plan.py")!r})
        out["requires_grad"] = {{n: p.requires_grad for n, p in ns["model"].named_parameters()}}
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec({_readme_code(e / "bundle", image)!r}, {{}})
        out["readme"] = printed.getvalue().split()[0]
        print(json.dumps(out))
        """
    )
    for fmt in ("bundle", "pth", "torchscript", "pt2", "onnx"):
        if out[fmt] is not None:  # onnx: None when onnxruntime is not installed
            assert out[fmt] < TOL, (fmt, out[fmt])
    assert out["labels"] == ["circles", "squares", "stripes"]
    assert out["input_size"] == [3, 32, 32]
    # Every single-file format describes itself: labels and preprocessing travel with it.
    configs = [out["pth_config"], out["torchscript_config"], out["pt2_config"]]
    if out["onnx"] is not None:
        assert out["onnx_labels"] == out["labels"]
        configs.append(out["onnx_config"])
    for config in configs:
        assert config["label_names"] == out["labels"]
        assert config["input_size"] == [3, 32, 32] and config["mean"] == [0.5, 0.5, 0.5]
        assert config["interpolation"] and config["num_classes"] == 3
        assert config["constructor"] == "timm.create_model('test_resnet', num_classes=3)"
    assert results["pth"].validated and results["pth"].max_abs_diff < TOL
    assert out["requires_grad"] == expected_grad
    assert not out["requires_grad"]["layer1.0.conv1.weight"]
    assert out["readme"] in out["labels"]


def test_torchvision_bundle_loads_with_get_model_and_safetensors(
    tv_run: Path, demo_data: Path
) -> None:
    bundle = export(tv_run, "bundle").path
    pth = export(tv_run, "pth").path
    ts = export(tv_run, "torchscript").path
    config = json.loads((Path(bundle) / "config.json").read_text())
    # Its own loader description; never a timm "architecture" it is not.
    assert "architecture" not in config and config["library_name"] == "torchvision"
    assert config["torchvision"]["model"] == "mobilenet_v3_small"
    assert "get_model('mobilenet_v3_small', num_classes=3)" in config["torchvision"]["loader"]
    assert config["freezer"]["model"] == "torchvision:mobilenet_v3_small"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert (
        "torchvision.models.get_model('mobilenet_v3_small', num_classes=3)"
        in (Path(bundle) / "README.md").read_text()
    )
    x_path, ref_path = _reference(str(tv_run), tv_run)
    image = next((demo_data / "val" / "squares").iterdir())
    out = _fresh(
        f"""
        import contextlib, io, json
        import torch, torchvision
        from safetensors.torch import load_file
        x, ref = torch.load({str(x_path)!r}), torch.load({str(ref_path)!r})
        config = json.load(open({str(Path(bundle) / "config.json")!r}))
        m = torchvision.models.get_model(
            config["torchvision"]["model"], num_classes=config["num_classes"]
        )
        m.load_state_dict(load_file({str(Path(bundle) / "model.safetensors")!r}))
        out = {{}}
        with torch.no_grad():
            out["bundle"] = (m.eval()(x) - ref).abs().max().item()
            m.load_state_dict(torch.load({pth!r}, weights_only=True))
            out["pth"] = (m.eval()(x) - ref).abs().max().item()
            out["torchscript"] = (torch.jit.load({ts!r})(x) - ref).abs().max().item()
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec({_readme_code(Path(bundle), image)!r}, {{}})
        out["readme"] = printed.getvalue().split()[0]
        print(json.dumps(out))
        """
    )
    assert max(out["bundle"], out["pth"], out["torchscript"]) < TOL, out
    assert out["readme"] in config["label_names"]


def test_googlenet_bundle_loads_with_its_readme_code(
    googlenet_run: Path, demo_data: Path, tmp_path: Path
) -> None:
    """GoogLeNet and Inception v3 train without auxiliary classifiers and carry a transform_input
    flag outside their state_dict: the bundle, its check and its README code rebuild them so."""
    # A run from torchvision's pretrained weights trained with transform_input on (the weights
    # expect it); its project says so.
    pretrained = tmp_path / "pretrained-run"
    shutil.copytree(googlenet_run, pretrained, ignore=shutil.ignore_patterns("export"))
    project = json.loads((pretrained / "project.json").read_text())
    (pretrained / "project.json").write_text(json.dumps({**project, "pretrained": True}))
    assert load_model(str(googlenet_run)).module.transform_input is False
    assert load_model(str(pretrained)).module.transform_input is True

    image = next((demo_data / "val" / "stripes").iterdir())
    checks = {}
    for run, flag in ((googlenet_run, False), (pretrained, True)):
        result = export(run, "bundle", tmp_path / f"bundle-{flag}")
        assert result.validated and result.max_abs_diff < TOL
        bundle = Path(result.path)
        config = json.loads((bundle / "config.json").read_text())
        assert config["torchvision"]["model"] == "googlenet" and "architecture" not in config
        assert config["model_args"] == {
            "aux_logits": False,
            "init_weights": False,
            "transform_input": flag,
        }
        assert f"transform_input={flag}" in (bundle / "README.md").read_text()
        assert load_model(str(bundle)).module.transform_input is flag
        folder = tmp_path / f"ref-{flag}"
        folder.mkdir()
        x_path, ref_path = _reference(str(run), folder, batch=2, size=64)
        checks[str(flag)] = (str(x_path), str(ref_path), _readme_code(bundle, image))
    # The flag changes the logits: code without it would not reproduce them.
    assert not torch.equal(torch.load(checks["False"][1]), torch.load(checks["True"][1]))
    out = _fresh(
        f"""
        import contextlib, io, json
        import torch
        out = {{}}
        for flag, (x, ref, code) in {checks!r}.items():
            namespace = {{}}
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                exec(code, namespace)
            with torch.no_grad():
                y = namespace["model"](torch.load(x))
            out[flag] = [(y - torch.load(ref)).abs().max().item(), printed.getvalue().split()[0]]
        print(json.dumps(out))
        """
    )
    for diff, label in out.values():
        assert diff < TOL, out
        assert label in ("circles", "squares", "stripes")


# ---------------------------------------------------------------------- reuse in Freezer
def test_exports_open_again_as_models(run: Path, demo_data: Path, tmp_path: Path) -> None:
    bundle = Path(export(run, "bundle", tmp_path / "bundle").path)
    pth = Path(export(run, "pth", tmp_path / "weights" / "model.pth").path)
    x = torch.randn(2, 3, 32, 32)
    original = load_model(str(run))
    with torch.no_grad():
        ref = original.module(x)
    opened = load_model(str(bundle))
    assert str(opened.spec) == "timm:test_resnet"
    assert opened.label_names == ["circles", "squares", "stripes"]
    assert list(opened.data_config["input_size"]) == [3, 32, 32]
    assert original.data_config["input_size"] == (3, 32, 32)  # the run's image size
    with torch.no_grad():
        assert torch.equal(opened.module(x), ref)
    # Freezer's pth export is known by the model.config.json it writes beside it.
    from_pth = load_model(str(pth))
    with torch.no_grad():
        assert torch.equal(from_pth.module(x), ref)
    assert from_pth.label_names == ["circles", "squares", "stripes"]
    assert list(from_pth.data_config["input_size"]) == [3, 32, 32]
    # A bare .pth is anonymous; beside a config.json it is known.
    pth.with_name("model.config.json").unlink()
    with pytest.raises(WeightsError, match="Cannot tell which architecture"):
        load_model(str(pth))
    shutil.copy(bundle / "config.json", pth.parent / "config.json")
    beside = load_model(str(pth))
    with torch.no_grad():
        assert torch.equal(beside.module(x), ref)
    assert beside.label_names == ["circles", "squares", "stripes"]
    # Also run folders' own files.
    best = load_model(str(run / "checkpoints" / "best.safetensors"))
    assert best.data_config["input_size"] == (3, 32, 32)
    # Architecture mismatches name the keys.
    with pytest.raises(WeightsError, match=r"missing keys: cls_token.*unexpected keys: "):
        load_model("timm:test_vit", num_classes=3, weights=bundle / "model.safetensors")

    # Continue fine-tuning from the bundle; the new run stays readable after the bundle moves.
    project = make_project(demo_data, epochs=1, max_steps=1, model=str(bundle))
    result = Trainer(project, tmp_path / "again").run()
    assert result.reason == "step-limit"
    assert read_metadata(tmp_path / "again" / "model.safetensors")[META_MODEL] == (
        "timm:test_resnet"
    )
    bundle.rename(tmp_path / "moved")
    again = load_model(str(tmp_path / "again"))
    assert str(again.spec) == "timm:test_resnet"
    assert again.label_names == ["circles", "squares", "stripes"]


def test_user_factory_with_tied_weights(tmp_path: Path) -> None:
    path = tmp_path / "tied.py"
    path.write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Tied(nn.Module):
                def __init__(self, num_classes=4):
                    super().__init__()
                    self.features = nn.Sequential(
                        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
                    )
                    self.a = nn.Linear(8, 8)
                    self.b = nn.Linear(8, 8)
                    self.b.weight = self.a.weight  # tied
                    self.classifier = nn.Linear(8, num_classes)

                def forward(self, x):
                    return self.classifier(self.b(self.a(self.features(x))))

            def build(num_classes=4):
                return Tied(num_classes)
            """
        )
    )
    loaded = load_model(f"{path}:build", num_classes=4)
    src = ExportSource(loaded, "model", plan=FreezePlan(freeze=["a"]))
    result = export(src, "bundle", tmp_path / "bundle")
    assert result.validated
    reopened = load_model(str(tmp_path / "bundle"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reopened.module(x), loaded.module(x))
    assert reopened.module.b.weight is reopened.module.a.weight
    readme = (tmp_path / "bundle" / "README.md").read_text()
    assert "from tied import build" in readme
    # The bundle carries its model file and names no local path: moved to another machine
    # (here: another folder, the original file gone), it loads, and its README code runs.
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(tmp_path / "bundle", moved)
    path.unlink()
    assert (moved / "tied.py").exists()
    for file in moved.iterdir():
        assert str(tmp_path) not in file.read_bytes().decode("utf-8", "ignore"), file.name
    assert json.loads((moved / "config.json").read_text())["freezer"]["model"] == "tied.py:build"
    with pytest.raises(UntrustedCodeError):  # a .py named by a file runs only when trusted
        load_model(str(moved))
    again = load_model(str(moved), trust=CodeTrust.from_file(moved / "config.json", True))
    with torch.no_grad():
        assert torch.equal(again.module(x), loaded.module(x))
    code_block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code_block
    script = (
        code_block.group(1).split("from PIL import Image")[0]
        + "print(model(__import__('torch').zeros(1, 3, 32, 32)).shape)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], cwd=moved, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert "torch.Size([1, 4])" in ran.stdout
    code = export(src, "code", tmp_path / "plan.py")
    assert [Path(f).name for f in code.files] == ["plan.py", "plan.json"]
    assert "'a'" in (tmp_path / "plan.py").read_text()


# ---------------------------------------------------------------------- safety
def test_no_overwrite_without_force(run: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.pth"
    export(run, "pth", target)
    before = target.read_bytes()
    with pytest.raises(TargetExistsError, match="already exists") as e:
        export(run, "pth", target, checkpoint="best")
    assert "--force" in str(e.value)
    assert target.read_bytes() == before
    config = tmp_path / "model.config.json"  # the labels and preprocessing, beside it
    assert existing_targets("pth", target) == [target, config]
    export(run, "pth", target, checkpoint="best", force=True)
    best = torch.load(target, weights_only=True)
    from safetensors.torch import load_file

    expected = load_file(str(run / "checkpoints" / "best.safetensors"))
    assert all(torch.equal(best[k], expected[k]) for k in expected)
    # A folder is never replaced by a file (nor the other way round), even with force.
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        export(run, "onnx", tmp_path / "dir.onnx", force=True)
    # A bundle replaced with force: the old one stays until the new one is complete. A file
    # Freezer did not write inside it stops that (tests/test_export_safety.py has the rest).
    export(run, "bundle", tmp_path / "b")
    (tmp_path / "b" / "stale.txt").write_text("old")
    with pytest.raises(ExportError, match="stale.txt"):
        export(run, "bundle", tmp_path / "b", force=True)
    (tmp_path / "b" / "stale.txt").unlink()
    export(run, "bundle", tmp_path / "b", force=True)
    assert _leftovers(tmp_path) == ["b", "dir.onnx", "model.config.json", "model.pth"]


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied")]
)
def test_failed_write_leaves_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    import freezer_app.core.files as files

    def failing(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(code, "simulated")

    monkeypatch.setattr(files, "save_file", failing)
    with pytest.raises(WriteError, match=reason):
        export(run, "bundle", tmp_path / "out" / "bundle")
    assert _leftovers(tmp_path / "out") == []

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(code, "simulated")

    export(run, "pth", tmp_path / "out" / "model.pth")
    before = (tmp_path / "out" / "model.pth").read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(WriteError, match=reason):
        export(run, "pth", tmp_path / "out" / "model.pth", force=True)
    assert _leftovers(tmp_path / "out") == ["model.config.json", "model.pth"]
    assert (tmp_path / "out" / "model.pth").read_bytes() == before  # the old file is intact


def test_interrupted_or_cancelled_export_leaves_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(bundle_mod, "_bundle_check", interrupt)  # after the weights are written
        with pytest.raises(KeyboardInterrupt):
            export(run, "bundle", tmp_path / "bundle")
    with monkeypatch.context() as m:

        def half_then_interrupt(model, args, f, **kwargs):
            Path(f).write_bytes(b"half an onnx file")
            raise KeyboardInterrupt

        m.setattr(torch.onnx, "export", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            export(run, "onnx", tmp_path / "model.onnx")
    assert _leftovers(tmp_path) == []

    calls: list[tuple[int, int, str]] = []
    with pytest.raises(Cancelled, match="nothing was written"):
        export(
            run,
            "bundle",
            tmp_path / "bundle",
            progress=lambda done, total, what: calls.append((done, total, what)),
            should_cancel=lambda: len(calls) >= 3,
        )
    assert _leftovers(tmp_path) == []
    assert calls[0] == (0, 6, "writing model.safetensors")
    seen: list[tuple[int, int, str]] = []
    export(run, "torchscript", tmp_path / "m.pt", progress=lambda *a: seen.append(a))
    assert seen[-1] == (3, 3, "done")


def test_onnx_notes_without_onnxruntime_or_onnx(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    missing: set[str] = {"onnxruntime"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    result = export(run, "onnx", tmp_path / "m.onnx")
    assert result.validated is False
    assert "not validated: onnxruntime is not installed (pip install freezer-app[onnx])" in (
        result.notes
    )
    missing.add("onnx")
    with pytest.raises(ExportError, match=r"(?s)needs the onnx package.*freezer-app\[onnx\]"):
        export(run, "onnx", tmp_path / "n.onnx")
    assert _leftovers(tmp_path) == ["m.onnx"]


def test_onnx_uses_the_newer_exporter_with_dynamic_size_and_falls_back(
    run: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    # The default: torch.export's exporter, batch, height and width dynamic, checked at two sizes.
    result = export(run, "onnx", tmp_path / "m.onnx")
    assert result.validated and result.max_abs_diff < TOL
    notes = "\n".join(result.notes)
    assert "(dynamic batch, height, width)" in notes and "torch.export-based exporter" in notes
    assert "also matches at" in notes
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert [isinstance(d, str) for d in session.get_inputs()[0].shape] == [True, False, True, True]
    src = open_source(run)
    with torch.no_grad():
        x = torch.rand(2, 3, 48, 80)
        expected = src.loaded.module.eval()(x)
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected.numpy()).max() < TOL

    # Without onnxscript: the TorchScript-based exporter (dynamic batch only), and it says why.
    real = importlib.util.find_spec
    no_onnxscript = lambda n, *a: None if n == "onnxscript" else real(n, *a)
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", no_onnxscript)
        old = export(run, "onnx", tmp_path / "old.onnx")
    assert old.validated and "(dynamic batch)" in "\n".join(old.notes)
    assert "TorchScript-based exporter (onnxscript is not installed" in "\n".join(old.notes)

    # test_vit trained at 32 px resamples its position embedding with an antialiased bicubic
    # filter that only the newer exporter expresses: without onnxscript, a clear message.
    Trainer(
        make_project(demo_data, epochs=1, max_steps=1, model="timm:test_vit"), tmp_path / "vit"
    ).run()
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", no_onnxscript)
        with pytest.raises(ExportError, match=r"(?s)ONNX export failed.*pip install onnxscript"):
            export(tmp_path / "vit", "onnx", tmp_path / "vit.onnx")
    assert not (tmp_path / "vit.onnx").exists()
    vit = export(tmp_path / "vit", "onnx", tmp_path / "vit.onnx")
    assert vit.validated and vit.max_abs_diff < TOL


# ---------------------------------------------------------------------- CLI
def test_cli_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (EXPORT_FORMATS, EXPORT_CHECKPOINTS) == (FORMATS, CHECKPOINTS)
    out = tmp_path / "m.pth"
    assert main(["export", str(run), "--format", "pth", "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(out) and data["format"] == "pth"
    assert main(["export", str(run), "--format", "pth", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert main(["export", str(run), "--format", "pth", "--out", str(out), "--force"]) == 0
    assert "wrote pth" in capsys.readouterr().out
    assert default_export_path(run, "onnx", "best") == run / "export" / "model-best.onnx"
    assert default_export_path(run, "bundle", "best") == run / "export" / "bundle-best"
    # Another source than a run folder needs --out.
    assert main(["export", str(out), "--format", "onnx"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "code", "--checkpoint", "best"]) == 0
    text = capsys.readouterr().out
    assert "freeze_plan.py" in text and str(run / "export" / "code-best") in text


def test_a_bundle_is_hub_ready_and_names_no_local_path(run: Path, tmp_path: Path) -> None:
    bundle = Path(export(run, "bundle", tmp_path / "hub").path)
    local = str(run.resolve().parents[1])  # the machine's folders above the run
    for file in bundle.iterdir():
        assert local not in file.read_bytes().decode("utf-8", "ignore"), file.name
    card = (bundle / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: other" in front and "pipeline_tag: image-classification" in front
    assert "base_model" not in front  # trained from random init: no pretrained base to name
    assert "## Data" in card and "| circles | 40 | 10 |" in card
    assert "## Freeze plan" in card and "started from random init" in card
    assert 'timm.create_model("local-dir:.", pretrained=True)' in card and "hf-hub:" in card
    training = json.loads((bundle / "training.json").read_text())
    assert training["run"] == run.name and training["data"]["path"] == "data"


def test_triton_repository_is_served_as_it_is(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    result = export(run, "triton", out)
    folder = out / result.files[0].split("/")[-2]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [".freezer-export"]
        + [f"{folder.name}/{f}" for f in ("config.pbtxt", "labels.txt", "1/model.onnx")]
    )
    config = (folder / "config.pbtxt").read_text()
    # What Triton's onnxruntime backend needs: the name matching the folder, the backend, the
    # tensor names, types and shapes of the ONNX file, and the labels file for classification.
    assert f'name: "{folder.name}"' in config and 'backend: "onnxruntime"' in config
    assert re.search(r'name: "input"\s+data_type: TYPE_FP32\s+dims: \[ 3, 32, 32 \]', config)
    assert re.search(r'name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 3 \]', config)
    assert 'label_filename: "labels.txt"' in config and "max_batch_size: 64" in config
    labels = (folder / "labels.txt").read_text().splitlines()
    assert labels == ["circles", "squares", "stripes"]
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(folder / "1" / "model.onnx"))
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("input", "logits")
    x = torch.randn(5, 3, 32, 32).numpy()  # a batch size Triton's batcher may send
    assert session.run(None, {"input": x})[0].shape == (5, 3)
    # Replaced with --force as any folder export Freezer wrote; a stray file stops it.
    export(run, "triton", out, force=True)
    (folder / "1" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt"):
        export(run, "triton", out, force=True)
