"""Long runs: many forced reconnects, and a 40 s network cut (`pytest -m slow`)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tracemalloc

import pytest

from drivers.base import SourceState
from drivers.opcua.source import OpcUaSource
from tests.drivers.opcua.conftest import running, source_config, stored_records, wait_for
from tests.drivers.opcua.proxy import PausableProxy

pytestmark = pytest.mark.slow


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def resources() -> tuple[int, int, int]:
    """Tasks, file descriptors and traced bytes, after the loop and the collector settle."""
    await asyncio.sleep(0.3)
    gc.collect()
    return len(asyncio.all_tasks()), open_descriptors(), tracemalloc.get_traced_memory()[0]


async def test_hundred_forced_reconnects_hold_no_more_resources(simulator, outbox):
    # Captured log records hold tracebacks, and through them old clients; they would count as growth.
    logging.disable(logging.CRITICAL)
    tracemalloc.start()
    try:
        async with PausableProxy(simulator.port) as proxy:
            config = source_config(proxy.endpoint, reconnect_initial_s=0.05, reconnect_max_s=0.1, session_timeout_s=5)
            source = OpcUaSource(config)
            async with running(source, outbox):
                await wait_for(lambda: source.status.state == SourceState.CONNECTED)
                proxy.drop()
                await wait_for(lambda: source.status.connects == 2 and source.status.state == SourceState.CONNECTED)
                await wait_for(lambda: stored_records(outbox))
                tasks_first, fds_first, memory_first = await resources()

                for expected in range(3, 102):
                    proxy.drop()
                    await wait_for(
                        lambda n=expected: source.status.connects == n and source.status.state == SourceState.CONNECTED
                    )
                tasks_last, fds_last, memory_last = await resources()
                count_before = len(await stored_records(outbox))
                await wait_for(lambda: _more_than(outbox, count_before))

            # Sessions abandoned by the dropped connections expire on the server's side.
            sessions = simulator.server.iserver._external_sessions
            await wait_for(lambda: len(sessions) <= 1, limit_s=20)
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)

    assert source.status.connects == 101
    assert tasks_last <= tasks_first
    assert fds_last <= fds_first
    # Growth measured at about 150 KB here (asyncua 2.1, 2 cores); the bound leaves room for noise.
    assert memory_last - memory_first < 500_000, f"grew by {memory_last - memory_first} bytes"


async def _more_than(outbox, count):
    return len(await stored_records(outbox)) > count


async def test_values_flow_again_after_40_s_network_cut(simulator, outbox):
    async with PausableProxy(simulator.port) as proxy:
        source = OpcUaSource(source_config(proxy.endpoint, reconnect_max_s=5.0, timeout_s=3.0))
        async with running(source, outbox):
            await wait_for(lambda: _more_than(outbox, 4))
            proxy.pause()
            cut_at = asyncio.get_running_loop().time()
            await wait_for(lambda: source.status.state == SourceState.DISCONNECTED)
            await asyncio.sleep(40 - (asyncio.get_running_loop().time() - cut_at))
            before = await stored_records(outbox)
            proxy.resume()
            proxy.drop()  # connections from before the cut are dead for the peers, as after a real cut
            await wait_for(lambda: _more_than(outbox, len(before) + 4), limit_s=30)

    records = await stored_records(outbox)
    assert source.status.state == SourceState.STOPPED
    assert records[: len(before)] == before
    assert max(record.captured_at for record in records) > max(record.captured_at for record in before)
