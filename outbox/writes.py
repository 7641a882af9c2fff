"""The body of one outbox transaction, run in the writer's worker thread: appends with the budget,
acknowledgements, dead letters, pruning, and the housekeeping of the write-ahead log.

`WriteTransactions` is a base class of `Outbox`; it uses the state that `Outbox.__init__` sets up
and is never used on its own.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from outbox.budget import Budget, plan_append
from outbox.clock import Clock
from outbox.counters import (
    CLOCK_UNSET_RECORDS,
    Counters,
    LaneTally,
)
from outbox.errors import OutboxError, OutboxFull
from outbox.ops import _Acknowledge, _Append, _CountAttempt, _DeadLetter, _Op
from outbox.records import Lane, Record, format_time
from outbox.rows import INSERT_RECORD, RECORD_COLUMNS, row_for
from outbox.storage_errors import Failure, classify

log = logging.getLogger(__name__)

# SQLite allows 32,766 host parameters per statement since 3.32; stay well below, even in the
# duplicate check, which binds each chunk three times (one per table).
IN_CHUNK = 500
PRUNE_INTERVAL_S = 3600.0


class WriteTransactions:
    """The writer's transaction steps, as a base class of `Outbox`."""

    path: Path
    budget: Budget
    clock: Clock
    delivered_retention: timedelta
    busy_timeout_s: float
    wal_max_bytes: int
    checkpoints: int
    wal_checkpoint_blocked: bool
    _counters: Counters
    _unsaved: Counters
    _clock_warned: set[str]
    _data_version: int
    _in_flight: dict[int, tuple[str, int]]
    _writer: sqlite3.Connection | None
    _last_prune: float
    _require: Callable[[Any], Any]

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def _run_transaction(self, ops: list[_Op]) -> tuple[list[Any], Counters]:
        """Apply `ops` in one transaction, in the calling worker thread; return each op's result
        and the counter changes to merge once the commit is done."""
        db = self._require(self._writer)
        pending = Counters(lanes={lane: LaneTally() for lane in Lane})
        results: list[Any] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            self._reload_if_changed(db)
            seen: set[str] = set()
            for op in ops:
                if isinstance(op, _Append):
                    results.append(self._apply_append(db, op, seen, pending))
                elif isinstance(op, _Acknowledge):
                    self._apply_acknowledge(db, op.seqs, pending)
                    results.append(None)
                elif isinstance(op, _DeadLetter):
                    self._apply_dead_letter(db, op, pending)
                    results.append(None)
                elif isinstance(op, _CountAttempt):
                    _execute_chunked(db, "UPDATE records SET attempts = attempts + 1 WHERE seq IN ({})", op.seqs)
                    results.append(None)
            self._maybe_prune(db)
            deltas = dict(pending.named)
            for name, value in self._unsaved.named.items():
                deltas[name] = deltas.get(name, 0) + value
            _write_counters(db, deltas)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return results, pending

    def _apply_append(
        self, db: sqlite3.Connection, op: _Append, seen: set[str], pending: Counters
    ) -> list[bool] | OutboxError:
        held = _existing_ids(db, [record.id for record in op.records])
        fresh: list[Record] = []
        stored_flags: list[bool] = []
        claimed: set[str] = set()
        for record in op.records:
            is_new = record.id not in held and record.id not in seen and record.id not in claimed
            stored_flags.append(is_new)
            if is_new:
                claimed.add(record.id)
                fresh.append(record)

        used = {lane: self._counters.lanes[lane].bytes + pending.lanes[lane].bytes for lane in Lane}
        plan = plan_append(self.budget, used, fresh)
        if plan.error is not None:
            # Claim no ids: a later call in this group may carry the same records and fit.
            return OutboxFull(plan.error)
        seen.update(claimed)

        if plan.shed_stored_bytes > 0:
            self._shed_stored(db, plan.shed_stored_bytes, pending)
        for record in plan.shed_incoming:
            pending.count_shed(record.source, record.size)

        shed_ids = plan.shed_incoming_ids
        keep = [record for record in fresh if record.id not in shed_ids]
        db.executemany(INSERT_RECORD, [row_for(record) for record in keep])
        op.inserted = keep
        for record in keep:
            tally = pending.lanes[record.lane]
            tally.count += 1
            tally.bytes += record.size
            if record.captured_before_clock_set:
                self._note_clock_unset(record, pending)
        return stored_flags

    def _note_clock_unset(self, record: Record, pending: Counters) -> None:
        pending.add(CLOCK_UNSET_RECORDS, 1)
        if record.source not in self._clock_warned:
            self._clock_warned.add(record.source)
            log.warning(
                "source %s captured a record at %s, before the gateway clock was set; it is stored and "
                "sent flagged as such. Check the gateway's time synchronisation (NTP).",
                record.source,
                format_time(record.captured_at),
                extra={"source": record.source, "record_id": record.id},
            )

    def _shed_stored(self, db: sqlite3.Connection, needed: int, pending: Counters) -> None:
        """Delete the oldest stored telemetry until `needed` bytes are freed, counting each record.

        Records in the forwarder's current batch are skipped: they are on their way to the
        receiver, so shedding them would count as lost what is in fact delivered. The budget
        can therefore be exceeded by at most one forwarded batch.
        """
        freed = 0
        after = 0
        while freed < needed:
            rows = db.execute(
                "SELECT seq, size, source FROM records WHERE lane = ? AND seq > ? ORDER BY seq LIMIT 1000",
                (int(Lane.TELEMETRY), after),
            ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            chosen = []
            for seq, size, source in rows:
                if seq in self._in_flight:
                    continue
                chosen.append(seq)
                freed += size
                pending.count_shed(source, size)
                pending.lanes[Lane.TELEMETRY].count -= 1
                pending.lanes[Lane.TELEMETRY].bytes -= size
                if freed >= needed:
                    break
            _execute_chunked(db, "DELETE FROM records WHERE seq IN ({})", chosen)

    def _apply_acknowledge(self, db: sqlite3.Connection, seqs: list[int], pending: Counters) -> None:
        now = format_time(self.clock.now())
        for chunk in _chunks(seqs):
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"DELETE FROM records WHERE seq IN ({marks}) RETURNING seq, id, lane, size", chunk
            ).fetchall()
            self._uncount_shed_in_flight(chunk, {row[0] for row in rows}, pending)
            kept_ids = []
            for _, record_id, lane, size in rows:
                pending.lanes[Lane(lane)].count -= 1
                pending.lanes[Lane(lane)].bytes -= size
                if lane != Lane.TELEMETRY:
                    kept_ids.append((record_id, lane, now))
            if kept_ids:
                db.executemany("INSERT OR IGNORE INTO delivered (id, lane, delivered_at) VALUES (?, ?, ?)", kept_ids)

    def _uncount_shed_in_flight(self, acknowledged: Sequence[int], deleted: set[int], pending: Counters) -> None:
        """Take back the shed count of records the receiver acknowledged after the budget shed them.

        A batch read just before a commit that shed its records can still be sent: the reader's
        snapshot predates the shedding. Those records were delivered, so they are not lost.
        """
        in_flight = self._in_flight
        for seq in acknowledged:
            if seq not in deleted and seq in in_flight:
                source, size = in_flight[seq]
                pending.count_shed(source, size, sign=-1)

    def _apply_dead_letter(self, db: sqlite3.Connection, op: _DeadLetter, pending: Counters) -> None:
        now = format_time(self.clock.now())
        for chunk in _chunks(op.seqs):
            marks = ",".join("?" * len(chunk))
            db.execute(
                f"INSERT OR IGNORE INTO dead_letters ({RECORD_COLUMNS}, status, reason, failed_at)"
                f" SELECT {RECORD_COLUMNS}, ?, ?, ? FROM records WHERE seq IN ({marks})",
                (op.status, op.reason, now, *chunk),
            )
            rows = db.execute(f"DELETE FROM records WHERE seq IN ({marks}) RETURNING lane, size", chunk).fetchall()
            for lane, size in rows:
                pending.lanes[Lane(lane)].count -= 1
                pending.lanes[Lane(lane)].bytes -= size
                pending.dead_letters += 1
        log.warning(
            "records dead-lettered",
            extra={"count": len(op.seqs), "status": op.status, "reason": op.reason[:200]},
        )

    def _maybe_prune(self, db: sqlite3.Connection) -> None:
        # Monotonic time paces the pruning; only the cutoff uses wall time, as delivered_at does.
        now = self.clock.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL_S:
            return
        self._last_prune = now
        cutoff = format_time(self.clock.now() - self.delivered_retention)
        db.execute("DELETE FROM delivered WHERE delivered_at < ?", (cutoff,))

    # -- housekeeping -----------------------------------------------------------------------

    def _housekeep(self) -> None:
        db = self._require(self._writer)
        try:
            if _data_version(db) != self._data_version:
                db.execute("BEGIN")
                try:
                    self._reload_if_changed(db)
                finally:
                    db.execute("COMMIT")
            self._check_wal(db)
        except sqlite3.Error as error:
            if classify(error) is None:
                raise
            log.warning("outbox housekeeping failed: %s", error, extra={"path": str(self.path)})

    def _reload_if_changed(self, db: sqlite3.Connection) -> None:
        """Reload the counters if another connection committed since this one last looked.

        `PRAGMA data_version` changes only for commits by other connections, so the writer's
        own commits never cause a reload. Call inside a transaction so the counts are consistent.
        """
        version = _data_version(db)
        if version == self._data_version:
            return
        self._data_version = version
        counters = _read_counters(db)
        counters.merge(self._unsaved)
        self._counters = counters
        log.info(
            "outbox counters reloaded after a change by another process",
            extra={"path": str(self.path), "records": self._counters.depth},
        )

    def _check_wal(self, db: sqlite3.Connection) -> None:
        """Checkpoint and truncate the WAL once it is over `wal_max_bytes`.

        SQLite's automatic checkpoints cannot reset the log while another connection reads an
        older snapshot, so a long reader makes it grow; this reports that as
        `wal_checkpoint_blocked` and retries at every housekeeping until the reader is gone.
        """
        if _file_size(self.wal_path) <= self.wal_max_bytes and not self.wal_checkpoint_blocked:
            return
        # Do not wait for readers here: the writer must stay free for producers.
        db.execute("PRAGMA busy_timeout = 0")
        try:
            cursor = db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, log_frames, checkpointed = cursor.fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        self.checkpoints += 1

        blocked = bool(busy) or checkpointed < log_frames
        if blocked and not self.wal_checkpoint_blocked:
            log.warning(
                "outbox write-ahead log is %d bytes and cannot be reset, because another connection keeps "
                "a transaction open on %s; end long-running readers (sqlite3 shells, backups)",
                _file_size(self.wal_path),
                self.path,
                extra={"path": str(self.path)},
            )
        elif not blocked and self.wal_checkpoint_blocked:
            log.info("outbox write-ahead log checkpointed again", extra={"path": str(self.path)})
        self.wal_checkpoint_blocked = blocked


