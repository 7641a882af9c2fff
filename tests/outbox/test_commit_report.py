"""`Outbox.on_commit`: every stored record is reported once, even if its producer stopped waiting."""

from __future__ import annotations

import asyncio

from outbox.records import Record
from outbox.store import Outbox
from tests.outbox.conftest import make_records


async def test_commit_report_lists_stored_records_once(outbox: Outbox) -> None:
    reported: list[Record] = []
    outbox.on_commit = reported.extend

    await outbox.append(make_records(3))
    await outbox.append(make_records(4))  # ids 0-2 are held already; only id 3 is new

    assert [record.subject for record in reported] == ["item-0", "item-1", "item-2", "item-3"]


async def test_commit_report_includes_cancelled_producer(outbox: Outbox) -> None:
    reported: list[Record] = []
    outbox.on_commit = reported.extend
    records = make_records(20)

    producer = asyncio.create_task(outbox.append(records))
    await asyncio.sleep(0)  # the append is queued; cancel the producer while the commit runs
    producer.cancel()
    await outbox.append(make_records(1, start=100))

    assert producer.cancelled()
    assert outbox.depth() == 21
    assert len(reported) == 21
