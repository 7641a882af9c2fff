"""The health server of a running agent: /healthz, /readyz, /status and /metrics over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from agent.config import Settings
from agent.supervisor import Agent
from outbox.records import Lane, Quality, Record, record_id
from tests.conftest import free_port


def settings_for(tmp_path: Path, central_url: str) -> Settings:
    return Settings(
        agent={"site": "plant1", "gateway_id": "gw-1"},
        outbox={"path": str(tmp_path / "outbox.sqlite"), "max_bytes": 10_000_000},
        central={"url": central_url, "timeout_s": 1, "retry_initial_s": 0.05, "retry_max_s": 0.2, "idle_poll_s": 0.05},
        health={"listen": "127.0.0.1", "port": 0},
        sources=[],
    )


def telemetry(number: int, lane: Lane = Lane.TELEMETRY) -> Record:
    return Record(
        id=record_id("line1", number),
        source="line1",
        lane=lane,
        kind="test.value",
        subject=f"tag{number % 3}",
        source_time=datetime.now(UTC),
        captured_at=datetime.now(UTC),
        quality=Quality.GOOD,
        payload={"value": number},
    )


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[str]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        assert agent.health is not None
        yield f"http://127.0.0.1:{agent.health.port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_status_shows_backlog_while_central_is_down(tmp_path: Path) -> None:
    # Nothing listens on this port, so every delivery attempt fails with a connection error.
    agent = Agent(settings_for(tmp_path, f"http://127.0.0.1:{free_port()}/v1/events"))

    async with running(agent) as base:
        assert agent.sink is not None
        await agent.sink.append([telemetry(n) for n in range(5)] + [telemetry(100, Lane.TRANSACTION)])
        for _ in range(100):
            status, document = await get_json(f"{base}/status")
            if document["forwarder"].get("consecutive_failures", 0) >= 2:
                break
            await asyncio.sleep(0.05)

    assert status == 200
    assert document["agent"]["site"] == "plant1"
    assert document["outbox"]["depth"] == {"transaction": 1, "event": 0, "telemetry": 5}
    assert document["outbox"]["oldest_age_s"]["telemetry"] >= 0
    assert document["outbox"]["dead_letters"] == 0
    assert document["outbox"]["shed_records"] == 0
    assert document["forwarder"]["consecutive_failures"] >= 2
    assert document["forwarder"]["last_error"]
    assert len(document["problems"]) == 1
    assert document["problems"][0].startswith("central endpoint unavailable: ")


async def test_metrics_match_status(tmp_path: Path) -> None:
    agent = Agent(settings_for(tmp_path, f"http://127.0.0.1:{free_port()}/v1/events"))

    async with running(agent) as base:
        assert agent.sink is not None
        await agent.sink.append([telemetry(n) for n in range(7)])
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
            text = await response.text()
            content_type = response.headers["Content-Type"]

    assert content_type.startswith("text/plain")
    assert 'plantgate_outbox_records{lane="telemetry"} 7.0' in text
    assert 'plantgate_outbox_records{lane="transaction"} 0.0' in text
    assert "plantgate_outbox_dead_letters 0.0" in text
    assert "plantgate_ready 1.0" in text
    assert "plantgate_forwarder_consecutive_failures" in text


async def test_healthz_and_readyz_answer_when_running(tmp_path: Path) -> None:
    agent = Agent(settings_for(tmp_path, f"http://127.0.0.1:{free_port()}/v1/events"))

    async with running(agent) as base:
        alive_status, alive = await get_json(f"{base}/healthz")
        ready_status, ready = await get_json(f"{base}/readyz")

    assert (alive_status, alive["status"]) == (200, "alive")
    assert (ready_status, ready["status"]) == (200, "ready")


async def test_health_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    settings = settings_for(tmp_path, "http://127.0.0.1:9/v1/events")
    settings = settings.model_copy(update={"health": settings.health.model_copy(update={"port": port})})

    try:
        with pytest.raises(OSError, match=f"health server cannot listen on 127.0.0.1:{port}"):
            await Agent(settings).run(asyncio.Event())
    finally:
        blocker.close()
        await blocker.wait_closed()
