"""`packaging/release.py keygen|sign` as a release manager runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from agent import __version__
from agent.update import signing
from agent.update.bundle import load_release
from outbox.schema import SCHEMA_VERSION
from tests.conftest import REPO_ROOT

RELEASE_TOOL = str(REPO_ROOT / "packaging" / "release.py")


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, RELEASE_TOOL, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_keygen_writes_private_key_and_prints_public(tmp_path: Path) -> None:
    key = tmp_path / "release-key.pem"

    result = run_tool("keygen", "--out", str(key))

    assert result.returncode == 0, result.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    public = result.stdout.strip().splitlines()[-1]
    signing.decode_public_key(public)


def test_keygen_refuses_to_overwrite_key(tmp_path: Path) -> None:
    key = tmp_path / "release-key.pem"
    key.write_text("keep me")

    result = run_tool("keygen", "--out", str(key))

    assert result.returncode == 1
    assert "exists; refusing to overwrite a signing key" in result.stderr
    assert key.read_text() == "keep me"


def test_sign_makes_bundle_that_verifies(tmp_path: Path) -> None:
    key = tmp_path / "release-key.pem"
    public = run_tool("keygen", "--out", str(key)).stdout.strip().splitlines()[-1]
    binary = tmp_path / f"plantgate-{__version__}-linux-x86_64"
    binary.write_bytes(b"\x7fELF not really" * 1000)

    result = run_tool("sign", str(binary), "--key", str(key), "--commit", "0123456789ab", "--rollout-percent", "10")

    assert result.returncode == 0, result.stderr
    bundle = tmp_path / f"{binary.name}.bundle.tar"
    with tarfile.open(bundle) as archive:
        assert sorted(archive.getnames()) == sorted(["manifest.json", "manifest.json.sig", binary.name])
    manifest = json.loads((tmp_path / f"{binary.name}.release" / "manifest.json").read_text())
    assert manifest["version"] == __version__
    assert manifest["commit"] == "0123456789ab"
    assert manifest["outbox_schema"] == SCHEMA_VERSION
    assert manifest["rollout_percent"] == 10

    staging = tmp_path / "staging"
    staging.mkdir()
    release = load_release(str(bundle), staging, [public])
    assert release.manifest.size == binary.stat().st_size
    assert release.binary.read_bytes() == binary.read_bytes()
