"""Operator actions on an outbox file: inspect, requeue, export and purge dead letters, salvage.

These work on the file directly, through their own SQLite connection, and are safe while the
agent runs: WAL mode lets them read beside it, each change is one short transaction that waits
up to BUSY_TIMEOUT_S for the agent's writer, and the running agent notices the change through
`PRAGMA data_version` and reloads its counters (at its next commit, or within its housekeeping
interval, 5 s by default). Every change appends one JSON line to the audit log beside the file.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from outbox.errors import OutboxError, OutboxFull, SchemaTooNew
from outbox.records import Lane, format_time
from outbox.rows import RECORD_COLUMNS
from outbox.salvage import (
    DEAD_LETTER_COLUMNS,
    DamagedCopy,
    SalvageReport,
    decode_record_row,
    read_delivered_ids,
    read_table,
)
from outbox.schema import SCHEMA_VERSION, read_version

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0
PAGE = 500
LIST_COLUMNS = "seq, id, lane, source, kind, subject, captured_at, attempts, status, reason, failed_at"


class AdminError(Exception):
    """An operator action failed. The message states why and what to do."""


def audit_path(outbox_path: Path) -> Path:
    return outbox_path.with_name(outbox_path.name + ".audit.log")


def open_outbox(path: Path) -> sqlite3.Connection:
    """Open an existing outbox file for operator actions. Never creates or migrates one.

    Raises AdminError if the file is missing or not an outbox of a schema this release supports.
    """
    if not path.is_file():
        raise AdminError(f"outbox {path} not found; check outbox.path in the configuration or --outbox")
    connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        connection.execute("PRAGMA synchronous = FULL")
        version = read_version(connection)
    except sqlite3.DatabaseError as error:
        connection.close()
        raise AdminError(f"outbox {path} could not be read: {error}") from error
    if version != SCHEMA_VERSION:
        connection.close()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"outbox {path} has schema version {version}; use the plantgate release that wrote it")
        raise AdminError(
            f"outbox {path} has schema version {version}, not {SCHEMA_VERSION}; start the agent once to migrate it"
        )
    return connection


def write_audit(outbox_path: Path, action: str, **details: Any) -> None:
    """Append one JSON line for a change to the audit log beside the outbox, and log it."""
    entry = {
        "time": format_time(datetime.now(UTC)),
        "user": _user(),
        "pid": os.getpid(),
        "outbox": str(outbox_path),
        "action": action,
        **details,
    }
    line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"
    with audit_path(outbox_path).open("a", encoding="utf-8") as file:
        file.write(line)
        file.flush()
        os.fsync(file.fileno())
    log.warning("outbox changed by operator: %s", line.strip(), extra={"audit": entry})


# -- reading ---------------------------------------------------------------------------------


def stats(connection: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """Depth and bytes per lane, dead letters by status, counters and file sizes."""
    lanes = {lane.label: {"records": 0, "bytes": 0, "oldest_captured_at": None} for lane in Lane}
    connection.execute("BEGIN")
    try:
        for lane, count, size, oldest in connection.execute(
            "SELECT lane, COUNT(*), COALESCE(SUM(size), 0), MIN(captured_at) FROM records GROUP BY lane"
        ):
            lanes[Lane(lane).label] = {"records": count, "bytes": size, "oldest_captured_at": oldest}
        by_status = {
            str(status): count
            for status, count in connection.execute(
                "SELECT status, COUNT(*) FROM dead_letters GROUP BY status ORDER BY status"
            )
        }
        delivered = connection.execute("SELECT COUNT(*) FROM delivered").fetchone()[0]
        counters = dict(connection.execute("SELECT name, value FROM counters ORDER BY name").fetchall())
    finally:
        connection.execute("COMMIT")
    return {
        "path": str(path),
        "lanes": lanes,
        "dead_letters": sum(by_status.values()),
        "dead_letters_by_status": by_status,
        "delivered_ids_kept": delivered,
        "counters": counters,
        "file_bytes": _size(path),
        "wal_bytes": _size(path.with_name(path.name + "-wal")),
    }


def list_dead_letters(
    connection: sqlite3.Connection, limit: int, status: int | None = None, source: str | None = None
) -> list[dict[str, Any]]:
    """Dead letters, oldest failure first, without payloads."""
    where, parameters = _filters(status=status, source=source)
    rows = connection.execute(
        f"SELECT {LIST_COLUMNS} FROM dead_letters {where} ORDER BY seq LIMIT ?", (*parameters, limit)
    ).fetchall()
    names = [name.strip() for name in LIST_COLUMNS.split(",")]
    return [_with_lane_label(dict(zip(names, row, strict=True))) for row in rows]


def show(connection: sqlite3.Connection, record_id: str) -> dict[str, Any] | None:
    """Everything the outbox contains on one id, with its state, or None if it contains nothing."""
    columns = [name.strip() for name in DEAD_LETTER_COLUMNS.split(",")]
    row = connection.execute(f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (record_id,)).fetchone()
    if row:
        return {"state": "dead-lettered", **_decoded(dict(zip(columns, row, strict=True)))}
    record_columns = [name.strip() for name in RECORD_COLUMNS.split(",")]
    row = connection.execute(f"SELECT {RECORD_COLUMNS} FROM records WHERE id = ?", (record_id,)).fetchone()
    if row:
        return {"state": "stored", **_decoded(dict(zip(record_columns, row, strict=True)))}
    row = connection.execute("SELECT id, lane, delivered_at FROM delivered WHERE id = ?", (record_id,)).fetchone()
    if row:
        return _with_lane_label({"state": "forwarded", "id": row[0], "lane": row[1], "delivered_at": row[2]})
    return None


def iter_dead_letters(connection: sqlite3.Connection, ids: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """All dead letters (or those with `ids`) with payloads, read a page per transaction so a
    long export never keeps the write-ahead log from being reset."""
    columns = [name.strip() for name in DEAD_LETTER_COLUMNS.split(",")]
    if ids:
        for record_id in ids:
            row = connection.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (record_id,)
            ).fetchone()
            if row:
                yield _decoded(dict(zip(columns, row, strict=True)))
        return
    last = 0
    while True:
        rows = connection.execute(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE seq > ? ORDER BY seq LIMIT ?", (last, PAGE)
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield _decoded(dict(zip(columns, row, strict=True)))
        last = rows[-1][0]


def export(connection: sqlite3.Connection, target: Path, ids: Sequence[str] = ()) -> int:
    """Write dead letters as JSON lines to `target` and return how many were written."""
    written = 0
    with target.open("w", encoding="utf-8") as file:
        for entry in iter_dead_letters(connection, ids):
            file.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
            written += 1
    return written


# -- changing --------------------------------------------------------------------------------


def requeue(connection: sqlite3.Connection, path: Path, ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Move dead letters back to the end of their lane for another delivery, with attempts reset.

    Returns the ids requeued and the ids that were not dead letters.
    """
    requeued: list[str] = []
    connection.execute("BEGIN IMMEDIATE")
    try:
        for record_id in ids:
            moved = connection.execute(
                "INSERT INTO records (id, lane, source, kind, subject, source_time, captured_at, quality,"
                " payload, size) SELECT id, lane, source, kind, subject, source_time, captured_at, quality,"
                " payload, size FROM dead_letters WHERE id = ?"
                " AND id NOT IN (SELECT id FROM records)",
                (record_id,),
            ).rowcount
            if moved:
                connection.execute("DELETE FROM dead_letters WHERE id = ?", (record_id,))
                requeued.append(record_id)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    missing = [record_id for record_id in ids if record_id not in set(requeued)]
    if requeued:
        write_audit(path, "requeue", count=len(requeued), ids=requeued)
    return requeued, missing


