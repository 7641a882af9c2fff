"""`plantgate outbox ...` run as a subprocess against a real outbox file, with and beside an open Outbox."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from outbox.records import Lane
from outbox.store import Outbox
from tests.outbox.conftest import make_record, make_records

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


def plantgate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def audit_lines(outbox_path: Path) -> list[dict]:
    audit = outbox_path.with_name(outbox_path.name + ".audit.log")
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines()]


async def outbox_with_dead_letters(path: Path) -> list[str]:
    """Fill an outbox with 5 telemetry records and 3 dead-lettered transactions; return their ids."""
    async with Outbox(path) as outbox:
        await outbox.append(make_records(5))
        transactions = make_records(3, lane=Lane.TRANSACTION, start=100)
        await outbox.append(transactions)
        batch = [stored for stored in await outbox.next_batch(100, 10**9) if stored.record.lane == Lane.TRANSACTION]
        await outbox.dead_letter([batch[0].seq, batch[1].seq], 422, "field 'qty' is not a number")
        await outbox.dead_letter([batch[2].seq], 400, "unknown plant")
    return [record.id for record in transactions]


async def test_stats_reports_depth_and_dead_letters(outbox_path: Path) -> None:
    await outbox_with_dead_letters(outbox_path)

    result = plantgate("outbox", "stats", "--json", "--outbox", str(outbox_path))

    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["lanes"]["telemetry"]["records"] == 5
    assert stats["dead_letters"] == 3
    assert stats["dead_letters_by_status"] == {"400": 1, "422": 2}
    assert stats["file_bytes"] > 0


async def test_list_and_show_dead_letters(outbox_path: Path) -> None:
    ids = await outbox_with_dead_letters(outbox_path)

    listed = plantgate("outbox", "list", "--status", "422", "--json", "--outbox", str(outbox_path))
    shown = plantgate("outbox", "show", ids[2], "--outbox", str(outbox_path))
    missing = plantgate("outbox", "show", "no-such-id", "--outbox", str(outbox_path))

    assert listed.returncode == 0, listed.stderr
    assert [entry["id"] for entry in json.loads(listed.stdout)] == ids[:2]
    assert shown.returncode == 0, shown.stderr
    entry = json.loads(shown.stdout)
    assert entry["state"] == "dead-lettered"
    assert entry["reason"] == "unknown plant"
    assert entry["payload"]["n"] == 102
    assert missing.returncode == 1
    assert "no-such-id not found" in missing.stderr


async def test_requeue_needs_confirmation(outbox_path: Path) -> None:
    ids = await outbox_with_dead_letters(outbox_path)

    result = plantgate("outbox", "requeue", ids[0], "--outbox", str(outbox_path))

    assert result.returncode == 1
    assert "--yes" in result.stderr
    assert audit_lines(outbox_path) == []
    with sqlite3.connect(outbox_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 3


async def test_requeue_beside_open_outbox_updates_its_counters(outbox_path: Path) -> None:
    ids = await outbox_with_dead_letters(outbox_path)
    async with Outbox(outbox_path, housekeeping_interval_s=3600) as outbox:
        result = plantgate("outbox", "requeue", ids[0], ids[1], "unknown-id", "--yes", "--outbox", str(outbox_path))
        await outbox.housekeep()
        stats = await outbox.stats()
        batch = await outbox.next_batch(2, 10**9)

    assert result.returncode == 1
    assert "requeued 2 record(s)" in result.stdout
    assert "not a dead letter: unknown-id" in result.stderr
    assert stats.depth["transaction"] == 2
    assert stats.dead_letters == 1
    assert [stored.record.id for stored in batch] == ids[:2]
    assert [stored.attempts for stored in batch] == [0, 0]
    (line,) = audit_lines(outbox_path)
    assert line["action"] == "requeue"
    assert line["ids"] == ids[:2]


async def test_export_writes_json_lines(outbox_path: Path, tmp_path: Path) -> None:
    await outbox_with_dead_letters(outbox_path)
    target = tmp_path / "dead.jsonl"

    result = plantgate("outbox", "export", str(target), "--outbox", str(outbox_path))

    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in target.read_text().splitlines()]
    assert [entry["status"] for entry in entries] == [422, 422, 400]
    assert entries[0]["payload"]["n"] == 100
    assert audit_lines(outbox_path) == []


async def test_purge_by_status_with_yes(outbox_path: Path) -> None:
    ids = await outbox_with_dead_letters(outbox_path)

    refused = plantgate("outbox", "purge", "--yes", "--outbox", str(outbox_path))
    result = plantgate("outbox", "purge", "--status", "422", "--yes", "--outbox", str(outbox_path))

    assert refused.returncode == 2
    assert "--all" in refused.stderr
    assert result.returncode == 0, result.stderr
    assert "purged 2" in result.stdout
    with sqlite3.connect(outbox_path) as connection:
        assert [row[0] for row in connection.execute("SELECT id FROM dead_letters")] == [ids[2]]
    (line,) = audit_lines(outbox_path)
    assert line["action"] == "purge"
    assert sorted(line["ids"]) == sorted(ids[:2])
    assert line["criteria"]["status"] == 422


async def test_confirmation_answer_on_terminal_is_read(outbox_path: Path) -> None:
    # Without a terminal the command never prompts, so "y" on stdin must not confirm.
    ids = await outbox_with_dead_letters(outbox_path)

    result = plantgate("outbox", "purge", ids[0], "--outbox", str(outbox_path), stdin="y\n")

    assert result.returncode == 1
    with sqlite3.connect(outbox_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 3


def test_missing_outbox_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.sqlite"

    result = plantgate("outbox", "stats", "--outbox", str(path))

    assert result.returncode == 1
    assert "not found" in result.stderr
    assert not path.exists()


async def test_outbox_path_from_config(tmp_path: Path) -> None:
    outbox_path = tmp_path / "data" / "outbox.sqlite"
    async with Outbox(outbox_path) as outbox:
        await outbox.append([make_record(number=1, lane=Lane.EVENT)])
    config = tmp_path / "plantgate.toml"
    config.write_text(
        '[agent]\nsite = "plant-1"\ngateway_id = "gw-1"\n'
        '[outbox]\npath = "data/outbox.sqlite"\n'
        '[central]\nurl = "http://127.0.0.1:9/ingest"\n'
    )

    result = plantgate("outbox", "stats", "--json", "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["lanes"]["event"]["records"] == 1
