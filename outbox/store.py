"""The durable outbox: one SQLite file in WAL mode with a single writer task and group commit.

Producers call `append`; their records join a queue, and the writer task commits everything
queued in one transaction and only then resolves each producer's future. With
`synchronous=FULL` in WAL mode, SQLite syncs the write-ahead log on every commit, so a record
reported stored survives a power cut as well as a crash.

The forwarder reads batches through a second connection (WAL readers never block the writer)
and acknowledges or dead-letters them through the writer, so one task makes every change.
Memory holds only counters and the records being committed or forwarded: the backlog stays
on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from outbox.budget import Budget, plan_append
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.errors import OutboxError, OutboxFull, OutboxUnavailable
from outbox.records import Lane, Record, StoredRecord, format_time, parse_time
from outbox.schema import migrate

log = logging.getLogger(__name__)

# One group commit takes at most this many queued operations, so one commit stays short.
MAX_OPS_PER_COMMIT = 1024
# SQLite allows 32,766 host parameters per statement since 3.32; stay well below.
IN_CHUNK = 500
WRITE_QUEUE_SIZE = 4096
RECORD_COLUMNS = (
    "seq, id, lane, source, kind, subject, source_time, captured_at, quality, payload, size, attempts"
)


@dataclass
class _Op:
    future: asyncio.Future[Any]


@dataclass
class _Append(_Op):
    records: Sequence[Record]


@dataclass
class _Acknowledge(_Op):
    seqs: list[int]


@dataclass
class _DeadLetter(_Op):
    seqs: list[int]
    status: int | None
    reason: str


@dataclass
class _CountAttempt(_Op):
    seqs: list[int]


@dataclass
class _LaneTally:
    count: int = 0
    bytes: int = 0


@dataclass
class OutboxStats:
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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Counters:
    lanes: dict[Lane, _LaneTally] = field(default_factory=lambda: {lane: _LaneTally() for lane in Lane})
    dead_letters: int = 0
    named: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_used(self) -> int:
        return sum(tally.bytes for tally in self.lanes.values())


class Outbox:
    """The outbox file. Use as `async with Outbox(path, ...) as outbox:`.

    `append` is safe to call from any number of tasks. `next_batch`, `acknowledge` and
    `dead_letter` are meant for one forwarder at a time.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 1024**3,
        telemetry_share: float = 0.8,
        delivered_retention: timedelta = timedelta(days=7),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.path = Path(path)
        self.budget = Budget(max_bytes=max_bytes, telemetry_max_bytes=int(max_bytes * telemetry_share))
        self.delivered_retention = delivered_retention
        self.clock = clock
        self.last_error: str | None = None
        self.commits = 0
        self._counters = _Counters()
        self._queue: asyncio.Queue[_Op] = asyncio.Queue(maxsize=WRITE_QUEUE_SIZE)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._last_prune = float("-inf")

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Outbox:
        await asyncio.to_thread(_prepare_file, self.path)
        self._writer = await _connect(self.path)
        self._reader = await _connect(self.path)
        await self._load_counters()
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._writer_task = self._task_group.create_task(self._write_loop(), name="outbox-writer")
        log.info(
            "outbox opened",
            extra={"path": str(self.path), "records": sum(t.count for t in self._counters.lanes.values())},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the file. Safe to call twice."""
        if self._task_group is not None:
            task_group, self._task_group = self._task_group, None
            await self._queue.join()
            if self._writer_task is not None:
                self._writer_task.cancel()
            await task_group.__aexit__(None, None, None)
        for name in ("_writer", "_reader"):
            connection = getattr(self, name)
            if connection is not None:
                setattr(self, name, None)
                await connection.close()

    # -- producers --------------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> list[bool]:
        """Store records durably, all or nothing.

        Returns, per record, True if it was stored now and False if its id was already held
        (stored, delivered or dead-lettered). Returns only after the commit is on disk.
        Raises OutboxFull if transactions or events do not fit the budget (telemetry is shed
        instead), and OutboxUnavailable if the commit failed; in both cases nothing of this
        call was stored.
        """
        if not records:
            return []
        return await self._submit(_Append(self._new_future(), records))

    # -- forwarder --------------------------------------------------------------------------

    async def next_batch(self, max_records: int, max_bytes: int) -> list[StoredRecord]:
        """The oldest undelivered records in delivery order (lane, then FIFO), within the limits.

        Always returns at least one record when any is waiting, even one over `max_bytes`.
        """
        reader = self._require(self._reader)
        rows = await reader.execute_fetchall(
            f"SELECT {RECORD_COLUMNS} FROM records ORDER BY lane, seq LIMIT ?", (max_records,)
        )
        batch: list[StoredRecord] = []
        total = 0
        for row in rows:
            stored = _stored_from_row(row)
            if batch and total + stored.size > max_bytes:
                break
            batch.append(stored)
            total += stored.size
        return batch

    async def acknowledge(self, seqs: Iterable[int]) -> None:
        """Remove delivered records; transactions and events keep their id as delivered."""
        seqs = list(seqs)
        if seqs:
            await self._submit(_Acknowledge(self._new_future(), seqs))

    async def dead_letter(self, seqs: Iterable[int], status: int | None, reason: str) -> None:
        """Move rejected records to the dead-letter table with the receiver's status and reason."""
        seqs = list(seqs)
        if seqs:
            await self._submit(_DeadLetter(self._new_future(), seqs, status, reason[:2000]))

    async def count_attempt(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        if seqs:
            await self._submit(_CountAttempt(self._new_future(), seqs))

    # -- inspection -------------------------------------------------------------------------

    async def lookup(self, record_id: str) -> str | None:
        """Where a record is: 'stored', 'forwarded', 'dead-lettered', or None if unknown."""
        reader = self._require(self._reader)
        for table, state in (
            ("records", "stored"),
            ("delivered", "forwarded"),
            ("dead_letters", "dead-lettered"),
        ):
            rows = await reader.execute_fetchall(f"SELECT 1 FROM {table} WHERE id = ?", (record_id,))
            if rows:
                return state
        return None

    async def stats(self) -> OutboxStats:
        reader = self._require(self._reader)
        oldest: dict[str, str | None] = {}
        for lane in Lane:
            rows = list(
                await reader.execute_fetchall(
                    "SELECT captured_at FROM records WHERE lane = ? ORDER BY seq LIMIT 1", (int(lane),)
                )
            )
            oldest[lane.label] = rows[0][0] if rows else None
        counters = self._counters
        shed_by_source = {
            name.removeprefix("shed_records:"): value
            for name, value in counters.named.items()
            if name.startswith("shed_records:")
        }
        return OutboxStats(
            depth={lane.label: tally.count for lane, tally in counters.lanes.items()},
            bytes_by_lane={lane.label: tally.bytes for lane, tally in counters.lanes.items()},
            oldest_captured_at=oldest,
            bytes_used=counters.bytes_used,
            max_bytes=self.budget.max_bytes,
            dead_letters=counters.dead_letters,
            shed_records=counters.named.get("shed_records", 0),
            shed_bytes=counters.named.get("shed_bytes", 0),
            shed_by_source=shed_by_source,
            file_bytes=_file_size(self.path),
            wal_bytes=_file_size(self.path.with_name(self.path.name + "-wal")),
            last_error=self.last_error,
        )

    def depth(self) -> int:
        return sum(tally.count for tally in self._counters.lanes.values())

    @property
    def writer_alive(self) -> bool:
        return self._writer_task is not None and not self._writer_task.done()

    # -- the writer -------------------------------------------------------------------------

    def _new_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, op: _Op) -> Any:
        if self._task_group is None:
            raise OutboxUnavailable(f"outbox {self.path} is closed")
        await self._queue.put(op)
        return await op.future

    async def _write_loop(self) -> None:
        while True:
            ops = [await self._queue.get()]
            while len(ops) < MAX_OPS_PER_COMMIT and not self._queue.empty():
                ops.append(self._queue.get_nowait())
            try:
                await self._commit_group(ops)
            except Exception as error:
                # A bug must not stop the writer: fail these callers and keep serving the rest.
                log.exception("outbox writer failed on a group of %d operations", len(ops))
                for op in ops:
                    self._fail(op, error)
            finally:
                for _ in ops:
                    self._queue.task_done()

    async def _commit_group(self, ops: list[_Op]) -> None:
        """Commit all ops in one transaction; if that fails, retry them one by one so one bad
        op cannot cost the others."""
        ops = [op for op in ops if not op.future.done()]
        if not ops:
            return
        try:
            results = await self._run_transaction(ops)
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as error:
            if len(ops) == 1:
                self._fail(ops[0], error)
                return
            log.warning(
                "outbox group commit failed; retrying its %d operations one by one: %s", len(ops), error
            )
            for op in ops:
                try:
                    (result,) = await self._run_transaction([op])
                except (sqlite3.Error, ValueError, TypeError, OverflowError) as single_error:
                    self._fail(op, single_error)
                else:
                    _settle(op, result)
            return
        for op, result in zip(ops, results, strict=True):
            _settle(op, result)

    def _fail(self, op: _Op, error: Exception) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        log.error("outbox commit failed: %s", self.last_error, extra={"path": str(self.path)})
        if not op.future.done():
            op.future.set_exception(
                OutboxUnavailable(
                    f"outbox {self.path} could not commit: {error}; nothing of this request was stored"
                )
            )

    async def _run_transaction(self, ops: list[_Op]) -> list[Any]:
        db = self._require(self._writer)
        pending = _Counters(lanes={lane: _LaneTally() for lane in Lane})
        results: list[Any] = []
        await db.execute("BEGIN IMMEDIATE")
        try:
            seen: set[str] = set()
            for op in ops:
                if isinstance(op, _Append):
                    results.append(await self._apply_append(db, op, seen, pending))
                elif isinstance(op, _Acknowledge):
                    results.append(await self._apply_acknowledge(db, op.seqs, pending))
                elif isinstance(op, _DeadLetter):
                    results.append(await self._apply_dead_letter(db, op, pending))
                elif isinstance(op, _CountAttempt):
                    await _execute_chunked(
                        db, "UPDATE records SET attempts = attempts + 1 WHERE seq IN ({})", op.seqs
                    )
                    results.append(None)
            await self._maybe_prune(db)
            await _write_counters(db, pending.named)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            raise

        self._merge(pending)
        self.commits += 1
        if self.last_error is not None:
            log.info("outbox commits again after an error", extra={"path": str(self.path)})
            self.last_error = None
        return results

    async def _apply_append(
        self, db: aiosqlite.Connection, op: _Append, seen: set[str], pending: _Counters
    ) -> list[bool] | OutboxError:
        held = await _existing_ids(db, [record.id for record in op.records])
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
            await self._shed_stored(db, plan.shed_stored_bytes, pending)
        for record in plan.shed_incoming:
            _count(pending, "shed_records", 1)
            _count(pending, "shed_bytes", record.size)
            _count(pending, f"shed_records:{record.source}", 1)

        shed_ids = plan.shed_incoming_ids
        keep = [record for record in fresh if record.id not in shed_ids]
        await db.executemany(
            "INSERT INTO records (id, lane, source, kind, subject, source_time, captured_at, quality,"
            " payload, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_row_for(record) for record in keep],
        )
        for record in keep:
            tally = pending.lanes[record.lane]
            tally.count += 1
            tally.bytes += record.size
        return stored_flags

    async def _shed_stored(self, db: aiosqlite.Connection, needed: int, pending: _Counters) -> None:
        """Delete the oldest stored telemetry until `needed` bytes are freed, counting each record."""
        freed = 0
        while freed < needed:
            rows = list(
                await db.execute_fetchall(
                    "SELECT seq, size, source FROM records WHERE lane = ? ORDER BY seq LIMIT 1000",
                    (int(Lane.TELEMETRY),),
                )
            )
            if not rows:
                return
            chosen = []
            for seq, size, source in rows:
                chosen.append(seq)
                freed += size
                _count(pending, f"shed_records:{source}", 1)
                _count(pending, "shed_records", 1)
                _count(pending, "shed_bytes", size)
                pending.lanes[Lane.TELEMETRY].count -= 1
                pending.lanes[Lane.TELEMETRY].bytes -= size
                if freed >= needed:
                    break
            await db.execute(
                "DELETE FROM records WHERE lane = ? AND seq <= ?", (int(Lane.TELEMETRY), chosen[-1])
            )

    async def _apply_acknowledge(self, db: aiosqlite.Connection, seqs: list[int], pending: _Counters) -> None:
        now = format_time(self.clock.now())
        for chunk in _chunks(seqs):
            marks = ",".join("?" * len(chunk))
            rows = await db.execute_fetchall(
                f"DELETE FROM records WHERE seq IN ({marks}) RETURNING id, lane, size", chunk
            )
            kept_ids = []
            for record_id, lane, size in rows:
                pending.lanes[Lane(lane)].count -= 1
                pending.lanes[Lane(lane)].bytes -= size
                if lane != Lane.TELEMETRY:
                    kept_ids.append((record_id, lane, now))
            if kept_ids:
                await db.executemany(
                    "INSERT OR IGNORE INTO delivered (id, lane, delivered_at) VALUES (?, ?, ?)", kept_ids
                )

    async def _apply_dead_letter(self, db: aiosqlite.Connection, op: _DeadLetter, pending: _Counters) -> None:
        now = format_time(self.clock.now())
        for chunk in _chunks(op.seqs):
            marks = ",".join("?" * len(chunk))
            await db.execute(
                f"INSERT OR IGNORE INTO dead_letters ({RECORD_COLUMNS}, status, reason, failed_at)"
                f" SELECT {RECORD_COLUMNS}, ?, ?, ? FROM records WHERE seq IN ({marks})",
                (op.status, op.reason, now, *chunk),
            )
            rows = await db.execute_fetchall(
                f"DELETE FROM records WHERE seq IN ({marks}) RETURNING lane, size", chunk
            )
            for lane, size in rows:
                pending.lanes[Lane(lane)].count -= 1
                pending.lanes[Lane(lane)].bytes -= size
                pending.dead_letters += 1
        log.warning(
            "records dead-lettered",
            extra={"count": len(op.seqs), "status": op.status, "reason": op.reason[:200]},
        )

    async def _maybe_prune(self, db: aiosqlite.Connection) -> None:
        now = self.clock.monotonic()
        if now - self._last_prune < 3600:
            return
        self._last_prune = now
        cutoff = format_time(self.clock.now() - self.delivered_retention)
        await db.execute("DELETE FROM delivered WHERE delivered_at < ?", (cutoff,))

    def _merge(self, pending: _Counters) -> None:
        for lane, tally in pending.lanes.items():
            self._counters.lanes[lane].count += tally.count
            self._counters.lanes[lane].bytes += tally.bytes
        self._counters.dead_letters += pending.dead_letters
        for name, value in pending.named.items():
            self._counters.named[name] = self._counters.named.get(name, 0) + value

    async def _load_counters(self) -> None:
        reader = self._require(self._reader)
        for lane, count, size in await reader.execute_fetchall(
            "SELECT lane, COUNT(*), COALESCE(SUM(size), 0) FROM records GROUP BY lane"
        ):
            self._counters.lanes[Lane(lane)] = _LaneTally(count=count, bytes=size)
        rows = list(await reader.execute_fetchall("SELECT COUNT(*) FROM dead_letters"))
        self._counters.dead_letters = rows[0][0]
        self._counters.named = dict(await reader.execute_fetchall("SELECT name, value FROM counters"))  # type: ignore[arg-type]

    @staticmethod
    def _require(connection: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if connection is None:
            raise OutboxUnavailable("outbox is not open")
        return connection


# -- helpers ----------------------------------------------------------------------------------


def _prepare_file(path: Path) -> None:
    """Create the folder, set WAL mode and migrate the schema, in a plain connection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        migrate(connection, str(path))
    finally:
        connection.close()
    if not existed:
        # Make the new file's directory entry durable too, not only its contents.
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def _connect(path: Path) -> aiosqlite.Connection:
    connection = await aiosqlite.connect(path, isolation_level=None)
    # FULL: in WAL mode SQLite syncs the log at every commit, so a commit survives power loss.
    await connection.execute("PRAGMA synchronous = FULL")
    await connection.execute("PRAGMA busy_timeout = 10000")
    # Truncate the WAL back to this size after checkpoints so it cannot stay large.
    await connection.execute("PRAGMA journal_size_limit = 67108864")
    return connection


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


async def _execute_chunked(db: aiosqlite.Connection, sql: str, values: Sequence[Any]) -> None:
    for chunk in _chunks(values):
        await db.execute(sql.format(",".join("?" * len(chunk))), chunk)


async def _existing_ids(db: aiosqlite.Connection, ids: list[str]) -> set[str]:
    held: set[str] = set()
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        for table in ("records", "delivered", "dead_letters"):
            rows = await db.execute_fetchall(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk)
            held.update(row[0] for row in rows)
    return held


async def _write_counters(db: aiosqlite.Connection, deltas: dict[str, int]) -> None:
    if deltas:
        await db.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            list(deltas.items()),
        )


def _count(counters: _Counters, name: str, amount: int) -> None:
    counters.named[name] = counters.named.get(name, 0) + amount


def _settle(op: _Op, result: Any) -> None:
    if op.future.done():
        return
    if isinstance(result, BaseException):
        op.future.set_exception(result)
    else:
        op.future.set_result(result)


def _row_for(record: Record) -> tuple[Any, ...]:
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


def _stored_from_row(row: Any) -> StoredRecord:
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


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
