"""`plantgate update apply` end to end, with a scripted service in place of systemd.

The "service" is a script that stops the process it started last and starts
`<install_dir>/current/plantgate`, as `systemctl restart` would. The released "binaries" are
small Python programs that serve /readyz and /status with their version on a loopback port,
or never become ready, so the rollback runs for real: files, symlink, processes and HTTP.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import load_config
from agent.update import signing

ROOT = Path(__file__).resolve().parents[2]

FAKE_BINARY = """#!{python}
import http.server, json, os, time

VERSION = {version!r}
if {never_ready!r}:
    time.sleep(3600)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/readyz":
            body = b"ready"
        elif self.path == "/status":
            body = json.dumps({{"version": VERSION}}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(os.environ["FAKE_PORT"])), Handler).serve_forever()
"""

SERVICE = """
import os, signal, subprocess, sys, time

root, port = sys.argv[1], sys.argv[2]
pidfile = os.path.join(root, "service.pid")


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


if os.path.exists(pidfile):
    pid = int(open(pidfile).read())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)

log = open(os.path.join(root, "service.log"), "ab")
child = subprocess.Popen(
    [os.path.join(root, "current", "plantgate")],
    env={**os.environ, "FAKE_PORT": port},
    stdout=log, stderr=log, start_new_session=True,
)
with open(pidfile, "w") as file:
    file.write(str(child.pid))
"""


def load_release_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("release_tool", ROOT / "packaging" / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


release_tool = load_release_tool()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Fleet:
    """One gateway's files: configuration, install folder, signing key, releases."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port = free_port()
        self.key = Ed25519PrivateKey.generate()
        self.install_dir = tmp_path / "opt"
        self.install_dir.mkdir()
        service = tmp_path / "service.py"
        service.write_text(SERVICE)
        self.config = tmp_path / "plantgate.toml"
        restart = [sys.executable, str(service), str(self.install_dir), str(self.port)]
        self.config.write_text(
            f"""
[agent]
site = "test"
gateway_id = "gw-1"

[central]
url = "http://127.0.0.1:9/ingest"

[outbox]
path = "outbox.sqlite"

[health]
port = {self.port}

[update]
public_keys = ["{signing.encode_public_key(self.key.public_key())}"]
install_dir = "opt"
ready_timeout_s = 4
restart_command = {json.dumps(restart)}
"""
        )

    def release(self, version: str, *, never_ready: bool = False, key: Ed25519PrivateKey | None = None) -> Path:
        build = self.tmp / f"build-{version}"
        build.mkdir(exist_ok=True)
        binary = build / f"plantgate-{version}-linux-test"
        binary.write_text(FAKE_BINARY.format(python=sys.executable, version=version, never_ready=never_ready))
        binary.chmod(0o755)
        manifest = release_tool.build_manifest(binary, version, "0123456789ab", os.uname().machine)
        return Path(release_tool.write_release(binary, manifest, key or self.key, build / "release"))

    def apply(self, release: Path | str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "update",
                "apply",
                str(release),
                "--config",
                str(self.config),
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def current(self) -> str | None:
        link = self.install_dir / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def running_version(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=5) as response:
            return str(json.loads(response.read())["version"])

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.install_dir / "update-state.json").read_text()))

    def stop(self) -> None:
        pidfile = self.install_dir / "service.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


def test_apply_installs_good_bundle_and_upgrades(fleet: Fleet) -> None:
    first = fleet.apply(fleet.release("0.1.0"))
    assert first.returncode == 0, first.stderr
    assert fleet.current() == "0.1.0"
    assert fleet.running_version() == "0.1.0"

    second = fleet.apply(fleet.release("0.2.0"))
    assert second.returncode == 0, second.stderr
    assert "upgrade: 0.1.0 -> 0.2.0" in second.stdout
    assert fleet.current() == "0.2.0"
    assert fleet.running_version() == "0.2.0"
    assert (fleet.install_dir / "versions" / "0.1.0" / "plantgate").is_file()
    state = fleet.state()
    assert state["result"] == "installed"
    assert state["from"] == "0.1.0"
    assert state["to"] == "0.2.0"