def _failure(error: BaseException) -> Failure:
    return classify(error) or Failure.STORAGE


def _read_counters(db: sqlite3.Connection) -> Counters:
    counters = Counters()
    for lane, count, size in db.execute(
        "SELECT lane, COUNT(*), COALESCE(SUM(size), 0) FROM records GROUP BY lane"
    ).fetchall():
        counters.lanes[Lane(lane)] = LaneTally(count=count, bytes=size)
    counters.dead_letters = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    counters.named = dict(db.execute("SELECT name, value FROM counters").fetchall())
    return counters


def _data_version(db: sqlite3.Connection) -> int:
    cursor = db.execute("PRAGMA data_version")
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def _execute_chunked(db: sqlite3.Connection, sql: str, values: Sequence[Any]) -> None:
    for chunk in _chunks(values):
        db.execute(sql.format(",".join("?" * len(chunk))), chunk)


def _existing_ids(db: sqlite3.Connection, ids: list[str]) -> set[str]:
    held: set[str] = set()
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        sql = " UNION ALL ".join(
            f"SELECT id FROM {table} WHERE id IN ({marks})" for table in ("records", "delivered", "dead_letters")
        )
        rows = db.execute(sql, [*chunk, *chunk, *chunk]).fetchall()
        held.update(row[0] for row in rows)
    return held


def _write_counters(db: sqlite3.Connection, deltas: dict[str, int]) -> None:
    if deltas:
        db.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            list(deltas.items()),
        )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
