"""The outbox across upgrades and downgrades: a newer binary migrates forward, an older one refuses."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from outbox import schema
from outbox.errors import SchemaTooNew
from outbox.records import Lane, Record, record_id
from outbox.store import Outbox
from tests.conftest import REPO_ROOT, free_port, plantgate_command

# What a later release's migration would look like: it records its first release as the
# module docstring of outbox/schema.py requires.
NEXT_MIGRATION = """
CREATE TABLE IF NOT EXISTS schema_releases (version INTEGER PRIMARY KEY, first_release TEXT NOT NULL);
INSERT OR REPLACE INTO schema_releases (version, first_release) VALUES ({version}, '9.0.0');
ALTER TABLE records ADD COLUMN trace TEXT;
"""


def a_record(n: int) -> Record:
    now = datetime.now(UTC)
    return Record(
        id=record_id("press-1", "cycle", n),
        source="press-1",
        lane=Lane.EVENT,
        kind="test.cycle",
        subject="press-1/cycle",
        source_time=now,
        captured_at=now,
        quality="good",
        payload={"n": n},
    )


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_newer_file(path: Path, *, record_release: bool) -> int:
    """An outbox as a newer plantgate leaves it: the next schema version, and maybe its release."""
    newer = schema.SCHEMA_VERSION + 1
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    schema.migrate(connection, str(path))
    if record_release:
        for statement in NEXT_MIGRATION.format(version=newer).strip().splitlines():
            connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {newer}")
    connection.close()
    return newer


async def test_newer_binary_migrates_older_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await outbox.append([a_record(1), a_record(2)])

    newer = schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, NEXT_MIGRATION.format(version=newer)])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", newer)

    async with Outbox(path) as outbox:
        batch = await outbox.next_batch(10, 1_000_000)
    assert [stored.record.id for stored in batch] == [a_record(1).id, a_record(2).id]

    connection = sqlite3.connect(path)
    assert schema.read_version(connection) == newer
    assert schema.release_for(connection, newer) == "9.0.0"
    connection.close()


async def test_older_binary_refuses_newer_outbox_and_names_release(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    newer = make_newer_file(path, record_release=True)
    before = file_digest(path)

    with pytest.raises(SchemaTooNew) as caught:
        async with Outbox(path):
            pass

    message = str(caught.value)
    assert f"has schema version {newer}" in message
    assert f"supports up to version {schema.SCHEMA_VERSION}" in message
    assert "Run plantgate 9.0.0 or newer" in message
    assert "left unchanged" in message
    assert file_digest(path) == before


async def test_refusal_without_recorded_release_names_schema(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    newer = make_newer_file(path, record_release=False)

    with pytest.raises(SchemaTooNew, match=f"Run a plantgate release with outbox schema {newer}"):
        async with Outbox(path):
            pass


def test_run_refuses_newer_outbox_with_message(tmp_path: Path) -> None:
    make_newer_file(tmp_path / "outbox.sqlite", record_release=True)
    config = tmp_path / "plantgate.toml"
    config.write_text(
        f"""
[agent]
site = "test"
gateway_id = "gw-1"

[central]
url = "http://127.0.0.1:{free_port()}/ingest"

[outbox]
path = "outbox.sqlite"

[health]
port = 0
"""
    )

    result = subprocess.run(
        plantgate_command("run", "--config", str(config)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Run plantgate 9.0.0 or newer" in output