def test_apply_rolls_back_version_never_ready(fleet: Fleet) -> None:
    assert fleet.apply(fleet.release("0.1.0")).returncode == 0

    result = fleet.apply(fleet.release("0.3.0", never_ready=True))

    assert result.returncode == 1
    assert "rolled back to 0.1.0, which is running" in result.stderr
    assert "not ready within 4 s" in result.stderr
    assert fleet.current() == "0.1.0"
    assert fleet.running_version() == "0.1.0"
    state = fleet.state()
    assert state["result"] == "rolled-back"
    assert state["to"] == "0.3.0"
    assert state["running"] == "0.1.0"

    status = subprocess.run(
        [sys.executable, "-m", "agent", "update", "status", "--config", str(fleet.config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "last update: rolled-back 0.1.0 -> 0.3.0" in status.stdout


async def test_status_document_reports_rollback(fleet: Fleet) -> None:
    assert fleet.apply(fleet.release("0.1.0")).returncode == 0
    assert fleet.apply(fleet.release("0.3.0", never_ready=True)).returncode == 1

    from agent.supervisor import Agent

    document = await Agent(load_config(fleet.config)).status()

    report = document["update"]
    assert report["current"] == "0.1.0"
    assert report["last_attempt"]["result"] == "rolled-back"
    assert "version 0.3.0 failed (not ready within 4 s)" in report["last_attempt"]["message"]


def rebuild_bundle(bundle: Path, replace: dict[str, bytes | None]) -> Path:
    """Copy a bundle, replacing members (None drops one), as an attacker or a bad mirror would."""
    changed = bundle.with_name("changed-" + bundle.name)
    with tarfile.open(bundle) as source, tarfile.open(changed, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member)
            assert data is not None
            content = replace.get(member.name, data.read())
            if content is None:
                continue
            member.size = len(content)
            target.addfile(member, io.BytesIO(content))
    return changed


def tamper_binary(bundle: Path) -> Path:
    with tarfile.open(bundle) as archive:
        name = next(m.name for m in archive.getmembers() if m.name.startswith("plantgate-"))
        data = archive.extractfile(name)
        assert data is not None
        content = bytearray(data.read())
    content[-2] ^= 0x01
    return rebuild_bundle(bundle, {name: bytes(content)})


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("changed byte in binary", "the file was changed after signing"),
        ("wrong key", "does not verify with any pinned public key"),
        ("unsigned manifest", "unsigned releases are rejected"),
        ("changed manifest", "does not verify with any pinned public key"),
    ],
)
def test_apply_refuses_untrusted_release(fleet: Fleet, case: str, expected: str) -> None:
    if case == "changed byte in binary":
        bundle = tamper_binary(fleet.release("0.2.0"))
    elif case == "wrong key":
        bundle = fleet.release("0.2.0", key=Ed25519PrivateKey.generate())
    elif case == "unsigned manifest":
        bundle = rebuild_bundle(fleet.release("0.2.0"), {"manifest.json.sig": None})
    else:
        original = fleet.release("0.2.0")
        manifest = (original.parent / "release" / "manifest.json").read_bytes()
        bundle = rebuild_bundle(original, {"manifest.json": manifest.replace(b'"size": ', b'"size": 1')})

    result = fleet.apply(bundle)

    assert result.returncode == 1
    assert "plantgate update rejected:" in result.stderr
    assert expected in result.stderr
    assert fleet.current() is None
    assert not (fleet.install_dir / "versions" / "0.2.0").exists()


def test_apply_refuses_downgrade_unless_allowed(fleet: Fleet) -> None:
    assert fleet.apply(fleet.release("0.2.0")).returncode == 0
    older = fleet.release("0.1.0")

    refused = fleet.apply(older)
    assert refused.returncode == 1
    assert "release 0.1.0 is older than the installed 0.2.0; pass --allow-downgrade" in refused.stderr
    assert fleet.current() == "0.2.0"

    allowed = fleet.apply(older, "--allow-downgrade")
    assert allowed.returncode == 0, allowed.stderr
    assert fleet.current() == "0.1.0"
    assert fleet.running_version() == "0.1.0"


def test_apply_refuses_release_that_cannot_open_outbox(fleet: Fleet) -> None:
    connection = sqlite3.connect(fleet.tmp / "outbox.sqlite")
    connection.execute("PRAGMA user_version = 99")
    connection.close()

    result = fleet.apply(fleet.release("0.2.0"))

    assert result.returncode == 1
    assert "the outbox has schema version 99" in result.stderr
    assert fleet.current() is None


@pytest.fixture
def release_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain HTTP file server on loopback, as the central side would publish releases."""
    folder = tmp_path / "published"
    folder.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


def test_apply_fetches_bundle_from_url(fleet: Fleet, release_server: tuple[Path, str]) -> None:
    folder, base = release_server
    bundle = fleet.release("0.2.0")
    os.replace(bundle, folder / bundle.name)

    result = fleet.apply(f"{base}/{bundle.name}")

    assert result.returncode == 0, result.stderr
    assert fleet.running_version() == "0.2.0"


def run_check(fleet: Fleet) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "update", "check", "--config", str(fleet.config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("percent", "applies"), [(0, False), (100, True)])
def test_check_applies_published_manifest_within_rollout(
    fleet: Fleet, release_server: tuple[Path, str], percent: int, applies: bool
) -> None:
    folder, base = release_server
    assert fleet.apply(fleet.release("0.1.0")).returncode == 0
    release_folder = fleet.release("0.2.0").parent / "release"
    for path in release_folder.iterdir():
        os.replace(path, folder / path.name)
    with fleet.config.open("a") as config:
        config.write(f'url = "{base}/manifest.json"\nrollout_percent = {percent}\n')

    result = run_check(fleet)

    assert result.returncode == 0, result.stderr
    if applies:
        assert "upgrade: 0.1.0 -> 0.2.0" in result.stdout
        assert fleet.running_version() == "0.2.0"
    else:
        assert "is rolled out to 0% of gateways; gateway gw-1 is in bucket" in result.stdout
        assert fleet.running_version() == "0.1.0"

    again = run_check(fleet)
    assert again.returncode == 0
    if applies:
        assert "is not newer than the installed 0.2.0; nothing to do" in again.stdout
