"""The outbox's counters: what it holds per lane, what it shed, and the snapshot `stats()` returns.

The writer keeps these in memory so the budget decision needs no query; they are loaded from
the file at open and reloaded whenever another process (an operator command) changes the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from outbox.records import Lane

# Names of counters kept in the `counters` table. Shed counts per source are named
# SHED_RECORDS + ":" + the source name.
SHED_RECORDS = "shed_records"
SHED_BYTES = "shed_bytes"
SHED_ON_STORAGE_ERROR = "shed_on_storage_error"
CLOCK_UNSET_RECORDS = "clock_unset_records"


@dataclass
class LaneTally:
    count: int = 0
    bytes: int = 0


@dataclass
class Counters:
    lanes: dict[Lane, LaneTally] = field(default_factory=lambda: {lane: LaneTally() for lane in Lane})
    dead_letters: int = 0
    named: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_used(self) -> int:
        return sum(tally.bytes for tally in self.lanes.values())

    @property
    def depth(self) -> int:
        return sum(tally.count for tally in self.lanes.values())

    def add(self, name: str, amount: int) -> None:
        self.named[name] = self.named.get(name, 0) + amount

    def count_shed(self, source: str, size: int, sign: int = 1) -> None:
        """Count one shed record of `size` bytes from `source`; `sign=-1` takes one back."""
        self.add(SHED_RECORDS, sign)
        self.add(SHED_BYTES, sign * size)
        self.add(f"{SHED_RECORDS}:{source}", sign)

    def merge(self, other: Counters) -> None:
        for lane, tally in other.lanes.items():
            self.lanes[lane].count += tally.count
            self.lanes[lane].bytes += tally.bytes
        self.dead_letters += other.dead_letters
        for name, value in other.named.items():
            self.add(name, value)

    def shed_by_source(self) -> dict[str, int]:
        prefix = SHED_RECORDS + ":"
        return {name.removeprefix(prefix): value for name, value in self.named.items() if name.startswith(prefix)}


@dataclass
class OutboxStats:
    """A snapshot of the outbox for /status, /metrics and `plantgate outbox stats`.

    `condition` is None while commits succeed, else the failure kind ("disk-full", "busy",
    "storage-error", "corrupt") until the next successful commit. `startup_incident` describes
    a damaged file moved aside at start. `wal_checkpoint_blocked` is True while another
    connection's open transaction keeps the write-ahead log from being reset.
    """

    depth: dict[str, int]
    bytes_by_lane: dict[str, int]
    oldest_captured_at: dict[str, str | None]
    bytes_used: int
    max_bytes: int
    dead_letters: int
    shed_records: int
    shed_bytes: int
    shed_by_source: dict[str, int]
    file_bytes: int
    wal_bytes: int
    last_error: str | None = None
    condition: str | None = None
    failed_commits: int = 0
    busy_retries: int = 0
    shed_on_storage_error: int = 0
    clock_unset_records: int = 0
    checkpoints: int = 0
    wal_checkpoint_blocked: bool = False
    startup_incident: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
