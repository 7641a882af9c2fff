"""Install a verified release beside the running one, switch to it, and roll back if it fails.

The install folder (`[update] install_dir`, /opt/plantgate by default) looks like this:

    versions/0.1.0/plantgate        one folder per installed release, with its signed manifest
    versions/0.2.0/plantgate
    current -> versions/0.2.0       the unit's ExecStart runs current/plantgate
    update-state.json               the last update attempt, shown in /status

The switch replaces the `current` symlink with rename(2), which is atomic: a crash leaves
either the old or the new link, never none. After the switch the service is restarted with
`[update] restart_command`; the new version must then report ready within
`ready_timeout_s`, or the link is switched back and the service restarted again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.update.bundle import VerifiedRelease, check_binary
from agent.update.errors import UpdateFailed, UpdateRejected, UpdateRolledBack
from agent.update.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    VersionDecision,
    check_arch,
    check_outbox_schema,
    decide_version,
)

log = logging.getLogger(__name__)

BINARY_NAME = "plantgate"
STATE_NAME = "update-state.json"
RESTART_TIMEOUT_S = 300.0

ReadyProbe = Callable[[str], bool]
"""Called with the expected version; True once that version reports ready."""


@dataclass(frozen=True)
class InstallLayout:
    root: Path

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_NAME

    def version_dir(self, version: str) -> Path:
        return self.versions / version

    def current_version(self) -> str | None:
        """The version `current` points at, or None before the first install."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        return Path(target).name

    def installed_versions(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if (p / BINARY_NAME).is_file())


@dataclass(frozen=True)
class UpdatePlan:
    layout: InstallLayout
    restart_command: Sequence[str]
    ready_probe: ReadyProbe
    ready_timeout_s: float
    machine: str
    outbox_schema: int | None
    allow_downgrade: bool = False
    keep_versions: int = 3


@dataclass(frozen=True)
class ApplyResult:
    decision: VersionDecision
    version: str
    previous: str | None


def read_outbox_schema(path: Path) -> int | None:
    """The outbox file's schema version, read without changing the file; None if there is none."""
    if not path.exists():
        return None
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])
    finally:
        connection.close()


