"""The one-file binary: what the build collects (fast), and the built binary itself (slow)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from agent import __version__
from agent.version import build_commit
from drivers.registry import SOURCE_CLASSES
from tests.conftest import REPO_ROOT, free_port


def load_build_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_tool", REPO_ROOT / "packaging" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_tool = load_build_tool()


def test_build_collects_every_lazily_imported_driver() -> None:
    arguments = build_tool.pyinstaller_arguments("plantgate-test", Path("/tmp/d"), Path("/tmp/w"))
    collected = {a.split("=", 1)[1] for a in arguments if a.startswith(("--collect-submodules=", "--collect-all="))}
    for target in SOURCE_CLASSES.values():
        module = target.split(":")[0]
        assert module.split(".")[0] in collected, f"{module} is imported by name but not collected"
    assert {"asyncua", "pymodbus", "aiohttp", "pydantic"} <= collected
    assert "--onefile" in arguments


def test_build_data_files_exist() -> None:
    for source, _target in build_tool.DATA_FILES:
        assert (REPO_ROOT / source).is_file(), source


def test_binary_name_has_version_and_arch() -> None:
    assert build_tool.binary_name("0.2.0", "aarch64") == "plantgate-0.2.0-linux-aarch64"


def test_version_reports_baked_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    baked = ModuleType("agent._build")
    baked.COMMIT = "0123456789ab"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent._build", baked)
    assert build_commit() == "0123456789ab"


def test_entry_script_runs_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "packaging" / "entry.py"), "--version"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"plantgate {__version__} (build ")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("PyInstaller", reason="PyInstaller is not installed: pip install '.[package]'")
    folder = tmp_path_factory.mktemp("build")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "packaging" / "build.py"),
            "--dist",
            str(folder / "dist"),
            "--work",
            str(folder / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    path = folder / "dist" / build_tool.binary_name(__version__)
    assert path.is_file()
    yield path


@pytest.mark.slow
def test_binary_prints_version_and_commit(binary: Path) -> None:
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"plantgate {re.escape(__version__)} \(build [0-9a-f]{{12}}(-dirty)?\)\n", result.stdout)


@pytest.mark.slow
def test_binary_checks_example_config(binary: Path) -> None:
    example = REPO_ROOT / "config" / "plantgate.example.toml"
    result = subprocess.run([str(binary), "check-config", str(example)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{example}: valid" in result.stdout


@pytest.mark.slow
def test_binary_demo_delivers_records(binary: Path, tmp_path: Path) -> None:
    # The demo's fixed ports may be taken by other test runs on this machine: use free ones.
    config = (REPO_ROOT / "config" / "demo.toml").read_text()
    for port in ("18081", "48401", "15021", "18787"):
        config = config.replace(port, str(free_port()))
    demo_config = tmp_path / "demo.toml"
    demo_config.write_text(config)

    result = subprocess.run(
        [
            str(binary),
            "demo",
            "--config",
            str(demo_config),
            "--duration",
            "6",
            "--outage-at",
            "1000",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"unique events at the receiver: (\d+)", result.stdout)
    assert match is not None, result.stdout
    assert int(match.group(1)) > 0
    assert "nothing lost, nothing doubled" in result.stdout
