"""Recover the readable rows of a damaged outbox file into a working outbox.

The damaged file is copied first, so the moved-aside evidence is never changed. Tables are read
in windows of row ids; a window that fails is split until the unreadable rows are isolated and
skipped, so one bad page costs only the rows on it. Rows are added through the same duplicate
checks as live appends, so running salvage twice, or on a file whose rows were partly
delivered, adds nothing twice.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outbox.rows import RECORD_COLUMNS, stored_from_row
from outbox.startup import SIDE_FILES

WINDOW = 256
DEAD_LETTER_COLUMNS = RECORD_COLUMNS + ", status, reason, failed_at"


@dataclass
class SalvageReport:
    """Counts of the rows salvage read from the damaged file and added to the outbox."""

    records_read: int = 0
    records_added: int = 0
    records_already_held: int = 0
    records_not_added: int = 0
    dead_letters_read: int = 0
    dead_letters_added: int = 0
    delivered_ids_read: int = 0
    delivered_ids_added: int = 0
    unreadable: list[str] = field(default_factory=list)
    unreadable_seqs: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"records: {self.records_read} read, {self.records_added} added, "
            f"{self.records_already_held} already held, {self.records_not_added} not added",
            f"dead letters: {self.dead_letters_read} read, {self.dead_letters_added} added",
            f"delivered ids: {self.delivered_ids_read} read, {self.delivered_ids_added} added",
        ]
        for table, seqs in self.unreadable_seqs.items():
            lines.append(f"unreadable {table} rows: {len(seqs)} (seq {', '.join(_ranges(seqs))})")
        if self.unreadable:
            lines.append(f"other problems: {len(self.unreadable)}")
            lines.extend(f"  {item}" for item in self.unreadable[:50])
        return "\n".join(lines)


def _ranges(values: list[int]) -> list[str]:
    """Consecutive integers written as ranges: [1, 2, 3, 7] gives ['1-3', '7']."""
    ranges: list[str] = []
    start = previous = None
    for value in sorted(values):
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = value
    if start is not None:
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
    return ranges


class DamagedCopy:
    """A private copy of the damaged file (and its -wal), opened read-only. Use with `with`."""

    def __init__(self, source: Path, scratch_dir: Path) -> None:
        self.source = source
        self.scratch_dir = scratch_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.connection: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        if not self.source.is_file():
            raise FileNotFoundError(f"{self.source} not found; give the path of the moved-aside outbox file")
        self._tmp = tempfile.TemporaryDirectory(dir=self.scratch_dir, prefix=".salvage-")
        copy = Path(self._tmp.name) / "damaged.sqlite"
        shutil.copyfile(self.source, copy)
        wal = self.source.with_name(self.source.name + SIDE_FILES[0])
        if wal.is_file():
            shutil.copyfile(wal, copy.with_name(copy.name + SIDE_FILES[0]))
        self.connection = sqlite3.connect(copy, isolation_level=None)
        return self.connection

    def __exit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def read_table(
    connection: sqlite3.Connection, table: str, columns: str, report: SalvageReport
) -> Iterator[tuple[Any, ...]]:
    """Yield the readable rows of a rowid table in rowid order, noting the unreadable ones in `report`."""
    top = _highest_rowid(connection, table)
    if top is None:
        report.unreadable.append(f"{table}: the table or its extent could not be read")
        return
    for low in range(1, top + 1, WINDOW):
        yield from _read_window(connection, table, columns, low, min(low + WINDOW - 1, top), report)


def read_delivered_ids(connection: sqlite3.Connection, report: SalvageReport) -> list[tuple[str, int, str]]:
    """Read the rows of `delivered` from both ends, so one bad page loses only the ids between."""
    rows: dict[str, tuple[str, int, str]] = {}
    for order in ("ASC", "DESC"):
        try:
            for row in connection.execute(f"SELECT id, lane, delivered_at FROM delivered ORDER BY id {order}"):
                rows[row[0]] = row
        except sqlite3.DatabaseError as error:
            report.unreadable.append(f"delivered ({order} scan stopped): {error}")
    return list(rows.values())


def decode_record_row(row: tuple[Any, ...], report: SalvageReport, table: str) -> Any | None:
    try:
        return stored_from_row(row[:12])
    except (ValueError, TypeError, KeyError) as error:
        report.unreadable.append(f"{table} seq {row[0]}: {error}")
        return None


def _highest_rowid(connection: sqlite3.Connection, table: str) -> int | None:
    try:
        top = connection.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        return int(top or 0)
    except sqlite3.DatabaseError:
        pass
    try:
        # `records` uses AUTOINCREMENT, so sqlite_sequence has its highest seq ever used.
        row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else None
    except sqlite3.DatabaseError:
        return None


def _read_window(
    connection: sqlite3.Connection, table: str, columns: str, low: int, high: int, report: SalvageReport
) -> Iterator[tuple[Any, ...]]:
    try:
        rows = connection.execute(
            f"SELECT {columns} FROM {table} WHERE rowid BETWEEN ? AND ? ORDER BY rowid", (low, high)
        ).fetchall()
    except sqlite3.DatabaseError:
        if low == high:
            report.unreadable_seqs.setdefault(table, []).append(low)
            return
        middle = (low + high) // 2
        yield from _read_window(connection, table, columns, low, middle, report)
        yield from _read_window(connection, table, columns, middle + 1, high, report)
        return
    yield from rows