def read_state(layout: InstallLayout) -> dict[str, Any] | None:
    """Read the last update attempt from update-state.json; return None if there was none."""
    try:
        data = json.loads(layout.state_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return {"result": "unknown", "message": f"{layout.state_file} is unreadable: {error}"}
    return data if isinstance(data, dict) else None


def apply_release(release: VerifiedRelease, plan: UpdatePlan) -> ApplyResult:
    """Install `release`, switch to it and restart; roll back if it is not ready in time.

    Raises UpdateRejected before any change, UpdateRolledBack after restoring the previous
    version, UpdateFailed when even the rollback did not bring a version up.
    """
    manifest = release.manifest
    layout = plan.layout
    layout.versions.mkdir(parents=True, exist_ok=True)

    with _locked(layout):
        previous = layout.current_version()
        check_arch(manifest, plan.machine)
        decision = decide_version(previous, manifest.version, allow_downgrade=plan.allow_downgrade)
        check_outbox_schema(manifest, plan.outbox_schema)
        if decision is VersionDecision.SAME:
            log.info("release %s is already installed and current; nothing to do", manifest.version)
            return ApplyResult(decision, manifest.version, previous)

        target = _install_files(release, layout)
        _write_state(layout, "pending", previous, manifest.version, "restarting into the new version")
        _switch(layout, target)
        log.info("switched %s from %s to %s; restarting the service", layout.current, previous, manifest.version)

        problem = _restart_and_wait(plan, manifest.version)
        if problem is None:
            _write_state(layout, "installed", previous, manifest.version, f"{manifest.version} reported ready")
            _prune(layout, keep=plan.keep_versions, protect={manifest.version, previous})
            return ApplyResult(decision, manifest.version, previous)

        return _roll_back(plan, previous, manifest.version, problem)


def _roll_back(plan: UpdatePlan, previous: str | None, failed: str, problem: str) -> ApplyResult:
    layout = plan.layout
    log.error("version %s failed: %s; rolling back to %s", failed, problem, previous)
    if previous is None:
        message = f"version {failed} failed ({problem}) and no previous version is installed to roll back to"
        _write_state(layout, "failed", previous, failed, message)
        raise UpdateFailed(message + f"; fix the release and run update apply again (current -> {failed})")

    _switch(layout, layout.version_dir(previous))
    second = _restart_and_wait(plan, previous)
    if second is not None:
        message = (
            f"version {failed} failed ({problem}); rolled back to {previous}, but it did not report ready "
            f"either ({second})"
        )
        _write_state(layout, "failed", previous, failed, message)
        raise UpdateFailed(message + "; check `journalctl -u plantgate`")

    message = f"version {failed} failed ({problem}); rolled back to {previous}, which is running"
    _write_state(layout, "rolled-back", previous, failed, message)
    raise UpdateRolledBack(message)


def _restart_and_wait(plan: UpdatePlan, version: str) -> str | None:
    """Restart the service and wait until `version` is ready; return what went wrong, or None."""
    try:
        result = subprocess.run(
            list(plan.restart_command), capture_output=True, text=True, timeout=RESTART_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"restart command {' '.join(plan.restart_command)} failed: {error}"
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        return f"restart command {' '.join(plan.restart_command)} exited {result.returncode}" + (
            f": {detail[-1]}" if detail else ""
        )

    deadline = time.monotonic() + plan.ready_timeout_s
    while True:
        if plan.ready_probe(version):
            return None
        if time.monotonic() >= deadline:
            return f"not ready within {plan.ready_timeout_s:g} s"
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _install_files(release: VerifiedRelease, layout: InstallLayout) -> Path:
    """Copy binary and signed manifest into versions/<version>, atomically by rename."""
    manifest = release.manifest
    target = layout.version_dir(manifest.version)
    staging = layout.versions / f".{manifest.version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()

    binary = staging / BINARY_NAME
    shutil.copyfile(release.binary, binary)
    binary.chmod(0o755)
    # Check the copy, not only the source: a release folder may change between check and copy.
    check_binary(binary, manifest)
    (staging / MANIFEST_NAME).write_bytes(release.signed.raw)
    (staging / SIGNATURE_NAME).write_text(release.signed.signature)
    for path in (binary, staging / MANIFEST_NAME, staging / SIGNATURE_NAME):
        _fsync(path)

    # A folder of the same version left by an earlier attempt is replaced: only the staged
    # copy was checked against this signed manifest.
    if target.exists():
        if layout.current_version() == manifest.version:
            raise UpdateFailed(f"{target} is current and cannot be replaced while it runs")
        shutil.rmtree(target)
    staging.rename(target)
    _fsync(layout.versions)
    return target


def _switch(layout: InstallLayout, target: Path) -> None:
    link = layout.root / ".current.new"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(target.relative_to(layout.root))
    os.replace(link, layout.current)
    _fsync(layout.root)


def _prune(layout: InstallLayout, keep: int, protect: set[str | None]) -> None:
    versions = [p for p in layout.versions.iterdir() if p.is_dir() and not p.name.startswith(".")]
    versions.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for path in versions[keep:]:
        if path.name not in protect:
            log.info("removing old release %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _write_state(layout: InstallLayout, result: str, previous: str | None, offered: str, message: str) -> None:
    state = {
        "result": result,
        "from": previous,
        "to": offered,
        "running": layout.current_version(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "message": message,
    }
    temporary = layout.state_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    _fsync(temporary)
    os.replace(temporary, layout.state_file)


@contextlib.contextmanager
def _locked(layout: InstallLayout) -> Iterator[None]:
    """Hold an exclusive lock on the install folder, so a timer run and a manual run never interleave."""
    with (layout.root / ".update.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateRejected(
                f"another update is running in {layout.root} (it has locked .update.lock); wait for it to finish"
            ) from None
        yield


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def update_report(layout: InstallLayout) -> dict[str, Any]:
    """Build the `update` part of /status: the running install and the last update attempt.

    A failed or rolled-back attempt stays here until the next attempt replaces it, so an
    operator sees it even after the restart that undid it.
    """
    return {
        "install_dir": str(layout.root),
        "current": layout.current_version(),
        "last_attempt": read_state(layout),
    }