def purge(
    connection: sqlite3.Connection,
    path: Path,
    *,
    ids: Sequence[str] = (),
    everything: bool = False,
    failed_before: datetime | None = None,
    status: int | None = None,
) -> int:
    """Delete dead letters chosen by ids, or by failure time and status, or all; return the count."""
    if not (ids or everything or failed_before or status is not None):
        raise AdminError("purge needs ids, --all, --older-than or --status to choose dead letters")
    connection.execute("BEGIN IMMEDIATE")
    try:
        if ids:
            chosen = [
                row[0]
                for record_id in ids
                for row in connection.execute("SELECT id FROM dead_letters WHERE id = ?", (record_id,))
            ]
        else:
            where, parameters = _filters(status=status, failed_before=failed_before)
            chosen = [row[0] for row in connection.execute(f"SELECT id FROM dead_letters {where}", parameters)]
        for record_id in chosen:
            connection.execute("DELETE FROM dead_letters WHERE id = ?", (record_id,))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    if chosen:
        criteria = {
            "all": everything,
            "failed_before": format_time(failed_before) if failed_before else None,
            "status": status,
        }
        write_audit(path, "purge", count=len(chosen), ids=chosen, criteria=criteria)
    return len(chosen)


def salvage(damaged: Path, outbox_path: Path, *, max_bytes: int, telemetry_share: float) -> SalvageReport:
    """Copy the readable rows of `damaged` into the outbox at `outbox_path`, skipping ids it holds.

    Delivered ids come first, so records the damaged file had already delivered are not queued
    again; dead letters stay dead letters; records go through `Outbox.append`, with its budget.
    """
    report = SalvageReport()
    with DamagedCopy(damaged, scratch_dir=outbox_path.parent) as source:
        delivered = read_delivered_ids(source, report)
        report.delivered_ids_read = len(delivered)
        dead_letters = [row for row in read_table(source, "dead_letters", DEAD_LETTER_COLUMNS, report)]
        report.dead_letters_read = len(dead_letters)
        connection = open_outbox(outbox_path)
        try:
            report.delivered_ids_added = _add_delivered(connection, delivered)
            report.dead_letters_added = _add_dead_letters(connection, dead_letters, report)
        finally:
            connection.close()
        asyncio.run(_append_records(source, outbox_path, report, max_bytes, telemetry_share))
    write_audit(
        outbox_path,
        "salvage",
        source=str(damaged),
        records_added=report.records_added,
        dead_letters_added=report.dead_letters_added,
        delivered_ids_added=report.delivered_ids_added,
        unreadable_rows=sum(len(seqs) for seqs in report.unreadable_seqs.values()),
        other_problems=len(report.unreadable),
    )
    return report


