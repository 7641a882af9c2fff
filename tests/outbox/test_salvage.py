"""Salvage: readable rows of a damaged outbox copied into the new one, without duplicates."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from outbox import admin
from outbox.records import Lane
from outbox.store import Outbox
from tests.outbox.conftest import make_records

REPO_ROOT = Path(__file__).resolve().parents[2]


def damage_pages(path: Path, first_page: int, pages: int, page_size: int = 4096) -> None:
    with path.open("r+b") as file:
        file.seek(first_page * page_size)
        file.write(b"\xa5" * (pages * page_size))


def salvage_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "outbox", "salvage", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ids_in(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute(f"SELECT id FROM {table}")]


async def damaged_outbox(path: Path) -> dict[str, list[str]]:
    """An outbox with 2000 telemetry records, 20 delivered and 5 dead-lettered transactions, then
    damaged in the middle and moved aside by a restart; return the ids by where they were."""
    telemetry = make_records(2000, payload_bytes=200)
    transactions = make_records(25, lane=Lane.TRANSACTION, start=5000)
    async with Outbox(path) as outbox:
        for start in range(0, 2000, 500):
            await outbox.append(telemetry[start : start + 500])
        await outbox.append(transactions)
        batch = await outbox.next_batch(25, 10**9)
        await outbox.acknowledge([stored.seq for stored in batch[:20]])
        await outbox.dead_letter([stored.seq for stored in batch[20:]], 422, "rejected")
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage_pages(path, first_page=60, pages=2)
    return {
        "telemetry": [record.id for record in telemetry],
        "delivered": [record.id for record in transactions[:20]],
        "dead": [record.id for record in transactions[20:]],
    }


async def test_salvage_recovers_readable_rows_once(outbox_path: Path) -> None:
    ids = await damaged_outbox(outbox_path)
    async with Outbox(outbox_path) as outbox:
        assert outbox.startup_incident is not None
        moved = Path(outbox.startup_incident.moved_to)
    before = digest(moved)

    first = await asyncio.to_thread(admin.salvage, moved, outbox_path, max_bytes=1024**3, telemetry_share=0.8)
    second = await asyncio.to_thread(admin.salvage, moved, outbox_path, max_bytes=1024**3, telemetry_share=0.8)

    recovered = ids_in(outbox_path, "records")
    assert len(recovered) == len(set(recovered))
    assert set(recovered) <= set(ids["telemetry"])
    assert 1800 <= len(recovered) < 2000
    assert first.records_added == len(recovered)
    assert first.unreadable_seqs["records"]
    assert len(first.unreadable_seqs["records"]) == 2000 - len(recovered)
    assert sorted(ids_in(outbox_path, "delivered")) == sorted(ids["delivered"])
    assert sorted(ids_in(outbox_path, "dead_letters")) == sorted(ids["dead"])
    assert second.records_added == 0
    assert second.records_already_held == first.records_added
    assert second.dead_letters_added == 0
    assert second.delivered_ids_added == 0
    assert digest(moved) == before


async def test_salvage_skips_ids_already_held(outbox_path: Path, tmp_path: Path) -> None:
    # The agent re-captured some records after the restart, before the operator ran salvage.
    ids = await damaged_outbox(outbox_path)
    async with Outbox(outbox_path) as outbox:
        moved = Path(outbox.startup_incident.moved_to)
        await outbox.append(make_records(100, payload_bytes=200))

    report = await asyncio.to_thread(admin.salvage, moved, outbox_path, max_bytes=1024**3, telemetry_share=0.8)

    recovered = ids_in(outbox_path, "records")
    assert len(recovered) == len(set(recovered))
    assert set(ids["telemetry"][:100]) <= set(recovered)
    assert report.records_already_held == 100


async def test_salvage_command_reports_and_audits(outbox_path: Path) -> None:
    await damaged_outbox(outbox_path)
    async with Outbox(outbox_path) as outbox:
        moved = Path(outbox.startup_incident.moved_to)

    live = salvage_command(str(outbox_path), "--yes", "--outbox", str(outbox_path))
    result = salvage_command(str(moved), "--yes", "--outbox", str(outbox_path))

    assert live.returncode == 2
    assert "live outbox" in live.stderr
    assert result.returncode == 0, result.stderr
    assert "records:" in result.stdout
    audit = outbox_path.with_name(outbox_path.name + ".audit.log").read_text()
    assert '"action":"salvage"' in audit
    assert str(moved) in audit
