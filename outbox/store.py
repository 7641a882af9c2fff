"""The durable outbox: one SQLite file in WAL mode with a single writer task and group commit.

Producers call `append`; their records join a queue, and the writer task commits everything
queued in one transaction and only then resolves each producer's future. With
`synchronous=FULL` in WAL mode, SQLite syncs the write-ahead log on every commit, so a record
reported stored survives a power cut as well as a crash.

The forwarder reads batches through a second connection (WAL readers never block the writer)
and acknowledges or dead-letters them through the writer, so within the agent one task makes
every change. Operator commands (`plantgate outbox`) change the file through their own
connection; the writer notices and reloads its counters.
Memory holds only counters and the records being committed or forwarded: the backlog stays
on disk.

When the file cannot take a commit (disk full, I/O error, locked past `busy_retry_s`), the
writer sheds appends of telemetry only, counting them, and fails every other request with
OutboxUnavailable so its producer keeps the data. The first commit that succeeds again ends
the condition; nothing else is needed to recover.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from outbox.budget import Budget
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.counters import (
    CLOCK_UNSET_RECORDS,
    SHED_BYTES,
    SHED_ON_STORAGE_ERROR,
    SHED_RECORDS,
    Counters,
    OutboxStats,
)
from outbox.errors import OutboxError, OutboxUnavailable
from outbox.ops import _Acknowledge, _Append, _CountAttempt, _DeadLetter, _Housekeep, _Op, settle
from outbox.records import Lane, Record, StoredRecord, format_time
from outbox.rows import RECORD_COLUMNS, stored_from_row
from outbox.startup import StartupIncident, is_damaged, move_aside, prepare_file
from outbox.storage_errors import Failure, advice, classify
from outbox.writes import WriteTransactions, _data_version, _failure, _file_size, _read_counters

log = logging.getLogger(__name__)

# One group commit takes at most this many queued operations, so one commit stays short.
MAX_OPS_PER_COMMIT = 1024
WRITE_QUEUE_SIZE = 4096


class Outbox(WriteTransactions):
    """The outbox file. Use as `async with Outbox(path, ...) as outbox:`.

    `append` is safe to call from any number of tasks. `next_batch`, `acknowledge` and
    `dead_letter` are meant for one forwarder at a time.

    A busy file is retried for up to `busy_retry_s` seconds (each try itself waits up to
    `busy_timeout_s` inside SQLite) before the request fails. Every `housekeeping_interval_s`
    the writer reloads its counters if another process changed the file, and checkpoints the
    write-ahead log once it is over `wal_max_bytes`. With `startup_checks`, a damaged file is
    moved aside at open (see `outbox.startup`); operator tools open the file without them.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 1024**3,
        telemetry_share: float = 0.8,
        delivered_retention: timedelta = timedelta(days=7),
        clock: Clock = SYSTEM_CLOCK,
        busy_timeout_s: float = 5.0,
        busy_retry_s: float = 30.0,
        wal_max_bytes: int = 64 * 1024**2,
        housekeeping_interval_s: float = 5.0,
        startup_checks: bool = True,
    ) -> None:
        self.path = Path(path)
        self.budget = Budget(max_bytes=max_bytes, telemetry_max_bytes=int(max_bytes * telemetry_share))
        self.delivered_retention = delivered_retention
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        self.busy_retry_s = busy_retry_s
        self.wal_max_bytes = wal_max_bytes
        self.housekeeping_interval_s = housekeeping_interval_s
        self.startup_checks = startup_checks

        self.last_error: str | None = None
        self.condition: Failure | None = None
        self.startup_incident: StartupIncident | None = None
        self.commits = 0
        # Called on the event loop after each commit with the records it stored, in store order.
        self.on_commit: Callable[[list[Record]], None] | None = None
        self.failed_commits = 0
        self.busy_retries = 0
        self.checkpoints = 0
        self.wal_checkpoint_blocked = False

        self._counters = Counters()
        # Counts made while the file could not take a commit; written with the next commit.
        self._unsaved = Counters()
        self._failed_since_ok = 0
        self._clock_warned: set[str] = set()
        self._data_version = 0
        # Telemetry in the forwarder's latest batch, seq -> (source, size): budget shedding skips
        # these, and an acknowledgement of one that was shed anyway takes back its shed count.
        self._in_flight: dict[int, tuple[str, int]] = {}
        self._queue: asyncio.Queue[_Op] = asyncio.Queue(maxsize=WRITE_QUEUE_SIZE)
        # The writer is a plain sqlite3 connection, and each transaction runs in one worker thread
        # call, so a commit costs one thread hop rather than one per statement.
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._housekeeper_task: asyncio.Task[None] | None = None
        self._last_prune = float("-inf")

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Outbox:
        await self._open_file()
        try:
            self._writer = await asyncio.to_thread(self._connect_writer)
            self._reader = await self._connect()
            self._counters = await asyncio.to_thread(_read_counters, self._writer)
            self._data_version = await asyncio.to_thread(_data_version, self._writer)
        except sqlite3.Error as error:
            await self.close()
            raise OutboxUnavailable(
                f"outbox {self.path} could not be opened: {error}; {advice(_failure(error), str(self.path))}"
            ) from error

        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._writer_task = self._task_group.create_task(self._write_loop(), name="outbox-writer")
        self._housekeeper_task = self._task_group.create_task(self._housekeeping_loop(), name="outbox-housekeeper")
        log.info("outbox opened", extra={"path": str(self.path), "records": self._counters.depth})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the file. Safe to call twice."""
        if self._task_group is not None:
            task_group, self._task_group = self._task_group, None
            if self._housekeeper_task is not None:
                self._housekeeper_task.cancel()
            await self._queue.join()
            if self._writer_task is not None:
                self._writer_task.cancel()
            await task_group.__aexit__(None, None, None)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.to_thread(writer.close)
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()

    async def _open_file(self) -> None:
        """Prepare the file; with startup checks, move a damaged one aside and start a new one."""
        try:
            await asyncio.to_thread(prepare_file, self.path, check=self.startup_checks)
            return
        except sqlite3.Error as error:
            if not (self.startup_checks and is_damaged(error)):
                raise OutboxUnavailable(
                    f"outbox {self.path} could not be opened: {error}; "
                    f"{advice(_failure(error), str(self.path))}. The file was left in place."
                ) from error
            damage = error

        moved_to = await asyncio.to_thread(move_aside, self.path, self.clock.now())
        self.startup_incident = StartupIncident(
            path=str(self.path),
            moved_to=str(moved_to),
            error=f"{type(damage).__name__}: {damage}",
            detected_at=format_time(self.clock.now()),
        )
        log.error(self.startup_incident.message, extra={"path": str(self.path), "moved_to": str(moved_to)})
        await asyncio.to_thread(prepare_file, self.path, check=False)

    async def _connect(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in self._pragmas():
            await connection.execute(pragma)
        return connection

    def _connect_writer(self) -> sqlite3.Connection:
        # Used by one thread at a time: the writer task waits for each call to finish.
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in self._pragmas():
            connection.execute(pragma)
        return connection

    def _pragmas(self) -> list[str]:
        return [
            # FULL: in WAL mode SQLite syncs the log at every commit, so a commit survives power loss.
            "PRAGMA synchronous = FULL",
            f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}",
            # Truncate the WAL back to this size after each reset, so one burst does not keep it large.
            f"PRAGMA journal_size_limit = {int(self.wal_max_bytes)}",
        ]

    # -- producers --------------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> list[bool]:
        """Store records durably, all or nothing.

        Returns, per record, True if it was stored now (or shed as telemetry, which is
        counted) and False if its id was already held (stored, delivered or dead-lettered).
        Returns only after the commit is on disk. Raises OutboxFull if transactions or events
        do not fit the budget, and OutboxUnavailable if the commit failed; in both cases
        nothing of this call was stored. A call holding only telemetry never raises
        OutboxUnavailable: when the file cannot take it, its records are shed and counted.
        """
        if not records:
            return []
        return await self._submit(_Append(self._new_future(), records))

    # -- forwarder --------------------------------------------------------------------------

    async def next_batch(self, max_records: int, max_bytes: int) -> list[StoredRecord]:
        """Read the oldest undelivered records in delivery order (lane, then FIFO), within the limits.

        Always returns at least one record when any is waiting, even one over `max_bytes`.
        Raises OutboxUnavailable if the file cannot be read.
        """
        rows = await self._read(f"SELECT {RECORD_COLUMNS} FROM records ORDER BY lane, seq LIMIT ?", (max_records,))
        batch: list[StoredRecord] = []
        total = 0
        for row in rows:
            stored = stored_from_row(row)
            if batch and total + stored.size > max_bytes:
                break
            batch.append(stored)
            total += stored.size
        self._in_flight = {
            stored.seq: (stored.record.source, stored.size) for stored in batch if stored.record.lane == Lane.TELEMETRY
        }
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
        """Return where a record is: 'stored', 'forwarded', 'dead-lettered', or None if unknown."""
        for table, state in (
            ("records", "stored"),
            ("delivered", "forwarded"),
            ("dead_letters", "dead-lettered"),
        ):
            if await self._read(f"SELECT 1 FROM {table} WHERE id = ?", (record_id,)):
                return state
        return None

    async def stats(self) -> OutboxStats:
        oldest: dict[str, str | None] = {}
        for lane in Lane:
            rows = await self._read("SELECT captured_at FROM records WHERE lane = ? ORDER BY seq LIMIT 1", (int(lane),))
            oldest[lane.label] = rows[0][0] if rows else None
        counters = self._counters
        return OutboxStats(
            depth={lane.label: tally.count for lane, tally in counters.lanes.items()},
            bytes_by_lane={lane.label: tally.bytes for lane, tally in counters.lanes.items()},
            oldest_captured_at=oldest,
            bytes_used=counters.bytes_used,
            max_bytes=self.budget.max_bytes,
            dead_letters=counters.dead_letters,
            shed_records=counters.named.get(SHED_RECORDS, 0),
            shed_bytes=counters.named.get(SHED_BYTES, 0),
            shed_by_source=counters.shed_by_source(),
            file_bytes=_file_size(self.path),
            wal_bytes=_file_size(self.wal_path),
            last_error=self.last_error,
            condition=self.condition.value if self.condition else None,
            failed_commits=self.failed_commits,
            busy_retries=self.busy_retries,
            shed_on_storage_error=counters.named.get(SHED_ON_STORAGE_ERROR, 0),
            clock_unset_records=counters.named.get(CLOCK_UNSET_RECORDS, 0),
            checkpoints=self.checkpoints,
            wal_checkpoint_blocked=self.wal_checkpoint_blocked,
            startup_incident=self.startup_incident.as_dict() if self.startup_incident else None,
        )

    def depth(self) -> int:
        return self._counters.depth

    @property
    def writer_alive(self) -> bool:
        return self._writer_task is not None and not self._writer_task.done()

    async def housekeep(self) -> None:
        """Reload counters changed by another process and checkpoint a large WAL, now rather than
        at the next interval."""
        await self._submit(_Housekeep(self._new_future()))

    async def _read(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        reader = self._require(self._reader)
        try:
            return list(await reader.execute_fetchall(sql, parameters))
        except sqlite3.Error as error:
            raise OutboxUnavailable(
                f"outbox {self.path} could not be read: {error}; {advice(_failure(error), str(self.path))}"
            ) from error

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
            changes = [op for op in ops if not isinstance(op, _Housekeep)]
            chores = [op for op in ops if isinstance(op, _Housekeep)]
            try:
                if changes:
                    await self._commit_group(changes)
                if chores:
                    await asyncio.to_thread(self._housekeep)
                    for chore in chores:
                        settle(chore, None)
            except Exception as error:
                # A bug must not stop the writer: fail these callers and keep serving the rest.
                log.exception("outbox writer failed on a group of %d operations", len(ops))
                for op in ops:
                    self._fail_request(op, error)
            finally:
                for _ in ops:
                    self._queue.task_done()

    async def _housekeeping_loop(self) -> None:
        while True:
            await self.clock.sleep(self.housekeeping_interval_s)
            try:
                await self.housekeep()
            except OutboxError as error:
                log.debug("outbox housekeeping skipped: %s", error)

    async def _commit_group(self, ops: list[_Op]) -> None:
        """Commit all ops in one transaction.

        If a request's data is at fault, retry the ops one by one so it cannot cost the others.
        If the file is at fault, `_storage_failed` decides what each op gets.
        """
        ops = [op for op in ops if not op.future.done()]
        if not ops:
            return
        try:
            results = await self._transact(ops)
        except Exception as error:
            failure = classify(error)
            if failure is None:
                raise
            if failure is not Failure.DATA:
                self._storage_failed(ops, error, failure)
            elif len(ops) == 1:
                self._fail_request(ops[0], error)
            else:
                log.warning("outbox group commit failed; retrying its %d operations one by one: %s", len(ops), error)
                await self._commit_one_by_one(ops)
            return
        for op, result in zip(ops, results, strict=True):
            settle(op, result)

    async def _commit_one_by_one(self, ops: list[_Op]) -> None:
        for op in ops:
            try:
                (result,) = await self._transact([op])
            except Exception as error:
                failure = classify(error)
                if failure is None:
                    raise
                if failure is Failure.DATA:
                    self._fail_request(op, error)
                else:
                    self._storage_failed([op], error, failure)
            else:
                settle(op, result)

    async def _transact(self, ops: list[_Op]) -> list[Any]:
        """Run one transaction, retrying while the file is busy for at most `busy_retry_s`."""
        started = self.clock.monotonic()
        delay = 0.05
        while True:
            try:
                results, pending = await asyncio.to_thread(self._run_transaction, ops)
            except sqlite3.Error as error:
                waited = self.clock.monotonic() - started
                if classify(error) is not Failure.BUSY or waited + delay > self.busy_retry_s:
                    raise
                self.busy_retries += 1
                await self.clock.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            # Counters change only on the event loop's thread, so stats() never reads them half updated.
            self._counters.merge(pending)
            self._unsaved = Counters()
            self._commit_succeeded()
            self._report_inserted(ops)
            return results

    def _report_inserted(self, ops: list[_Op]) -> None:
        """Tell `on_commit` which records the commit stored, even when their producer was cancelled
        while it waited: the records are on disk all the same."""
        if self.on_commit is None:
            return
        inserted = [record for op in ops if isinstance(op, _Append) for record in op.inserted]
        if inserted:
            try:
                self.on_commit(inserted)
            except Exception:
                log.exception("outbox on_commit callback failed")

    def _commit_succeeded(self) -> None:
        self.commits += 1
        if self.condition is not None:
            log.info(
                "outbox commits again after %d failed commits (%s)",
                self._failed_since_ok,
                self.condition.value,
                extra={"path": str(self.path)},
            )
            self.condition = None
            self.last_error = None
            self._failed_since_ok = 0

    def _storage_failed(self, ops: list[_Op], error: Exception, failure: Failure) -> None:
        """Shed telemetry-only appends and fail every other op, because the file could not take the commit."""
        self.failed_commits += 1
        self._failed_since_ok += 1
        self.last_error = f"{type(error).__name__}: {error}"
        hint = advice(failure, str(self.path))
        if self.condition is not failure:
            self.condition = failure
            log.error(
                "outbox commit failed (%s): %s; %s. Until a commit succeeds, telemetry is shed and counted"
                " and other requests are rejected.",
                failure.value,
                self.last_error,
                hint,
                extra={"path": str(self.path)},
            )
        for op in ops:
            if op.future.done():
                continue
            if isinstance(op, _Append) and all(record.lane == Lane.TELEMETRY for record in op.records):
                for record in op.records:
                    for counters in (self._counters, self._unsaved):
                        counters.count_shed(record.source, record.size)
                        counters.add(SHED_ON_STORAGE_ERROR, 1)
                op.future.set_result([True] * len(op.records))
            else:
                op.future.set_exception(
                    OutboxUnavailable(
                        f"outbox {self.path} could not commit ({failure.value}: {error}); "
                        f"nothing of this request was stored. {hint}"
                    )
                )

    def _fail_request(self, op: _Op, error: Exception) -> None:
        log.error("outbox request failed: %s: %s", type(error).__name__, error, extra={"path": str(self.path)})
        if not op.future.done():
            op.future.set_exception(
                OutboxUnavailable(f"outbox {self.path} could not commit: {error}; nothing of this request was stored")
            )

    @staticmethod
    def _require(connection: Any) -> Any:
        if connection is None:
            raise OutboxUnavailable("outbox is not open")
        return connection
