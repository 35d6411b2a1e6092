"""The desktop install: `freezer-app PROJECT.json` opens the window on it, the `freezer-app-gui`
script, `freezer-app install-desktop [--uninstall]`, and the shipped desktop entry and MIME type."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from freezer_app.cli import gui as gui_cli
from freezer_app.cli import install_desktop, main
from freezer_app.cli.common import EXIT_OK

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MIME_NS = "{http://www.freedesktop.org/standards/shared-mime-info}"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replaces the window: records what `run_gui` was asked to open, runs no event loop."""
    calls: list[dict] = []

    def fake_run_gui(project: str | None = None, **kwargs: object) -> int:
        calls.append({"project": project, **kwargs})
        return 0

    import freezer_app.gui.app as app

    monkeypatch.setattr(app, "run_gui", fake_run_gui)
    return calls


def project_file(tmp_path: Path, name: str = "mine.freezer.json") -> Path:
    path = tmp_path / name
    path.write_text('{"name": "mine", "model": "timm:test_resnet"}')
    return path


@pytest.mark.parametrize("name", ["mine.freezer.json", "project.json", "Project.JSON"])
def test_a_project_file_as_first_argument_opens_the_window(
    tmp_path: Path, opened: list[dict], name: str
) -> None:
    path = project_file(tmp_path, name)
    assert main([str(path)]) == EXIT_OK
    assert [c["project"] for c in opened] == [str(path)]
    assert opened[0]["demo"] is False and opened[0]["screenshot"] is None


def test_gui_options_after_the_project_are_kept(tmp_path: Path, opened: list[dict]) -> None:
    path = project_file(tmp_path)
    assert main([str(path), "--trust-code"]) == EXIT_OK
    assert opened[0]["project"] == str(path) and opened[0]["trust_code"] is True


def test_same_as_the_gui_command_and_no_arguments_still_opens_an_empty_window(
    tmp_path: Path, opened: list[dict]
) -> None:
    path = project_file(tmp_path)
    assert main(["gui", str(path)]) == EXIT_OK
    assert main([]) == EXIT_OK
    assert [c["project"] for c in opened] == [str(path), None]


def test_what_is_not_an_existing_json_file_is_still_a_usage_error(
    tmp_path: Path, opened: list[dict], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for arg in [str(tmp_path / "missing.json"), str(tmp_path / "notes.txt"), str(tmp_path)]:
        with pytest.raises(SystemExit) as e:
            main([arg])
        assert e.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
    assert opened == []


def test_a_command_name_wins_over_a_file_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[dict], capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").write_text("{}")
    assert main(["models", "--source", "timm", "test_resnet"]) == EXIT_OK
    assert opened == []
    capsys.readouterr()


def test_the_gui_script_takes_the_project_from_its_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[dict]
) -> None:
    path = project_file(tmp_path)
    monkeypatch.setattr("sys.argv", ["freezer-app-gui", str(path)])
    assert gui_cli.launch() == EXIT_OK
    monkeypatch.setattr("sys.argv", ["freezer-app-gui"])
    assert gui_cli.launch() == EXIT_OK
    assert [c["project"] for c in opened] == [str(path), None]


