"""Which failures the outbox retries, sheds on, moves aside, or blames on the request."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from outbox.storage_errors import Failure, classify


def sqlite_error(kind: type[sqlite3.Error], code: int) -> sqlite3.Error:
    error = kind("test")
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sqlite_error(sqlite3.OperationalError, 5), Failure.BUSY),
        (sqlite_error(sqlite3.OperationalError, 517), Failure.BUSY),  # SQLITE_BUSY_SNAPSHOT
        (sqlite_error(sqlite3.OperationalError, 6), Failure.BUSY),
        (sqlite_error(sqlite3.OperationalError, 13), Failure.DISK_FULL),
        (sqlite_error(sqlite3.DatabaseError, 11), Failure.CORRUPT),
        (sqlite_error(sqlite3.DatabaseError, 26), Failure.CORRUPT),
        (sqlite_error(sqlite3.OperationalError, 10), Failure.STORAGE),
        (sqlite_error(sqlite3.OperationalError, 778), Failure.STORAGE),  # SQLITE_IOERR_WRITE
        (sqlite_error(sqlite3.OperationalError, 8), Failure.STORAGE),
        (sqlite_error(sqlite3.IntegrityError, 19), Failure.DATA),
        (sqlite_error(sqlite3.DataError, 18), Failure.DATA),
        (sqlite3.ProgrammingError("closed"), Failure.DATA),
        (OSError(errno.ENOSPC, "No space left on device"), Failure.DISK_FULL),
        (OSError(errno.EIO, "Input/output error"), Failure.STORAGE),
        (ValueError("bad"), Failure.DATA),
        (KeyError("bug"), None),
    ],
)
def test_classify(error: BaseException, expected: Failure | None) -> None:
    assert classify(error) is expected


def test_real_busy_error_is_classified(tmp_path) -> None:
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            other.execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()

    assert classify(caught.value) is Failure.BUSY
