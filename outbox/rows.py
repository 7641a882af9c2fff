"""Conversion between records and rows of the outbox tables, shared by the store and the operator tools."""

from __future__ import annotations

import json
from typing import Any

from outbox.records import Lane, Record, StoredRecord, format_time, parse_time

# The columns `records` and `dead_letters` share, in the order `stored_from_row` reads them.
RECORD_COLUMNS = "seq, id, lane, source, kind, subject, source_time, captured_at, quality, payload, size, attempts"
INSERT_RECORD = (
    "INSERT INTO records (id, lane, source, kind, subject, source_time, captured_at, quality,"
    " payload, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def row_for(record: Record) -> tuple[Any, ...]:
    """Return the values of INSERT_RECORD for `record`."""
    return (
        record.id,
        int(record.lane),
        record.source,
        record.kind,
        record.subject,
        format_time(record.source_time) if record.source_time else None,
        format_time(record.captured_at),
        record.quality,
        record.payload_json,
        record.size,
    )


def stored_from_row(row: Any) -> StoredRecord:
    """Build a StoredRecord from the RECORD_COLUMNS of one row."""
    (
        seq,
        record_id,
        lane,
        source,
        kind,
        subject,
        source_time,
        captured_at,
        quality,
        payload,
        size,
        attempts,
    ) = row

    record = Record(
        id=record_id,
        source=source,
        lane=Lane(lane),
        kind=kind,
        subject=subject,
        source_time=parse_time(source_time) if source_time else None,
        captured_at=parse_time(captured_at),
        quality=quality,
        payload=json.loads(payload),
        payload_json=payload,
    )
    return StoredRecord(seq=seq, record=record, size=size, attempts=attempts)
