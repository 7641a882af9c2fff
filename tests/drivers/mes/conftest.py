"""Fixtures for the MES source: a real outbox file and a running MesSource on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drivers.mes.config import MesSourceConfig
from drivers.mes.source import MesSource
from outbox.store import Outbox

TOKEN = "test-token-4f2a"


def goods_movement(transaction_id: str = "GM-1", **changes: Any) -> dict[str, Any]:
    return {
        "type": "goods_movement",
        "transaction_id": transaction_id,
        "material": "RM-4711",
        "batch": "B2026-0117",
        "quantity": "12.500",
        "unit": "KG",
        "movement_type": "261",
        "from_location": "WH01",
        "to_location": "LINE1",
        "posted_at": "2026-03-02T07:15:00+01:00",
        "order": "1000123",
        **changes,
    }


def production_confirmation(transaction_id: str = "PC-1", **changes: Any) -> dict[str, Any]:
    return {
        "type": "production_confirmation",
        "transaction_id": transaction_id,
        "order": "1000123",
        "operation": "0010",
        "work_center": "PRESS-04",
        "yield_quantity": 480,
        "scrap_quantity": "2.5",
        "unit": "PC",
        "start_time": "2026-03-02T06:00:00+01:00",
        "end_time": "2026-03-02T07:00:00+01:00",
        "final": False,
        **changes,
    }


def quality_result(transaction_id: str = "QR-1", **changes: Any) -> dict[str, Any]:
    return {
        "type": "quality_result",
        "transaction_id": transaction_id,
        "inspection_lot": "890000001234",
        "characteristic": "DIAMETER",
        "value": "-0.020",
        "unit": "MM",
        "result": "accepted",
        "measured_at": "2026-03-02T07:20:00Z",
        **changes,
    }


def mes_config(
    tmp_path: Path, *, http: bool = True, drop: dict[str, Any] | None = None, **http_changes: Any
) -> MesSourceConfig:
    token_file = tmp_path / "mes.token"
    token_file.write_text(TOKEN + "\n")
    data: dict[str, Any] = {"type": "mes", "name": "mes-line1", "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2}
    if http:
        data["http"] = {"listen": "127.0.0.1", "port": 0, "token_file": str(token_file), **http_changes}
    if drop is not None:
        data["drop"] = {"folder": str(tmp_path / "drop"), "settle_s": 0.2, "poll_interval_s": 0.05, **drop}
    return MesSourceConfig(**data)


@dataclass
class RunningSource:
    source: MesSource
    outbox: Outbox
    session: aiohttp.ClientSession
    url: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}", **extra}

    async def post(self, body: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        headers = kwargs.pop("headers", None) or self.headers()
        async with self.session.post(self.url, json=body, headers=headers, **kwargs) as response:
            return response.status, dict(response.headers), await _body(response)

    async def post_raw(self, data: bytes | str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        async with self.session.post(self.url, data=data, headers=headers) as response:
            return response.status, dict(response.headers), await _body(response)

    async def get(self, transaction_id: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.url}/{transaction_id}", headers=self.headers()) as response:
            return response.status, await _body(response)


async def _body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    if "json" in response.headers.get("Content-Type", ""):
        import json

        return json.loads(text)
    return text


@contextlib.asynccontextmanager
async def run_source(config: MesSourceConfig, outbox_path: Path, **outbox_options: Any) -> AsyncIterator[RunningSource]:
    """Open an outbox, run the source on it and yield once the HTTP API listens (if configured)."""
    async with Outbox(outbox_path, **outbox_options) as outbox, aiohttp.ClientSession() as session:
        source = MesSource(config)
        task = asyncio.create_task(source.run(outbox))
        try:
            url = ""
            if config.http is not None:
                port = await asyncio.wait_for(source.wait_listening(), 10)
                url = f"http://127.0.0.1:{port}/v1/transactions"
            yield RunningSource(source, outbox, session, url)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
def source_factory(tmp_path: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[RunningSource]]:
    def factory(config: MesSourceConfig | None = None, **outbox_options: Any) -> Any:
        return run_source(config or mes_config(tmp_path), tmp_path / "outbox.sqlite", **outbox_options)

    return factory