def _add_delivered(connection: sqlite3.Connection, rows: list[tuple[str, int, str]]) -> int:
    connection.execute("BEGIN IMMEDIATE")
    try:
        added = 0
        for record_id, lane, delivered_at in rows:
            if _held(connection, record_id):
                continue
            connection.execute(
                "INSERT INTO delivered (id, lane, delivered_at) VALUES (?, ?, ?)",
                (record_id, lane, delivered_at),
            )
            added += 1
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return added


def _add_dead_letters(connection: sqlite3.Connection, rows: list[tuple[Any, ...]], report: SalvageReport) -> int:
    columns = DEAD_LETTER_COLUMNS.split(", ", 1)[1]
    marks = ",".join("?" * len(columns.split(",")))
    connection.execute("BEGIN IMMEDIATE")
    try:
        added = 0
        for row in rows:
            if decode_record_row(row, report, "dead_letters") is None or _held(connection, row[1]):
                continue
            # A new seq: the damaged file's seqs may already be used here.
            connection.execute(f"INSERT INTO dead_letters ({columns}) VALUES ({marks})", row[1:])
            added += 1
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return added


async def _append_records(
    source: sqlite3.Connection,
    outbox_path: Path,
    report: SalvageReport,
    max_bytes: int,
    telemetry_share: float,
) -> None:
    from outbox.store import Outbox

    async with Outbox(
        outbox_path,
        max_bytes=max_bytes,
        telemetry_share=telemetry_share,
        busy_timeout_s=BUSY_TIMEOUT_S,
        startup_checks=False,
    ) as outbox:
        batch = []
        for row in read_table(source, "records", RECORD_COLUMNS, report):
            stored = decode_record_row(row, report, "records")
            if stored is None:
                continue
            report.records_read += 1
            batch.append(stored.record)
            if len(batch) >= PAGE:
                await _append_batch(outbox, batch, report)
                batch = []
        if batch:
            await _append_batch(outbox, batch, report)


async def _append_batch(outbox: Any, batch: list[Any], report: SalvageReport) -> None:
    try:
        flags = await outbox.append(batch)
    except OutboxFull as error:
        report.records_not_added += len(batch)
        report.unreadable.append(f"{len(batch)} records not added: {error}")
        return
    except OutboxError as error:
        raise AdminError(f"salvage stopped: {error}; run it again once the outbox is writable") from error
    report.records_added += sum(flags)
    report.records_already_held += len(flags) - sum(flags)


def _held(connection: sqlite3.Connection, record_id: str) -> bool:
    for table in ("records", "delivered", "dead_letters"):
        if connection.execute(f"SELECT 1 FROM {table} WHERE id = ?", (record_id,)).fetchone():
            return True
    return False


def _filters(
    *, status: int | None = None, source: str | None = None, failed_before: datetime | None = None
) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    parameters: list[Any] = []
    if status is not None:
        clauses.append("status = ?")
        parameters.append(status)
    if source is not None:
        clauses.append("source = ?")
        parameters.append(source)
    if failed_before is not None:
        clauses.append("failed_at < ?")
        parameters.append(format_time(failed_before))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(parameters)


def _decoded(entry: dict[str, Any]) -> dict[str, Any]:
    try:
        entry["payload"] = json.loads(entry["payload"])
    except (TypeError, ValueError):
        pass
    return _with_lane_label(entry)


def _with_lane_label(entry: dict[str, Any]) -> dict[str, Any]:
    entry["lane"] = Lane(entry["lane"]).label
    return entry


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
