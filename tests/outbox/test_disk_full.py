"""The outbox on a small filesystem of its own that fills up, then gets space back.

Needs permission to mount a tmpfs (root in a container with CAP_SYS_ADMIN); skipped otherwise.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.errors import OutboxUnavailable
from outbox.records import Lane
from outbox.store import Outbox
from tests.outbox.conftest import make_records

FILESYSTEM_BYTES = 4 * 1024 * 1024


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_with_ballast(folder: Path) -> Path:
    """Write a file until the filesystem is full, and return it."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


async def test_disk_full_sheds_telemetry_refuses_transactions_and_recovers(small_filesystem: Path) -> None:
    path = small_filesystem / "outbox.sqlite"
    async with Outbox(path, housekeeping_interval_s=3600) as outbox:
        await outbox.append(make_records(100, payload_bytes=200))
        await outbox.append(make_records(5, lane=Lane.TRANSACTION, start=1000))
        ballast = fill_with_ballast(small_filesystem)
        assert free_bytes(small_filesystem) < 4096

        # Enough telemetry to need new pages in the write-ahead log.
        shed_flags = []
        for start in range(0, 3000, 500):
            shed_flags += await outbox.append(make_records(500, start=10_000 + start, payload_bytes=200))
        with pytest.raises(OutboxUnavailable, match="disk-full"):
            await outbox.append(make_records(1, lane=Lane.TRANSACTION, start=2000))
        during = await outbox.stats()
        writer_alive = outbox.writer_alive

        ballast.unlink()
        stored = await outbox.append(make_records(1, lane=Lane.TRANSACTION, start=2000))
        more = await outbox.append(make_records(10, start=50_000))
        after = await outbox.stats()

    assert writer_alive
    assert all(shed_flags)
    assert during.condition == "disk-full"
    assert during.failed_commits >= 1
    assert during.shed_on_storage_error > 0
    assert during.shed_records == during.shed_on_storage_error
    assert during.depth == {
        "transaction": 5,
        "event": 0,
        "telemetry": 100 + 3000 - during.shed_on_storage_error,
    }
    assert stored == [True]
    assert more == [True] * 10
    assert after.condition is None
    assert after.depth["transaction"] == 6
    assert integrity(path) == "ok"

    # The shed count taken while no commit was possible was written once space returned.
    async with Outbox(path) as reopened:
        reopened_stats = await reopened.stats()
    assert reopened_stats.shed_on_storage_error == during.shed_on_storage_error
    assert reopened_stats.depth == after.depth


async def test_new_outbox_on_full_disk_fails_clearly(small_filesystem: Path) -> None:
    fill_with_ballast(small_filesystem)
    path = small_filesystem / f"outbox-{uuid.uuid4().hex}.sqlite"

    with pytest.raises(OutboxUnavailable, match="free space"):
        async with Outbox(path):
            pass
