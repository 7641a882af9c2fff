"""Build the one-file binary `dist/plantgate-<version>-linux-<arch>` with PyInstaller.

    /work/venv/bin/python packaging/build.py            # or any Python with '.[package]' installed

The build commit is baked in by writing `agent/_build.py` for the duration of the build, so
`plantgate --version` prints it without git. Source drivers are imported by name at run time
(drivers/registry.py), which PyInstaller cannot see, so every package of the project is
collected whole, with the third-party packages the drivers load.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_INFO = ROOT / "agent" / "_build.py"
ENTRY = ROOT / "packaging" / "entry.py"

# Packages loaded by name at run time (drivers/registry.py, lazy imports in commands), collected
# whole so that a configured source type never meets a missing module in the binary.
PROJECT_PACKAGES = ["agent", "drivers", "outbox"]
# Third-party packages with submodules or data that PyInstaller's import scan misses.
COLLECT_ALL = ["asyncua", "pymodbus"]
COLLECT_SUBMODULES = ["aiohttp", "pydantic", "pydantic_settings", "aiosqlite", "prometheus_client", "serial"]
# Files the binary reads from its own folder: the demo's configuration.
DATA_FILES = [("config/demo.toml", "config")]


def project_version() -> str:
    sys.path.insert(0, str(ROOT))
    from agent import __version__

    return __version__


def git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False
    )
    commit = result.stdout.strip() or "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{commit}-dirty" if dirty else commit


def binary_name(version: str, machine: str | None = None) -> str:
    return f"plantgate-{version}-linux-{machine or platform.machine()}"


def pyinstaller_arguments(name: str, dist: Path, work: Path) -> list[str]:
    arguments = [
        str(ENTRY),
        "--onefile",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--name={name}",
        f"--distpath={dist}",
        f"--workpath={work}",
        f"--specpath={work}",
        f"--paths={ROOT}",
        # The binary must not pick up modules from the folder it is started in.
        "--exclude-module=tkinter",
        "--exclude-module=pytest",
    ]
    for package in PROJECT_PACKAGES + COLLECT_SUBMODULES:
        arguments.append(f"--collect-submodules={package}")
    for package in COLLECT_ALL:
        arguments.append(f"--collect-all={package}")
    for source, target in DATA_FILES:
        arguments.append(f"--add-data={ROOT / source}:{target}")
    return arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description="Build the one-file plantgate binary.")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller", help="scratch folder")
    args = parser.parse_args(argv)

    try:
        import PyInstaller.__main__ as pyinstaller
    except ImportError:
        print("PyInstaller is not installed: pip install '.[package]'", file=sys.stderr)
        return 2

    version = project_version()
    commit = git_commit()
    name = binary_name(version)
    BUILD_INFO.write_text(
        '"""Written by packaging/build.py for one build; not in git."""\n\n'
        f"COMMIT = {commit!r}\nVERSION = {version!r}\n"
    )
    started = time.monotonic()
    try:
        pyinstaller.run(pyinstaller_arguments(name, args.dist, args.work))
    finally:
        BUILD_INFO.unlink(missing_ok=True)
        shutil.rmtree(ROOT / "agent" / "__pycache__" / "_build.cpython-311.pyc", ignore_errors=True)

    binary = args.dist / name
    size_mib = binary.stat().st_size / 1024**2
    print(f"built {binary} ({size_mib:.1f} MiB, commit {commit}) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
