"""Shared helpers for the outbox tests: records of a given lane and size, and an open outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from outbox.records import Lane, Quality, Record, record_id
from outbox.store import Outbox

BASE_TIME = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)


def make_record(
    source: str = "press-1",
    number: int = 0,
    lane: Lane = Lane.TELEMETRY,
    payload_bytes: int = 10,
    captured_at: datetime | None = None,
) -> Record:
    """A record with an id made from `source`, `lane` and `number`, and about `payload_bytes` of payload."""
    return Record(
        id=record_id(source, lane.label, number),
        source=source,
        lane=lane,
        kind="test.record",
        subject=f"item-{number}",
        source_time=None,
        captured_at=captured_at or BASE_TIME + timedelta(seconds=number),
        quality=Quality.GOOD,
        payload={"n": number, "pad": "x" * payload_bytes},
    )


def make_records(count: int, start: int = 0, **kwargs: object) -> list[Record]:
    return [make_record(number=start + index, **kwargs) for index in range(count)]  # type: ignore[arg-type]


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
async def outbox(outbox_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(outbox_path) as opened:
        yield opened
