"""The outbox under a busy file, a long reader, and changes made by another process."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from outbox.errors import OutboxUnavailable
from outbox.records import Lane
from outbox.store import Outbox
from tests.outbox.conftest import make_record, make_records


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection that holds the write lock until it is rolled back."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


async def test_busy_file_is_retried_until_the_lock_is_released(outbox_path: Path) -> None:
    async with Outbox(outbox_path, busy_timeout_s=0.05, busy_retry_s=30) as outbox:
        holder = hold_write_lock(outbox_path)
        asyncio.get_running_loop().call_later(0.5, holder.rollback)

        flags = await outbox.append([make_record(number=1, lane=Lane.TRANSACTION)])

        assert flags == [True]
        assert outbox.busy_retries >= 1
        assert outbox.failed_commits == 0
        holder.close()
    with sqlite3.connect(outbox_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1


async def test_busy_past_bound_refuses_transactions_and_sheds_telemetry(outbox_path: Path) -> None:
    async with Outbox(outbox_path, busy_timeout_s=0.05, busy_retry_s=0.3) as outbox:
        holder = hold_write_lock(outbox_path)
        try:
            with pytest.raises(OutboxUnavailable, match="busy"):
                await outbox.append([make_record(number=1, lane=Lane.TRANSACTION)])
            shed = await outbox.append(make_records(3, source="press-7"))
            during = await outbox.stats()
        finally:
            holder.rollback()
            holder.close()

        stored = await outbox.append([make_record(number=1, lane=Lane.TRANSACTION)])
        after = await outbox.stats()

    assert shed == [True, True, True]
    assert during.condition == "busy"
    assert during.shed_on_storage_error == 3
    assert during.shed_by_source == {"press-7": 3}
    assert "locked" in (during.last_error or "")
    assert stored == [True]
    assert after.condition is None
    assert after.depth["transaction"] == 1

    # The shed count made while the file was locked was written with the next commit.
    async with Outbox(outbox_path) as reopened:
        assert (await reopened.stats()).shed_on_storage_error == 3


async def test_long_reader_blocks_wal_reset_until_it_ends(outbox_path: Path) -> None:
    limit = 256 * 1024
    async with Outbox(outbox_path, wal_max_bytes=limit, housekeeping_interval_s=3600) as outbox:
        await outbox.append([make_record(number=0)])
        reader = sqlite3.connect(outbox_path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM records").fetchone()

        for start in range(0, 2000, 100):
            await outbox.append(make_records(100, start=start + 1, payload_bytes=500))
        await outbox.housekeep()
        blocked = await outbox.stats()

        reader.execute("COMMIT")
        reader.close()
        await outbox.housekeep()
        released = await outbox.stats()

    assert blocked.wal_bytes > limit
    assert blocked.wal_checkpoint_blocked is True
    assert released.wal_checkpoint_blocked is False
    assert released.wal_bytes <= limit
    assert released.checkpoints >= 2
    assert released.file_bytes > 0


async def test_short_reads_do_not_let_wal_grow(outbox_path: Path) -> None:
    limit = 256 * 1024
    async with Outbox(outbox_path, wal_max_bytes=limit, housekeeping_interval_s=3600) as outbox:
        reader = sqlite3.connect(outbox_path, isolation_level=None)
        largest = 0
        for start in range(0, 3000, 100):
            await outbox.append(make_records(100, start=start, payload_bytes=500))
            # Each read is its own transaction, as `plantgate outbox export` reads page by page.
            reader.execute("SELECT COUNT(*) FROM records").fetchone()
            await outbox.housekeep()
            stats = await outbox.stats()
            largest = max(largest, stats.wal_bytes)
            assert not stats.wal_checkpoint_blocked
        reader.close()

    # Between two housekeeping runs the log grows by at most one round of appends (about 70 KiB).
    assert largest <= limit + 200 * 1024


async def test_counters_reload_after_another_process_changes_file(outbox_path: Path) -> None:
    async with Outbox(outbox_path, housekeeping_interval_s=3600) as outbox:
        await outbox.append(make_records(10, payload_bytes=100))
        with sqlite3.connect(outbox_path) as other:
            other.execute("DELETE FROM records WHERE seq <= 4")

        await outbox.housekeep()
        reloaded = await outbox.stats()
        await outbox.append([make_record(number=50, lane=Lane.EVENT)])
        after_append = await outbox.stats()

    assert reloaded.depth["telemetry"] == 6
    assert after_append.depth == {"transaction": 0, "event": 1, "telemetry": 6}


async def test_counters_reload_before_next_commit_without_housekeeping(outbox_path: Path) -> None:
    one = make_record(payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=6 * one, telemetry_share=1.0, housekeeping_interval_s=3600) as outbox:
        await outbox.append(make_records(5, payload_bytes=900))
        with sqlite3.connect(outbox_path) as other:
            other.execute("DELETE FROM records")

        # Stale counters would make this append shed five records that are no longer there.
        await outbox.append(make_records(5, start=100, payload_bytes=900))
        stats = await outbox.stats()

    assert stats.shed_records == 0
    assert stats.depth["telemetry"] == 5
