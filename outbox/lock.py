"""An exclusive lock on an outbox file, so two agents never forward from one outbox.

Two agents on one file would each read the same batches and send every record twice. The lock
is an `flock` on `<outbox>.lock`. The kernel releases it when the process ends, however it ends,
so a SIGKILL or power cut never leaves a stale lock behind. Operator tools do not take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from outbox.errors import OutboxError


class OutboxInUse(OutboxError):
    """Another process holds the outbox's lock."""


class OutboxLock:
    """`with OutboxLock(path):` holds the lock; raises OutboxInUse naming the holder's pid."""

    def __init__(self, outbox_path: Path) -> None:
        self.path = outbox_path.with_name(outbox_path.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> OutboxLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutboxInUse(
                f"outbox {self.path.with_suffix('')} is in use by another plantgate process (pid {holder}). "
                f"Stop that process, or give this one its own outbox.path."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Release the lock. Safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
