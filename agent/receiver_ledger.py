"""The stand-in receiver's ledger: a SQLite file that stores each CloudEvent once by (`source`, `id`).

The ledger is what end-to-end tests check "nothing lost, nothing doubled" against, so it also
counts what would otherwise hide a fault: duplicate events, requests, repeated batch keys.
Counters live in the file, so a receiver restarted on the same file keeps its totals.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    arrival INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT,
    time TEXT,
    received_at TEXT NOT NULL,
    event TEXT NOT NULL,
    UNIQUE (source, id)
);
CREATE TABLE IF NOT EXISTS batch_keys (
    key TEXT PRIMARY KEY,
    requests INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

COUNTER_NAMES = (
    "requests",
    "accepted_requests",
    "duplicates",
    "invalid_requests",
    "unauthorized_requests",
    "faulted_requests",
    "gzip_requests",
    "repeated_batch_keys",
)


@dataclass(frozen=True)
class ReceiverStats:
    """Totals of a ledger. `requests` counts every POST to the events path, faulted ones included."""

    unique_events: int
    duplicates: int
    requests: int
    accepted_requests: int
    invalid_requests: int
    unauthorized_requests: int
    faulted_requests: int
    gzip_requests: int
    repeated_batch_keys: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One stored event; `arrival` numbers events in the order the receiver first stored them."""

    arrival: int
    source: str
    id: str
    type: str
    subject: str | None
    time: str | None
    received_at: str
    event: dict[str, Any]

    @property
    def data(self) -> Any:
        return self.event.get("data")


class Ledger:
    """The ledger file. Calls are synchronous and short; the receiver calls them from its handlers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        # The stand-in only has to survive its own crash, not a power cut, so NORMAL is enough.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def store(self, events: Sequence[dict[str, Any]], received_at: str, batch_key: str | None) -> tuple[int, int]:
        """Store the events not held yet, in one transaction, and return (stored, duplicates).

        Counts the request as accepted, its duplicates, and a batch key seen before.
        """
        db = self._require()
        stored = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for event in events:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (source, id, type, subject, time, received_at, event)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        event["source"],
                        event["id"],
                        event["type"],
                        event.get("subject"),
                        event.get("time"),
                        received_at,
                        json.dumps(event, separators=(",", ":"), ensure_ascii=False),
                    ),
                )
                stored += cursor.rowcount
            duplicates = len(events) - stored
            self._add(db, "accepted_requests", 1)
            self._add(db, "duplicates", duplicates)
            if batch_key:
                self._record_batch_key(db, batch_key)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return stored, duplicates

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one of COUNTER_NAMES."""
        if name not in COUNTER_NAMES:
            raise ValueError(f"unknown receiver counter {name!r}; expected one of {', '.join(COUNTER_NAMES)}")
        self._add(self._require(), name, amount)

    def stats(self) -> ReceiverStats:
        db = self._require()
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        (unique_events,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
        return ReceiverStats(
            unique_events=unique_events,
            **{name: counters.get(name, 0) for name in COUNTER_NAMES},
        )

    def events(self, source: str | None = None) -> list[LedgerEvent]:
        """Return the stored events in arrival order, all of them or those of one CloudEvents `source`."""
        db = self._require()
        query = "SELECT arrival, source, id, type, subject, time, received_at, event FROM events"
        if source is None:
            rows = db.execute(f"{query} ORDER BY arrival").fetchall()
        else:
            rows = db.execute(f"{query} WHERE source = ? ORDER BY arrival", (source,)).fetchall()
        return [
            LedgerEvent(
                arrival=arrival,
                source=source,
                id=event_id,
                type=event_type,
                subject=subject,
                time=event_time,
                received_at=received_at,
                event=json.loads(event),
            )
            for arrival, source, event_id, event_type, subject, event_time, received_at, event in rows
        ]

    def sources(self) -> list[str]:
        """Return the distinct event sources, in order of their first event."""
        rows = self._require().execute("SELECT source FROM events GROUP BY source ORDER BY MIN(arrival)")
        return [row[0] for row in rows]

    def _record_batch_key(self, db: sqlite3.Connection, key: str) -> None:
        row = db.execute(
            "INSERT INTO batch_keys (key, requests) VALUES (?, 1)"
            " ON CONFLICT (key) DO UPDATE SET requests = requests + 1 RETURNING requests",
            (key,),
        ).fetchone()
        if row[0] > 1:
            self._add(db, "repeated_batch_keys", 1)

    @staticmethod
    def _add(db: sqlite3.Connection, name: str, amount: int) -> None:
        if amount:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, amount),
            )

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"receiver ledger {self.path} is closed")
        return self._db
