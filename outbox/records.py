"""The record: one captured value, event or transaction, as stored in the outbox and forwarded.

A record's id is fixed at capture and never changes: it is stored with the record and sent
unchanged on every retry and after every restart, so the receiver can drop duplicates.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

# Namespace for the name-based (version 5) UUIDs of records. Changing it would change every
# deterministic id, so it is fixed for the life of the product.
RECORD_ID_NAMESPACE = uuid.UUID("6f1c2a52-7d0e-5b8e-9c61-3f4a0d2b9e11")

# Estimated per-row cost of the columns that are not the payload, in bytes. Used by the size
# budget, which counts record bytes rather than file pages.
ROW_OVERHEAD_BYTES = 96

# A record captured before this instant was stamped by a gateway whose clock was not yet set
# (a real-time clock reset to 1970, or no NTP yet at boot). Such records are stored and sent
# with `captured_before_clock_set` true, so the receiver does not take the time as real.
CLOCK_SET_AFTER = datetime(2020, 1, 1, tzinfo=UTC)


class Lane(IntEnum):
    """Delivery lane. A lower value is delivered first."""

    TRANSACTION = 0
    EVENT = 1
    TELEMETRY = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class Quality:
    """Quality of a value, reduced to the three classes that OPC UA status codes share
    (OPC UA Part 4, 7.39: the top two bits of a StatusCode). The full code travels in the payload."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


def record_id(source: str, *parts: object) -> str:
    """Derive a deterministic record id from the source name and the parts that identify one reading.

    The same source and parts always give the same id, so a value or transaction captured twice
    (for example re-read after a crash) is recognised as one record.
    """
    key = "\x1f".join([source, *(str(part) for part in parts)])
    return str(uuid.uuid5(RECORD_ID_NAMESPACE, key))


def random_record_id() -> str:
    """A fresh id, for inputs that carry nothing stable to derive one from."""
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """Format a timestamp as RFC 3339 in UTC with microseconds, the form stored and sent."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def json_safe(value: Any) -> Any:
    """Replace the floats that JSON cannot carry (NaN, infinities) by their names as strings.

    Devices do report NaN (a float32 register with an unset sensor, for example), and the
    value must still be forwarded as read rather than make the record fail.
    """
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def encode_payload(payload: dict[str, Any]) -> str:
    """Serialise a payload to compact JSON, replacing NaN and infinities (see `json_safe`)."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Record:
    """One captured item.

    `kind` names what produced the record within its lane (for example `opcua.datachange`,
    `modbus.poll`, `mes.goods_movement`); it becomes part of the CloudEvents `type`.
    `source_time` is the time the device or MES gave the value, or None when it gave none.
    `payload` must be JSON-serialisable.
    """

    id: str
    source: str
    lane: Lane
    kind: str
    subject: str
    source_time: datetime | None
    captured_at: datetime
    quality: str
    payload: dict[str, Any]
    payload_json: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.payload_json:
            object.__setattr__(self, "payload_json", encode_payload(self.payload))

    @property
    def captured_before_clock_set(self) -> bool:
        """Whether `captured_at` is before CLOCK_SET_AFTER, so the gateway clock was wrong."""
        captured = self.captured_at if self.captured_at.tzinfo else self.captured_at.replace(tzinfo=UTC)
        return captured < CLOCK_SET_AFTER

    @property
    def size(self) -> int:
        """Bytes this record counts against the outbox budget."""
        return (
            len(self.payload_json.encode())
            + len(self.id)
            + len(self.source)
            + len(self.kind)
            + len(self.subject)
            + ROW_OVERHEAD_BYTES
        )


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record read back from the outbox, with its position in the store."""

    seq: int
    record: Record
    size: int
    attempts: int
