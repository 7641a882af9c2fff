"""Append one transaction to an outbox, then print ACCEPTED: the producer side of the power-loss test.

Run as `python -m tests.outbox.append_one PATH [--unsafe]`. With `--unsafe` the connections use
`synchronous = NORMAL`, which skips the sync at commit in WAL mode, so the test can show that it
notices a missing sync.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from outbox.records import Lane
from outbox.store import Outbox
from tests.outbox.conftest import make_record


async def main(path: Path, unsafe: bool) -> None:
    outbox = Outbox(path, housekeeping_interval_s=3600)
    if unsafe:
        pragmas = outbox._pragmas

        def pragmas_without_sync() -> list[str]:
            return [*pragmas(), "PRAGMA synchronous = NORMAL"]

        outbox._pragmas = pragmas_without_sync  # type: ignore[method-assign]
    async with outbox:
        # Open and warm the file first, so the traced commit is the record's own.
        await outbox.append([make_record(number=0, lane=Lane.EVENT)])
        os.write(1, b"APPENDING\n")
        await outbox.append([make_record(number=1, lane=Lane.TRANSACTION)])
        os.write(1, b"ACCEPTED\n")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), "--unsafe" in sys.argv[2:]))
