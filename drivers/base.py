"""The Source interface that every driver implements, and the status each one reports.

A source captures values from one server, device or MES input, turns them into records and
hands them to a `RecordSink` (the outbox). It runs until cancelled, reconnecting by itself
with backoff; device faults never end it. It logs a change of connection state once, not
every retry.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from outbox.records import Record, format_time


class SourceState(StrEnum):
    STARTING = "starting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"


class RecordSink(Protocol):
    async def append(self, records: Sequence[Record]) -> list[bool]:
        """Store records durably. Returns, per record, True if stored and False if its id was
        already held. Raises `outbox.errors.OutboxFull` or `OutboxUnavailable`."""
        ...

    async def lookup(self, record_id: str) -> str | None:
        """Return where a record is: 'stored', 'forwarded', 'dead-lettered', or None if unknown."""
        ...


@dataclass
class SourceStatus:
    """State of one source, as `/status` and `/metrics` show it. The source updates it in place."""

    name: str
    type: str
    state: SourceState = SourceState.STARTING
    state_since: datetime | None = None
    last_value_at: datetime | None = None
    last_error: str | None = None
    records_captured: int = 0
    connects: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "state": self.state.value,
            "state_since": format_time(self.state_since) if self.state_since else None,
            "last_value_at": format_time(self.last_value_at) if self.last_value_at else None,
            "last_error": self.last_error,
            "records_captured": self.records_captured,
            "connects": self.connects,
            **self.details,
        }


class Source(abc.ABC):
    """One configured source. Subclasses implement `run`."""

    type: str = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = SourceStatus(name=name, type=self.type)

    @abc.abstractmethod
    async def run(self, sink: RecordSink) -> None:
        """Capture until cancelled. Never returns or raises because a device is unreachable."""

    async def sample(self) -> list[Record]:
        """Read every configured item once and return the records, without storing them.

        Used by `plantgate sample` as a dry run. Raises `SourceUnavailable` if it cannot connect.
        """
        raise NotImplementedError(f"source type {self.type!r} does not support sampling")


class SourceUnavailable(Exception):
    """The server or device could not be reached; the caller backs off and retries."""
