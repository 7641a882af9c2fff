"""A damaged or unreadable outbox at start: moved aside and replaced, or left alone with a clear error."""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

import pytest

from outbox.errors import OutboxUnavailable
from outbox.store import Outbox
from tests.outbox.conftest import make_records

MOVED_NAME = re.compile(r"^outbox\.sqlite\.corrupt-\d{8}T\d{6}Z$")


def read(path: Path | str) -> bytes:
    return Path(path).read_bytes()


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def names_in(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def damage_pages(path: Path, first_page: int, pages: int, page_size: int = 4096) -> None:
    with path.open("r+b") as file:
        file.seek(first_page * page_size)
        file.write(b"\xa5" * (pages * page_size))


async def fill_outbox(path: Path, count: int) -> None:
    async with Outbox(path) as outbox:
        for start in range(0, count, 500):
            await outbox.append(make_records(500, start=start, payload_bytes=200))
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def test_file_that_is_not_a_database_is_moved_aside(outbox_path: Path, caplog) -> None:
    write(outbox_path, b"this is not an SQLite file" * 200)

    with caplog.at_level(logging.ERROR, logger="outbox.store"):
        async with Outbox(outbox_path) as outbox:
            flags = await outbox.append(make_records(2))
            stats = await outbox.stats()

    moved = [outbox_path.parent / name for name in names_in(outbox_path.parent) if MOVED_NAME.match(name)]
    assert len(moved) == 1
    assert read(moved[0]).startswith(b"this is not an SQLite file")
    assert flags == [True, True]
    assert stats.depth["telemetry"] == 2
    assert stats.startup_incident is not None
    assert stats.startup_incident["moved_to"] == str(moved[0])
    assert "plantgate outbox salvage" in caplog.text
    assert str(moved[0]) in caplog.text


async def test_damaged_pages_are_found_and_file_moved_aside(outbox_path: Path) -> None:
    await fill_outbox(outbox_path, 2000)
    damage_pages(outbox_path, first_page=20, pages=3)

    async with Outbox(outbox_path) as outbox:
        incident = outbox.startup_incident
        depth = outbox.depth()

    assert incident is not None
    assert "quick_check" in incident.error or "malformed" in incident.error
    assert depth == 0
    assert Path(incident.moved_to).name in names_in(outbox_path.parent)
    with sqlite3.connect(outbox_path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_wal_moves_with_the_damaged_file(outbox_path: Path) -> None:
    await fill_outbox(outbox_path, 500)
    wal = outbox_path.with_name(outbox_path.name + "-wal")
    wal.write_bytes(b"wal bytes")
    damage_pages(outbox_path, first_page=0, pages=1)

    async with Outbox(outbox_path) as outbox:
        incident = outbox.startup_incident

    assert incident is not None
    assert read(incident.moved_to + "-wal") == b"wal bytes"


async def test_unopenable_path_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.mkdir()

    with pytest.raises(OutboxUnavailable, match="left in place"):
        async with Outbox(path):
            pass

    assert path.is_dir()
    assert names_in(tmp_path) == ["outbox.sqlite"]


async def test_without_startup_checks_damage_is_not_moved(outbox_path: Path) -> None:
    write(outbox_path, b"garbage" * 1000)

    with pytest.raises(OutboxUnavailable, match="could not be opened"):
        async with Outbox(outbox_path, startup_checks=False):
            pass

    assert read(outbox_path) == b"garbage" * 1000
