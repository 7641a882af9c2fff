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


async def test_commit_report_matches_store_when_producers_cancel(outbox: Outbox) -> None:
    reported: list[Record] = []
    outbox.on_commit = reported.extend

    # Cancel producers at different points: before their op is taken, and while a commit runs.
    for round_number in range(20):
        producer = asyncio.create_task(outbox.append(make_records(5, start=round_number * 5)))
        for _ in range(round_number % 4):
            await asyncio.sleep(0.001)
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
    await outbox.append(make_records(1, start=1000))

    assert outbox.depth() == len(reported)
    assert len({record.id for record in reported}) == len(reported)
    assert len(reported) % 5 == 1, "a cancelled append was stored in part"
