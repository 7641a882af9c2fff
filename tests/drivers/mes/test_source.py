"""The MES source keeps each input up: it reports a failure, backs off and recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from drivers.base import SourceState
from drivers.mes.source import MesSource
from outbox.store import Outbox
from tests.drivers.mes.conftest import TOKEN, mes_config


async def wait_for_state(source: MesSource, state: SourceState) -> None:
    for _ in range(200):
        if source.status.state == state:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"source stayed {source.status.state}, last error {source.status.last_error}")


async def test_missing_token_file_reported_then_recovered(tmp_path: Path) -> None:
    config = mes_config(tmp_path)
    token_file = tmp_path / "mes.token"
    token_file.unlink()
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        source = MesSource(config)
        task = asyncio.create_task(source.run(outbox))
        try:
            await wait_for_state(source, SourceState.DISCONNECTED)
            error = source.status.last_error or ""
            token_file.write_text(TOKEN)
            await asyncio.wait_for(source.wait_listening(), 10)
            await wait_for_state(source, SourceState.CONNECTED)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert "token_file" in error
    assert "not found" in error
    assert source.status.last_error is None


async def test_port_in_use_reported_then_recovered(tmp_path: Path) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    config = mes_config(tmp_path, port=port)
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        source = MesSource(config)
        task = asyncio.create_task(source.run(outbox))
        try:
            await wait_for_state(source, SourceState.DISCONNECTED)
            error = source.status.last_error or ""
            blocker.close()
            bound = await asyncio.wait_for(source.wait_listening(), 10)
        finally:
            blocker.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert f"127.0.0.1:{port}" in error
    assert bound == port


async def test_unwritable_drop_folder_does_not_stop_http(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    config = mes_config(tmp_path, drop={"folder": str(tmp_path / "file" / "drop")})
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        source = MesSource(config)
        task = asyncio.create_task(source.run(outbox))
        try:
            port = await asyncio.wait_for(source.wait_listening(), 10)
            await wait_for_state(source, SourceState.DISCONNECTED)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert port > 0
    assert "drop folder" in (source.status.last_error or "")
