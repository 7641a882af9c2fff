"""The stand-in receiver: ledger, counts, faults and the `plantgate receiver` command, over real HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from agent.receiver import Receiver

REPO_ROOT = Path(__file__).resolve().parents[2]
BATCH_TYPE = "application/cloudevents-batch+json"


def event(event_id: str, source: str = "/plantgate/site/gw/press-7", **extra: object) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": "com.plantgate.telemetry.opcua.datachange",
        "data": {"value": 1},
        **extra,
    }


async def post(url: str, body: object, **headers: str) -> tuple[int, dict[str, object], dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers={"Content-Type": BATCH_TYPE, **headers}) as response,
    ):
        return response.status, await response.json(content_type=None), dict(response.headers)


@pytest.fixture
async def receiver(tmp_path):
    async with Receiver(tmp_path / "central.sqlite", host="127.0.0.1", port=0) as running:
        yield running


async def test_receiver_stores_each_event_once(receiver):
    status, reply, _ = await post(receiver.url, [event("a"), event("b")])
    assert status == 200
    assert reply == {"stored": 2, "duplicates": 0}

    status, reply, _ = await post(receiver.url, [event("b"), event("c")])
    assert status == 200
    assert reply == {"stored": 1, "duplicates": 1}

    stats = receiver.stats()
    assert stats.unique_events == 3
    assert stats.duplicates == 1
    assert stats.requests == 2
    assert [item.id for item in receiver.events()] == ["a", "b", "c"]


async def test_receiver_keys_events_by_source_and_id(receiver):
    await post(receiver.url, [event("same", source="/plantgate/s/g/one"), event("same", source="/plantgate/s/g/two")])

    assert receiver.stats().unique_events == 2
    assert [item.source for item in receiver.events()] == ["/plantgate/s/g/one", "/plantgate/s/g/two"]
    assert [item.id for item in receiver.events(source="/plantgate/s/g/two")] == ["same"]
    assert receiver.sources() == ["/plantgate/s/g/one", "/plantgate/s/g/two"]


async def test_receiver_accepts_gzip_body(receiver):
    body = gzip.compress(json.dumps([event("z1"), event("z2")]).encode())
    status, reply, _ = await post(receiver.url, body, **{"Content-Encoding": "gzip"})

    assert status == 200
    assert reply["stored"] == 2
    assert receiver.stats().gzip_requests == 1
    assert receiver.events()[0].data == {"value": 1}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        ({"id": "x"}, "JSON array"),
        ([event("ok"), "text"], "event 1 is not a JSON object"),
        ([{**event("v"), "specversion": "0.3"}], "specversion"),
        ([{**event("v"), "id": ""}], "'id'"),
        ([{k: v for k, v in event("v").items() if k != "source"}], "'source'"),
    ],
)
async def test_receiver_rejects_invalid_batch(receiver, body, message):
    status, reply, _ = await post(receiver.url, body)

    assert status == 400
    assert message in reply["error"]
    assert receiver.stats().invalid_requests == 1
    assert receiver.stats().unique_events == 0


async def test_receiver_requires_configured_token(tmp_path):
    async with Receiver(tmp_path / "central.sqlite", token="s3cret") as receiver:
        status, _, _ = await post(receiver.url, [event("t")])
        assert status == 401
        status, _, _ = await post(receiver.url, [event("t")], Authorization="Bearer wrong")
        assert status == 401
        status, _, _ = await post(receiver.url, [event("t")], Authorization="Bearer s3cret")
        assert status == 200
        assert receiver.stats().unauthorized_requests == 2
        assert receiver.stats().unique_events == 1


async def test_receiver_fail_answers_status_for_times(receiver):
    receiver.fail(503, times=2, retry_after=7)

    for _ in range(2):
        status, _, headers = await post(receiver.url, [event("f")])
        assert status == 503
        assert headers["Retry-After"] == "7"
    status, _, _ = await post(receiver.url, [event("f")])

    assert status == 200
    assert receiver.stats().faulted_requests == 2
    assert receiver.stats().unique_events == 1


async def test_receiver_fail_with_reject_ids_only_hits_those(receiver):
    receiver.fail(400, reject_ids={"bad"})

    status, reply, _ = await post(receiver.url, [event("good1"), event("bad")])
    assert status == 400
    assert reply["rejected"] == ["bad"]
    status, _, _ = await post(receiver.url, [event("good1"), event("good2")])

    assert status == 200
    assert [item.id for item in receiver.events()] == ["good1", "good2"]


async def test_receiver_fail_for_seconds_expires(receiver):
    receiver.fail(500, seconds=0.2)
    status, _, _ = await post(receiver.url, [event("e")])
    assert status == 500

    await asyncio.sleep(0.3)
    status, _, _ = await post(receiver.url, [event("e")])
    assert status == 200


async def test_receiver_go_down_refuses_connections(receiver):
    port = receiver.port
    await receiver.go_down()

    with pytest.raises(aiohttp.ClientConnectorError):
        await post(receiver.url, [event("d")])
    await receiver.come_up()
    status, _, _ = await post(receiver.url, [event("d")])

    assert receiver.port == port
    assert status == 200


async def test_receiver_go_down_drops_open_connections(receiver):
    async with aiohttp.ClientSession() as session:
        async with session.post(receiver.url, json=[event("k1")]) as response:
            assert response.status == 200
        await receiver.go_down(0.3)

        with pytest.raises(aiohttp.ClientError):
            async with session.post(receiver.url, json=[event("k2")]) as response:
                await response.read()
        await asyncio.sleep(0.5)
        async with session.post(receiver.url, json=[event("k3")]) as response:
            assert response.status == 200

    assert [item.id for item in receiver.events()] == ["k1", "k3"]


async def test_receiver_stall_stores_before_late_reply(receiver):
    receiver.stall(delay_s=2.0, times=1, store_first=True)

    with pytest.raises(TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            async with session.post(receiver.url, json=[event("s")]) as response:
                await response.read()

    assert receiver.stats().unique_events == 1


async def test_receiver_reset_cuts_response(receiver):
    receiver.reset(times=1)

    with pytest.raises(aiohttp.ClientPayloadError):
        async with aiohttp.ClientSession() as session:
            async with session.post(receiver.url, json=[event("r")]) as response:
                assert response.status == 200
                await response.read()

    assert receiver.stats().unique_events == 0


async def test_receiver_stats_and_control_endpoints(receiver):
    base = receiver.base_url
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/control", json={"action": "fail", "status": 429, "times": 1}) as reply:
            assert reply.status == 200
        async with session.post(receiver.url, json=[event("c")]) as response:
            assert response.status == 429
        async with session.post(f"{base}/v1/control", json={"action": "explode"}) as reply:
            assert reply.status == 400
            assert "unknown action" in (await reply.json())["error"]
        async with session.post(f"{base}/v1/control", json={"action": "down", "seconds": 0.3}) as reply:
            assert reply.status == 200
        await asyncio.sleep(0.15)
        assert not receiver.is_up
        await asyncio.sleep(0.5)
        async with session.post(receiver.url, json=[event("c")]) as response:
            assert response.status == 200
        async with session.get(f"{base}/v1/stats") as reply:
            stats = await reply.json()

    assert stats["unique_events"] == 1
    assert stats["requests"] == 2
    assert stats["faulted_requests"] == 1


async def test_receiver_closes_right_after_control_down(tmp_path):
    async with Receiver(tmp_path / "central.sqlite") as receiver:
        async with aiohttp.ClientSession() as session:
            command = {"action": "down", "seconds": 5}
            async with session.post(f"{receiver.base_url}/v1/control", json=command) as reply:
                assert reply.status == 200

    assert not receiver.is_up


async def test_receiver_keeps_ledger_across_restart(tmp_path):
    async with Receiver(tmp_path / "central.sqlite") as receiver:
        await post(receiver.url, [event("p1")])
    async with Receiver(tmp_path / "central.sqlite") as receiver:
        await post(receiver.url, [event("p1"), event("p2")])
        stats = receiver.stats()

    assert stats.unique_events == 2
    assert stats.duplicates == 1
    assert stats.requests == 2


async def test_receiver_close_twice_is_safe(tmp_path):
    receiver = Receiver(tmp_path / "central.sqlite")
    async with receiver:
        pass
    await receiver.close()


def test_receiver_command_serves_until_sigterm(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "receiver", "--port", "0", "--db", str(tmp_path / "central.sqlite")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "receiver listening on http://127.0.0.1:" in line
        url = line.split()[3]

        status, reply, _ = asyncio.run(post(url, [event("cli")]))
        assert status == 200
        assert reply["stored"] == 1

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
