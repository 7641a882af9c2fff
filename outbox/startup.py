"""Opening the outbox file at start: WAL mode, schema, a quick check, and moving a damaged file aside.

A file SQLite reports as corrupt, or as not a database, is renamed to
`<name>.corrupt-<UTC time>` (its `-wal` and `-shm` files alongside, under the same new name),
so the agent can start with a new, empty outbox and the operator can recover rows from the
old one with `plantgate outbox salvage`. Any other failure (locked, permission denied, a
newer schema) leaves the file untouched and stops the start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from outbox.schema import migrate
from outbox.storage_errors import Failure, classify

log = logging.getLogger(__name__)

SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True)
class StartupIncident:
    """A damaged outbox found at start and moved aside."""

    path: str
    moved_to: str
    error: str
    detected_at: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "message": self.message}

    def __str__(self) -> str:
        return self.message

    @property
    def message(self) -> str:
        return (
            f"outbox {self.path} was unreadable ({self.error}); moved it to {self.moved_to} and started "
            f"a new outbox. Recover its rows with: plantgate outbox salvage {self.moved_to}"
        )


def prepare_file(path: Path, *, check: bool = True) -> None:
    """Create the folder and file if needed, set WAL mode, migrate the schema and, with `check`,
    run `PRAGMA quick_check`.

    Raises sqlite3.DatabaseError when the file is damaged, SchemaTooNew when a newer release wrote it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create(path)
        return
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        migrate(connection, str(path))
        if check:
            # quick_check reads every page but skips the index-content cross-check of integrity_check.
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                error = sqlite3.DatabaseError("quick_check: " + "; ".join(problems))
                error.sqlite_errorcode = 11  # type: ignore[attr-defined]
                raise error
    finally:
        connection.close()


def _create(path: Path) -> None:
    """Create a new outbox under a temporary name and rename it into place once its schema is
    complete, so a file at `path` always has the outbox tables."""
    partial = path.with_name(path.name + ".new")
    for leftover in (partial, *(partial.with_name(partial.name + suffix) for suffix in SIDE_FILES)):
        leftover.unlink(missing_ok=True)
    connection = sqlite3.connect(partial, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        migrate(connection, str(path))
    finally:
        # Closing the last connection checkpoints the WAL into the file and deletes it.
        connection.close()
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(partial, path)
    sync_directory(path.parent)


def is_damaged(error: BaseException) -> bool:
    return classify(error) is Failure.CORRUPT


def move_aside(path: Path, now: datetime) -> Path:
    """Rename the damaged file and its side files to `<name>.corrupt-<UTC time>` and return the new path."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
    os.rename(path, target)
    for suffix in SIDE_FILES:
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            os.rename(side, target.with_name(target.name + suffix))
    sync_directory(path.parent)
    return target


def sync_directory(folder: Path) -> None:
    """Make renames and new files in `folder` durable (their directory entries, not only their data)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
