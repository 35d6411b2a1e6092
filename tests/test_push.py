"""`freezer-app push`: a bundle uploaded with huggingface_hub's own calls (a stub client here:
no network in tests)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import huggingface_hub
import pytest
from test_export import run  # noqa: F401 - the trained run fixture

from freezer_app.cli import main
from freezer_app.core.export import export


class StubHub:
    calls: ClassVar[list[tuple[str, tuple, dict]]] = []
    uploaded: ClassVar[list[str]] = []
    fail: Exception | None = None

    def create_repo(self, *args, **kwargs):
        StubHub.calls.append(("create_repo", args, kwargs))
        if StubHub.fail:
            raise StubHub.fail
        return f"https://huggingface.co/{args[0]}"

    def upload_folder(self, **kwargs):
        StubHub.calls.append(("upload_folder", (), kwargs))
        folder = Path(kwargs["folder_path"])
        ignored = set(kwargs.get("ignore_patterns") or [])
        StubHub.uploaded = sorted(p.name for p in folder.iterdir() if p.name not in ignored)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> type[StubHub]:
    StubHub.calls, StubHub.uploaded, StubHub.fail = [], [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", StubHub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_stub")
    return StubHub


def test_push_uploads_the_bundle_to_a_new_private_repo(
    run: Path,  # noqa: F811
    tmp_path: Path,
    hub: type[StubHub],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = export(run, "bundle", tmp_path / "bundle").path
    assert main(["push", bundle, "me/shapes", "--private"]) == 0
    (name, args, kwargs), (upload, _, upload_kwargs) = hub.calls
    assert name == "create_repo" and args == ("me/shapes",)
    assert kwargs == {"repo_type": "model", "private": True, "exist_ok": True}
    assert upload == "upload_folder" and upload_kwargs["repo_id"] == "me/shapes"
    assert hub.uploaded == [
        "README.md",
        "config.json",
        "freeze_plan.json",
        "freeze_plan.py",
        "model.safetensors",
        "training.json",
    ]
    out = capsys.readouterr().out
    assert 'timm.create_model("hf-hub:me/shapes", pretrained=True)' in out


def test_push_refuses_what_is_not_a_bundle_and_reports_hub_errors(
    run: Path,  # noqa: F811
    tmp_path: Path,
    hub: type[StubHub],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["push", str(tmp_path), "me/shapes"]) == 2
    message = capsys.readouterr().err
    assert "not a bundle Freezer exported" in message and "uploading" not in message
    bundle = export(run, "bundle", tmp_path / "bundle").path
    assert main(["push", bundle, "not a repo"]) == 2
    assert "not a Hub repository id" in capsys.readouterr().err
    hub.fail = OSError("Name or service not known")
    assert main(["push", bundle, "me/shapes"]) == 2
    message = capsys.readouterr().err
    assert "could not be reached: Name or service not known" in message and "HF_TOKEN" in message
    assert hub.calls and hub.calls[-1][0] == "create_repo"  # nothing uploaded


def test_push_without_a_hub_login_says_so_before_any_network(
    run: Path,  # noqa: F811
    tmp_path: Path,
    hub: type[StubHub],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    bundle = export(run, "bundle", tmp_path / "bundle").path
    assert main(["push", bundle, "me/shapes"]) == 2
    message = capsys.readouterr().err
    assert "not logged in" in message and "hf auth login" in message
    assert "uploading" not in message and hub.calls == []
