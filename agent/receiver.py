"""A stand-in for the central integration layer: an aiohttp server that stores CloudEvents batches.

It accepts `application/cloudevents-batch+json` bodies (gzip too) on POST `/v1/events`,
stores each event once by (`source`, `id`) in its ledger (`agent.receiver_ledger`) and
returns `{"stored": n, "duplicates": d}`. GET `/v1/stats` returns the ledger's counts.

Faults can be injected from Python or over POST `/v1/control`:

    async with Receiver(tmp_path / "central.sqlite", host="127.0.0.1", port=0) as receiver:
        post_to(receiver.url)
        await receiver.go_down(5)               # listening socket closed, reopened after 5 s
        receiver.fail(503, seconds=10, retry_after="2")
        receiver.fail(400, times=3, reject_ids={"<record id>"})   # only batches with that id
        receiver.stall(delay_s=3, store_first=True)  # store, then reply 3 s late
        receiver.reset(times=1)                 # headers, part of the body, then a reset
        receiver.clear_faults()
        receiver.stats().unique_events, receiver.events(source="/plantgate/site/gw/press-7")

A fault lasts `seconds`, or `times` requests, or whichever ends first; with neither it lasts
until `clear_faults()`. A new fault replaces the current one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import ssl
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.receiver_ledger import Ledger, LedgerEvent, ReceiverStats
from outbox.records import format_time

log = logging.getLogger(__name__)

EVENTS_PATH = "/v1/events"
STATS_PATH = "/v1/stats"
CONTROL_PATH = "/v1/control"
MAX_BODY_BYTES = 64 * 1024**2
# In-flight requests get this long to finish when the receiver goes down or closes.
SHUTDOWN_GRACE_S = 0.2


@dataclass
class Fault:
    """A misbehaviour: `kind` is "status", "stall" or "reset". `until` is on the monotonic clock."""

    kind: str
    status: int = 503
    retry_after: str | None = None
    reject_ids: frozenset[str] = frozenset()
    delay_s: float = 0.0
    store_first: bool = False
    until: float | None = None
    remaining: int | None = None

    def applies(self, now: float, event_ids: Collection[str]) -> bool:
        if self.until is not None and now >= self.until:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        return not self.reject_ids or not self.reject_ids.isdisjoint(event_ids)


class Receiver:
    """The stand-in receiver. Use as `async with Receiver(db_path, host=..., port=0) as receiver:`.

    `port` 0 or None picks a free port. `url` is the events endpoint, stable across `go_down`
    (the port is kept). `token`, if set, is the bearer token every request must carry, and
    `ssl_context` makes the receiver serve HTTPS.
    """

    def __init__(
        self,
        db_path: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int | None = 0,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.host = host
        self.port = port or 0
        self.token = token
        self.ssl_context = ssl_context
        self.fault: Fault | None = None
        self._ledger: Ledger | None = None
        self._runner: web.AppRunner | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._reopen: asyncio.Task[None] | None = None
        self._control_tasks: set[asyncio.Task[None]] = set()

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Receiver:
        self._ledger = Ledger(self.db_path)
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop serving and close the ledger. Safe to call twice."""
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        for task in self._control_tasks:
            task.cancel()
        if self._task_group is not None:
            task_group, self._task_group = self._task_group, None
            await task_group.__aexit__(None, None, None)
        await self._shut()
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The events endpoint, the value for `central.url`."""
        return self.base_url + EVENTS_PATH

    @property
    def is_up(self) -> bool:
        return self._runner is not None

    async def _open(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(EVENTS_PATH, self._handle_events)
        app.router.add_get(STATS_PATH, self._handle_stats)
        app.router.add_post(CONTROL_PATH, self._handle_control)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            self.port = runner.addresses[0][1]

    async def _shut(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- faults -----------------------------------------------------------------------------

    async def go_down(self, seconds: float | None = None) -> None:
        """Close the listening socket and every open connection, so clients get "connection refused".

        The receiver listens again on the same port after `seconds`, or on `come_up()`.
        """
        if self._task_group is None:
            raise RuntimeError("the receiver is not running; use it as `async with Receiver(...)`")
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        await self._shut()
        log.info("receiver down", extra={"port": self.port, "seconds": seconds})
        if seconds is not None:
            self._reopen = self._task_group.create_task(self._reopen_after(seconds), name="receiver-reopen")

    async def come_up(self) -> None:
        """Listen again now, if down. Retries while another process uses the port."""
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        await self._open_again()

    async def _reopen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._reopen = None
        await self._open_again()

    async def _open_again(self) -> None:
        while self._runner is None:
            try:
                await self._open()
            except OSError as error:
                log.warning("receiver cannot listen on port %d again: %s; retrying", self.port, error)
                await asyncio.sleep(0.2)
        log.info("receiver up", extra={"port": self.port})

    def fail(
        self,
        status: int,
        seconds: float | None = None,
        *,
        times: int | None = None,
        retry_after: str | int | None = None,
        reject_ids: Collection[str] = (),
    ) -> None:
        """Respond with `status` without storing anything. With `reject_ids`, only batches that contain
        one of those ids fail, and the body lists them; other batches are stored as usual."""
        self.fault = Fault(
            kind="status",
            status=status,
            retry_after=None if retry_after is None else str(retry_after),
            reject_ids=frozenset(reject_ids),
            **_window(seconds, times),
        )

    def stall(
        self,
        delay_s: float,
        seconds: float | None = None,
        *,
        times: int | None = None,
        store_first: bool = False,
    ) -> None:
        """Reply `delay_s` late, storing the events after the wait.

        With `store_first`, the events are stored before the wait instead. A client that times
        out has then delivered them without knowing.
        """
        self.fault = Fault(kind="stall", delay_s=delay_s, store_first=store_first, **_window(seconds, times))

    def reset(self, seconds: float | None = None, *, times: int | None = None, store_first: bool = False) -> None:
        """Send the status line, headers and part of the body, then reset the connection."""
        self.fault = Fault(kind="reset", store_first=store_first, **_window(seconds, times))

    def clear_faults(self) -> None:
        self.fault = None

    # -- ledger -----------------------------------------------------------------------------

    def stats(self) -> ReceiverStats:
        return self._require_ledger().stats()

    def events(self, source: str | None = None) -> list[LedgerEvent]:
        """Return the stored events in arrival order, all of them or those of one CloudEvents `source`."""
        return self._require_ledger().events(source)

    def sources(self) -> list[str]:
        return self._require_ledger().sources()

    def _require_ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the receiver is not running; use it as `async with Receiver(...)`")
        return self._ledger

    # -- handlers ---------------------------------------------------------------------------

    async def _handle_events(self, request: web.Request) -> web.StreamResponse:
        ledger = self._require_ledger()
        ledger.count("requests")
        if "gzip" in request.headers.get("Content-Encoding", "").lower():
            ledger.count("gzip_requests")

        if self.token is not None and not _bearer_matches(request.headers.get("Authorization", ""), self.token):
            ledger.count("unauthorized_requests")
            return web.json_response({"error": "missing or invalid bearer token"}, status=401)

        try:
            events = _parse_batch(await request.read())
        except ValueError as error:
            ledger.count("invalid_requests")
            return web.json_response({"error": str(error)}, status=400)

        fault = self._take_fault({event["id"] for event in events})
        if fault is None:
            return self._store(request, events)
        ledger.count("faulted_requests")
        return await self._misbehave(request, fault, events)

    def _take_fault(self, event_ids: Collection[str]) -> Fault | None:
        fault = self.fault
        if fault is None or not fault.applies(time.monotonic(), event_ids):
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
        return fault

    async def _misbehave(self, request: web.Request, fault: Fault, events: list[dict[str, Any]]) -> web.StreamResponse:
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            rejected = sorted(fault.reject_ids.intersection(event["id"] for event in events))
            body = {"error": f"HTTP {fault.status} by fault injection", "rejected": rejected}
            return web.json_response(body, status=fault.status, headers=headers)

        if fault.kind == "stall":
            if fault.store_first:
                stored = self._store(request, events)
                await asyncio.sleep(fault.delay_s)
                return stored
            await asyncio.sleep(fault.delay_s)
            return self._store(request, events)

        if fault.store_first:
            self._store(request, events)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = 4096
        await response.prepare(request)
        await response.write(b'{"stored":')
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send an RST instead of a FIN: a real reset.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
        return response

    def _store(self, request: web.Request, events: list[dict[str, Any]]) -> web.Response:
        stored, duplicates = self._require_ledger().store(
            events, format_time(datetime.now(UTC)), request.headers.get("Idempotency-Key")
        )
        return web.json_response({"stored": stored, "duplicates": duplicates})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats().as_dict())

    async def _handle_control(self, request: web.Request) -> web.Response:
        try:
            command = await request.json()
            if not isinstance(command, dict):
                raise TypeError("the body must be a JSON object")
            return await self._apply_control(command)
        except (ValueError, TypeError, KeyError) as error:
            return web.json_response({"error": f"invalid control request: {error}"}, status=400)

    async def _apply_control(self, command: dict[str, Any]) -> web.Response:
        action = command.get("action")
        window = {"seconds": command.get("seconds"), "times": command.get("times")}
        if action == "fail":
            self.fail(
                int(command["status"]),
                **window,
                retry_after=command.get("retry_after"),
                reject_ids=list(command.get("reject_ids", [])),
            )
        elif action == "stall":
            self.stall(float(command["delay_s"]), **window, store_first=bool(command.get("store_first", False)))
        elif action == "reset":
            self.reset(**window, store_first=bool(command.get("store_first", False)))
        elif action == "clear":
            self.clear_faults()
        elif action == "down":
            seconds = command.get("seconds")
            if seconds is None:
                raise ValueError("'down' needs 'seconds', or the receiver could not be brought back over HTTP")
            task_group = self._task_group
            if task_group is None:
                raise ValueError("the receiver is closing")
            # Reply first: going down closes this very connection.
            task = task_group.create_task(self._go_down_soon(float(seconds)), name="receiver-control-down")
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)
        else:
            raise ValueError(f"unknown action {action!r}; expected fail, stall, reset, clear or down")
        return web.json_response({"ok": True, "action": action})

    async def _go_down_soon(self, seconds: float) -> None:
        await asyncio.sleep(0.05)
        await self.go_down(seconds)


def _window(seconds: float | None, times: int | None) -> dict[str, Any]:
    return {
        "until": None if seconds is None else time.monotonic() + seconds,
        "remaining": times,
    }


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _parse_batch(body: bytes) -> list[dict[str, Any]]:
    """Parse and check a CloudEvents JSON batch. Raises ValueError naming the first bad event."""
    try:
        batch = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the body is not JSON: {error}") from None
    if not isinstance(batch, list):
        raise ValueError("the body must be a JSON array of CloudEvents (application/cloudevents-batch+json)")

    for index, event in enumerate(batch):
        if not isinstance(event, dict):
            raise ValueError(f"event {index} is not a JSON object")
        if event.get("specversion") != "1.0":
            raise ValueError(f"event {index}: specversion must be '1.0', not {event.get('specversion')!r}")
        for name in ("id", "source", "type"):
            value = event.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"event {index}: required attribute {name!r} is missing or empty")
    return batch


async def serve_until_stopped(receiver: Receiver, stop: asyncio.Event) -> None:
    """Run `receiver` until `stop` is set (the CLI sets it on SIGINT or SIGTERM)."""
    async with receiver:
        print(f"receiver listening on {receiver.url} (ledger {receiver.db_path})", flush=True)
        await stop.wait()
