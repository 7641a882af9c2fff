"""Records captured before the gateway clock was set are flagged on the wire, not sent as if real."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from outbox.delivery import encode_event
from outbox.records import Lane, Quality, Record, StoredRecord

SET = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
UNSET = datetime(1970, 1, 1, 0, 5, tzinfo=UTC)


def event_for(captured_at: datetime, source_time: datetime | None) -> dict:
    record = Record(
        id="id-1",
        source="press",
        lane=Lane.TELEMETRY,
        kind="test.value",
        subject="force",
        source_time=source_time,
        captured_at=captured_at,
        quality=Quality.GOOD,
        payload={"value": 1},
    )
    return json.loads(
        encode_event(StoredRecord(seq=1, record=record, size=record.size, attempts=0), site="p", gateway_id="g")
    )


@pytest.mark.parametrize(
    ("captured_at", "source_time", "clockunset", "sourceclockunset"),
    [
        (SET, SET, None, None),
        (UNSET, None, True, None),
        (UNSET, UNSET, True, True),
        (SET, UNSET, None, True),
    ],
)
def test_event_flags_times_before_clock_set(captured_at, source_time, clockunset, sourceclockunset) -> None:
    event = event_for(captured_at, source_time)

    assert event.get("clockunset") is clockunset
    assert event.get("sourceclockunset") is sourceclockunset
    assert event["capturedtime"].startswith(captured_at.strftime("%Y-%m-%d"))
