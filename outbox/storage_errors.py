"""Classify SQLite and OS errors by what the outbox does about them.

The writer retries `BUSY` within a bound, sheds telemetry and refuses the rest on `DISK_FULL`
and `STORAGE`, moves the file aside on `CORRUPT` at start, and fails only the offending
request on `DATA`. Codes are SQLite's primary result codes (https://sqlite.org/rescode.html);
extended codes keep the primary code in their low byte.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import Enum

SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_NOMEM = 7
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_PROTOCOL = 15
SQLITE_NOTADB = 26


class Failure(Enum):
    BUSY = "busy"
    DISK_FULL = "disk-full"
    CORRUPT = "corrupt"
    STORAGE = "storage-error"
    DATA = "data"


_BY_SQLITE_CODE = {
    SQLITE_BUSY: Failure.BUSY,
    SQLITE_LOCKED: Failure.BUSY,
    SQLITE_FULL: Failure.DISK_FULL,
    SQLITE_CORRUPT: Failure.CORRUPT,
    SQLITE_NOTADB: Failure.CORRUPT,
    SQLITE_IOERR: Failure.STORAGE,
    SQLITE_READONLY: Failure.STORAGE,
    SQLITE_CANTOPEN: Failure.STORAGE,
    SQLITE_NOMEM: Failure.STORAGE,
    SQLITE_PROTOCOL: Failure.STORAGE,
}


def classify(error: BaseException) -> Failure | None:
    """The kind of failure `error` is, or None when it is not a storage or data error (a bug)."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code is None:
            # Raised by the sqlite3 module itself (closed connection, misuse), not by SQLite.
            return Failure.STORAGE if isinstance(error, sqlite3.OperationalError) else Failure.DATA
        return _BY_SQLITE_CODE.get(code & 0xFF, Failure.DATA)
    if isinstance(error, OSError):
        return Failure.DISK_FULL if error.errno in (errno.ENOSPC, errno.EDQUOT) else Failure.STORAGE
    if isinstance(error, ValueError | TypeError | OverflowError):
        return Failure.DATA
    return None


def advice(failure: Failure, path: str) -> str:
    """What the operator should do about `failure` on the outbox at `path`."""
    if failure is Failure.DISK_FULL:
        return f"free space on the filesystem that holds {path}; the outbox recovers by itself"
    if failure is Failure.BUSY:
        return (
            f"another process holds a write lock on {path} (an sqlite3 shell or a stuck "
            "`plantgate outbox` command); end it"
        )
    if failure is Failure.CORRUPT:
        return f"{path} is damaged; restart the agent to move it aside and start a new outbox"
    return f"check the disk and the permissions of {path} and the system log"