def test_the_gui_script_is_declared_as_a_gui_entry_point() -> None:
    import tomllib

    pyproject = tomllib.loads((RESOURCES.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["gui-scripts"]["freezer-app-gui"] == "freezer_app.cli.gui:launch"
    assert "*.xml" in pyproject["tool"]["setuptools"]["package-data"]["freezer_app.resources"]


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(base))
    return base


def test_install_desktop_writes_the_entry_icon_and_mime_type_and_uninstall_removes_them(
    xdg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desktop = xdg / "applications" / "freezer-app.desktop"
    icon = xdg / "icons" / "hicolor" / "scalable" / "apps" / "freezer-app.svg"
    mime = xdg / "mime" / "packages" / "freezer-app.xml"

    assert main(["install-desktop"]) == EXIT_OK
    out = capsys.readouterr().out
    for path in (desktop, icon, mime):
        assert path.is_file()
        assert f"wrote {path}" in out
    assert icon.read_bytes() == (RESOURCES / "freezer.svg").read_bytes()
    assert mime.read_bytes() == (RESOURCES / "freezer-app.xml").read_bytes()
    text = desktop.read_text()
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))
    command = install_desktop.gui_command()
    assert Path(command[0]).is_absolute()
    assert exec_line.endswith(" %f")
    assert "MimeType=application/x-freezer-project;" in text
    for tool in ("update-mime-database", "update-desktop-database"):
        assert (f"ran {tool}" if shutil.which(tool) else f"{tool} not found") in out

    assert main(["install-desktop"]) == EXIT_OK  # again: replaces, no error
    capsys.readouterr()

    assert main(["install-desktop", "--uninstall"]) == EXIT_OK
    out = capsys.readouterr().out
    for path in (desktop, icon, mime):
        assert not path.exists()
        assert f"removed {path}" in out
    assert main(["install-desktop", "--uninstall"]) == EXIT_OK
    assert "nothing to remove" in capsys.readouterr().out


def test_the_entry_runs_the_installed_gui_script_else_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "venv bin"
    bin_dir.mkdir()
    script = bin_dir / "freezer-app-gui"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "")
    assert install_desktop.gui_command() == [str(script)]
    script.unlink()
    assert install_desktop.gui_command() == [str(bin_dir / "python"), "-m", "freezer_app", "gui"]


def test_the_exec_line_quotes_paths_as_the_spec_asks() -> None:
    assert install_desktop.exec_arg("/usr/bin/freezer-app-gui") == "/usr/bin/freezer-app-gui"
    assert install_desktop.exec_arg("/home/a b/100%/x") == '"/home/a b/100%%/x"'
    assert install_desktop.exec_arg('/a"$`\\b') == '"/a\\\\"\\\\$\\\\`\\\\\\\\b"'


def test_uninstall_when_nothing_was_installed(xdg: Path, capsys) -> None:
    assert main(["install-desktop", "--uninstall"]) == EXIT_OK
    assert "nothing to remove" in capsys.readouterr().out


def test_the_install_command_is_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "install-desktop" in capsys.readouterr().out


def test_mime_type_parses_and_claims_only_freezer_projects() -> None:
    root = ET.parse(RESOURCES / "freezer-app.xml").getroot()
    assert root.tag == f"{MIME_NS}mime-info"
    types = root.findall(f"{MIME_NS}mime-type")
    assert [t.get("type") for t in types] == ["application/x-freezer-project"]
    globs = [g.get("pattern") for g in types[0].findall(f"{MIME_NS}glob")]
    assert globs == ["*.freezer.json"]


def test_desktop_entry_claims_the_project_type_and_runs_the_gui_script() -> None:
    lines = (RESOURCES / "freezer-app.desktop").read_text().splitlines()
    assert "MimeType=application/x-freezer-project;" in lines
    assert "Exec=freezer-app-gui %f" in lines
    assert not any(line.startswith("MimeType=") and "application/json" in line for line in lines)


needs_validator = pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None, reason="desktop-file-validate not installed"
)


def validate(path: Path) -> None:
    done = subprocess.run(
        ["desktop-file-validate", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error" not in (done.stdout + done.stderr).lower()


@needs_validator
def test_the_shipped_desktop_entry_is_valid() -> None:
    validate(RESOURCES / "freezer-app.desktop")


@needs_validator
def test_the_installed_desktop_entry_is_valid_even_with_odd_paths(
    xdg: Path, tmp_path: Path, capsys
) -> None:
    program = tmp_path / "my apps" / "100% $HOME" / "freezer-app-gui"
    assert main(["install-desktop", "--exec", str(program)]) == EXIT_OK
    capsys.readouterr()
    validate(xdg / "applications" / "freezer-app.desktop")
