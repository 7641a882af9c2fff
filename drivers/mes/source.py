"""The MES source: runs the HTTP API and the drop folder watcher of one configured MES input.

Each input keeps itself up: when the port cannot be bound, the token file cannot be read or
the folder cannot be listed, it reports the error in `status`, backs off and tries again,
while the other input goes on.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from drivers.base import RecordSink, Source, SourceState
from drivers.mes.config import MesDropConfig, MesHttpConfig, MesSourceConfig
from drivers.mes.drop_folder import DropFolder
from drivers.mes.http_api import TransactionApi
from outbox.backoff import Backoff
from outbox.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# On stop, requests already waiting for their commit get this long to finish and get a response.
SHUTDOWN_TIMEOUT_S = 10.0


class TokenFileError(Exception):
    """The bearer token file is missing, unreadable or empty."""


def read_token(path: Path) -> str:
    """Read the bearer token: the file's content without surrounding whitespace.

    Raises TokenFileError naming the file (never the token).
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TokenFileError(f"http.token_file {path} not found; create it with the token the MES sends") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"http.token_file {path} cannot be read: {error}") from error
    if not token:
        raise TokenFileError(f"http.token_file {path} is empty; write the token the MES sends into it")
    return token


class MesSource(Source):
    type = "mes"

    def __init__(self, config: MesSourceConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(config.name)
        self.config = config
        self.clock = clock
        self.api: TransactionApi | None = None
        self.drop: DropFolder | None = None
        self.bound_port: int | None = None
        self.bound_address: str | None = None
        self._listening = asyncio.Event()
        self._input_errors: dict[str, str | None] = {}

    async def wait_listening(self) -> int:
        """Wait until the HTTP API accepts connections; returns the bound port."""
        await self._listening.wait()
        assert self.bound_port is not None
        return self.bound_port

    async def run(self, sink: RecordSink) -> None:
        """Serve the HTTP API and watch the drop folder until cancelled."""
        self._set_state(SourceState.STARTING)
        async with asyncio.TaskGroup() as group:
            if self.config.http is not None:
                self._input_errors["http"] = "starting"
                group.create_task(self._keep_http(self.config.http, sink), name=f"mes-http-{self.name}")
            if self.config.drop is not None:
                self._input_errors["drop"] = "starting"
                group.create_task(self._keep_drop(self.config.drop, sink), name=f"mes-drop-{self.name}")

    # -- HTTP -----------------------------------------------------------------------------

    async def _keep_http(self, config: MesHttpConfig, sink: RecordSink) -> None:
        backoff = Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        while True:
            try:
                await self._serve_http(config, sink, backoff)
            except (OSError, TokenFileError) as error:
                self._input_failed("http", f"HTTP API on {config.listen}:{config.port}: {error}")
            await self.clock.sleep(backoff.next_delay())

    async def _serve_http(self, config: MesHttpConfig, sink: RecordSink, backoff: Backoff) -> None:
        token = await asyncio.to_thread(read_token, config.token_file)
        self.api = TransactionApi(
            self.name,
            sink,
            token,
            max_body_bytes=int(config.max_body_bytes),
            retry_after_s=config.retry_after_s,
            clock=self.clock,
        )
        self.api.on_request = self._publish_counters
        runner = web.AppRunner(
            self.api.build_app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.listen, config.port, reuse_address=True)
            await site.start()
            address = runner.addresses[0]
            self.bound_address, self.bound_port = str(address[0]), int(address[1])
            self.status.details["http_port"] = self.bound_port
            self.status.details["http_address"] = f"{self.bound_address}:{self.bound_port}"
            self._input_up("http", f"MES HTTP API listening on {self.bound_address}:{self.bound_port}")
            if config.listens_everywhere:
                log.warning(
                    "MES HTTP API listens on every interface (%s); set http.listen to one interface's address",
                    config.listen,
                    extra={"source": self.name},
                )
            backoff.reset()
            self._listening.set()
            await asyncio.Event().wait()
        finally:
            self._listening.clear()
            await runner.cleanup()

    # -- drop folder ----------------------------------------------------------------------

    async def _keep_drop(self, config: MesDropConfig, sink: RecordSink) -> None:
        backoff = Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        self.drop = DropFolder(config, self.name, sink, self.clock)
        self.status.details["drop_folder"] = str(config.folder)
        while True:
            try:
                await self.drop.prepare()
                self._input_up("drop", f"MES drop folder watched: {config.folder}")
                backoff.reset()
                while True:
                    await self.drop.scan_once()
                    self._publish_counters()
                    await self.clock.sleep(config.poll_interval_s)
            except OSError as error:
                self._input_failed("drop", f"drop folder {config.folder}: {error}")
            await self.clock.sleep(backoff.next_delay())

    # -- status ---------------------------------------------------------------------------

    def _publish_counters(self) -> None:
        details: dict[str, Any] = self.status.details
        captured = 0
        if self.api is not None:
            counters = self.api.counters
            details["http_transactions_created"] = counters.transactions_created
            details["http_transactions_duplicate"] = counters.transactions_duplicate
            details["http_requests_rejected"] = counters.rejected
            details["http_requests_unavailable"] = counters.unavailable
            captured += counters.transactions_created
        if self.drop is not None:
            drop_counters = self.drop.counters
            details["drop_files_processed"] = drop_counters.files_processed
            details["drop_files_rejected"] = drop_counters.files_rejected
            details["drop_transactions_created"] = drop_counters.transactions_created
            details["drop_transactions_duplicate"] = drop_counters.transactions_duplicate
            details["drop_outbox_rejections"] = drop_counters.outbox_rejections
            captured += drop_counters.transactions_created
        if captured > self.status.records_captured:
            self.status.last_value_at = self.clock.now()
        self.status.records_captured = captured
        errors = [error for error in (self._input_errors.get("http"), self._input_errors.get("drop")) if error]
        errors += [
            e for e in (self.api.last_error if self.api else None, self.drop.last_error if self.drop else None) if e
        ]
        self.status.last_error = errors[0] if errors else None

    def _input_up(self, name: str, message: str) -> None:
        log.info(message, extra={"source": self.name})
        self._input_errors[name] = None
        self.status.connects += 1
        if not any(self._input_errors.values()):
            self._set_state(SourceState.CONNECTED)
        self._publish_counters()

    def _input_failed(self, name: str, message: str) -> None:
        if self._input_errors.get(name) != message:
            log.error("%s; retrying with backoff", message, extra={"source": self.name})
        self._input_errors[name] = message
        self.status.last_error = message
        self._set_state(SourceState.DISCONNECTED)

    def _set_state(self, state: SourceState) -> None:
        if self.status.state != state:
            self.status.state = state
            self.status.state_since = self.clock.now()
