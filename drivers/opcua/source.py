"""The OPC UA source: subscribe to (or poll) the configured nodes and store every change.

One pass of the loop in `run` is one session: connect, resolve the addresses again (namespace
indices may have moved), create the subscriptions, then consume notifications until the
connection is lost. Consumers, the poller and the watchdog are children of one TaskGroup per
session, so losing the session ends all of them together. Then the source backs off with
jitter and starts a new session.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, OpcEvent, StatusChangeEvent

from drivers.base import RecordSink, Source, SourceState, SourceUnavailable
from drivers.opcua.addressing import AddressError, ResolvedNode, resolve_all
from drivers.opcua.config import OpcUaSourceConfig
from drivers.opcua.monitoring import all_nodes, chunk_size, keepalive_deadline_s, plan_groups
from drivers.opcua.polling import read_values
from drivers.opcua.security import SecurityRejected
from drivers.opcua.session import CONNECTION_ERRORS, OpcUaSession
from drivers.opcua.subscription import (
    ActiveSubscription,
    read_operation_limit,
    subscribe_events,
    subscribe_group,
)
from drivers.opcua.values import datachange_record, event_record
from outbox.backoff import Backoff
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.errors import OutboxFull, OutboxUnavailable
from outbox.records import Record

log = logging.getLogger(__name__)

# Notifications taken from the queue per append: small enough for a short commit, large
# enough that a burst of changes costs few commits.
APPEND_GROUP = 500
STORE_RETRY_S = 1.0


class ConnectionLost(Exception):
    """The session stopped working while connected; the source starts a new one."""


class OpcUaSource(Source):
    type = "opcua"

    def __init__(self, config: OpcUaSourceConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(config.name)
        self.config = config
        self.clock = clock
        self.backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        self.status.details.update({"endpoint": config.endpoint, "unresolved": [], "changes_dropped": 0})
        self._dropped_reported = 0
        self._failed_attempts = 0
        self._state_dir: tempfile.TemporaryDirectory[str] | None = None
        self._previous_token: str | None = None
        self._previous_subscriptions: list[int] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, sink: RecordSink) -> None:
        """Capture until cancelled, reconnecting with capped jittered backoff."""
        self._state_dir = tempfile.TemporaryDirectory(prefix="plantgate-opcua-")
        try:
            while True:
                try:
                    async with self._open_session() as session:
                        await self._serve(session, sink)
                except (SourceUnavailable, ConnectionLost, SecurityRejected) as error:
                    self._mark_disconnected(str(error))
                await self.clock.sleep(self.backoff.next_delay())
        finally:
            self._set_state(SourceState.STOPPED)
            self._state_dir.cleanup()
            self._state_dir = None

    async def sample(self) -> list[Record]:
        """Read every configured node once and return the records (nothing is stored)."""
        async with self._open_session() as session:
            assert session.client is not None
            resolved, failed = await resolve_all(session.client, all_nodes(self.config))
            for error in failed:
                log.warning("source %s: %s", self.name, error)
            limit = await self._read_limit(session.client)
            values = await read_values(session.client, [node.node_id for node in resolved], limit)
            now = self.clock.now()
            return [
                datachange_record(self.name, node.config.subject, node.config.address, value, now)
                for node, value in zip(resolved, values, strict=True)
            ]

    def _open_session(self) -> OpcUaSession:
        keepalive_s = self.config.publishing_interval_ms * self.config.keepalive_count / 1000
        probe_s = max(min(keepalive_s, 5.0), 0.5)
        session_timeout_s = max(self.config.session_timeout_s, 2 * keepalive_s * self.config.missed_keepalives)
        state_path = Path(self._state_dir.name) / "session.json" if self._state_dir else None
        return OpcUaSession(
            self.config, probe_interval_s=probe_s, session_timeout_s=session_timeout_s, state_path=state_path
        )

    async def _serve(self, session: OpcUaSession, sink: RecordSink) -> None:
        """Run one session until it is lost. Raises `ConnectionLost` or `SourceUnavailable`."""
        client = session.client
        assert client is not None
        try:
            await self._drop_previous_subscriptions(session)
            resolved, failed = await resolve_all(client, all_nodes(self.config))
            self._report_unresolved(failed)
            self._mark_connected()
            async with asyncio.TaskGroup() as group:
                subscriptions: list[ActiveSubscription] = []
                if self.config.mode == "polling":
                    group.create_task(self._poll(client, resolved, sink))
                else:
                    subscriptions = await self._subscribe(client, resolved)
                    self._previous_subscriptions = [
                        active.subscription.subscription_id
                        for active in subscriptions
                        if active.subscription.subscription_id is not None
                    ]
                    for active in subscriptions:
                        group.create_task(self._consume(active, sink))
                group.create_task(self._watch(session, subscriptions))
        except* ConnectionLost as errors:
            session.keep_session = True
            raise errors.exceptions[0] from None
        except* SourceUnavailable as errors:
            raise errors.exceptions[0] from None
        except* CONNECTION_ERRORS as errors:
            session.keep_session = True
            error = errors.exceptions[0]
            raise ConnectionLost(f"{self.config.endpoint}: {error!r}") from error

    async def _drop_previous_subscriptions(self, session: OpcUaSession) -> None:
        """Delete the subscriptions of the previous connection if its session was reactivated,
        so the server stops sampling and queueing for items no client reads."""
        token, self._previous_token = self._previous_token, session.authentication_token
        stale, self._previous_subscriptions = self._previous_subscriptions, []
        if token is None or token != session.authentication_token or not stale:
            return
        assert session.client is not None
        log.debug("source %s: reactivated the previous session; deleting its %d subscription(s)", self.name, len(stale))
        try:
            await session.client.delete_subscriptions(stale)
        except ua.UaStatusCodeError as error:
            log.debug("source %s: deleting old subscriptions failed: %s", self.name, error)

    async def _subscribe(self, client: Client, resolved: list[ResolvedNode]) -> list[ActiveSubscription]:
        by_address = {node.config.address: node for node in resolved}
        limit = await self._read_limit(client, monitored_items=True)
        subscriptions = []
        failed: list[AddressError] = []
        for plan in plan_groups(self.config):
            active = await subscribe_group(client, self.config, plan, by_address, limit)
            failed.extend(active.failed)
            subscriptions.append(active)
        if self.config.events:
            namespaces = await client.get_namespace_array()
            active = await subscribe_events(client, self.config, namespaces)
            failed.extend(active.failed)
            subscriptions.append(active)
        if failed:
            self._report_unresolved(failed, append=True)
        return subscriptions

    async def _read_limit(self, client: Client, *, monitored_items: bool = False) -> int | None:
        limits = ua.ObjectIds
        object_id = (
            limits.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall
            if monitored_items
            else limits.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
        )
        return chunk_size(self.config.max_items_per_call, await read_operation_limit(client, object_id))

    # -- tasks of one session ----------------------------------------------------------------

    async def _consume(self, active: ActiveSubscription, sink: RecordSink) -> None:
        """Drain one subscription's notification queue into the sink, in groups."""
        queue = active.queue
        while True:
            batch = [await queue.get()]
            while len(batch) < APPEND_GROUP and not queue.empty():
                batch.append(queue.get_nowait())
            records = []
            for notification in batch:
                if notification is None:
                    raise ConnectionLost(f"subscription {active.name} was closed")
                record = self._record_for(active, notification)
                if record is not None:
                    records.append(record)
            self._note_dropped(active)
            if records:
                await self._store(sink, records)

    def _record_for(self, active: ActiveSubscription, notification: Any) -> Record | None:
        now = self.clock.now()
        if isinstance(notification, DataChangeEvent):
            target = active.items.get(notification.data.monitored_item.ClientHandle)
            if target is None:
                return None
            value = notification.data.monitored_item.Value
            return datachange_record(self.name, target.config.subject, target.config.address, value, now)
        if isinstance(notification, OpcEvent):
            event = notification.event
            spec = active.events.get(getattr(event, "server_handle", None) or 0)
            if spec is None:
                return None
            fields = {name: getattr(event, name, None) for name in spec.fields}
            return event_record(self.name, spec.subject, spec.notifier, fields, now)
        if isinstance(notification, StatusChangeEvent):
            status = notification.notification.Status
            if status.is_bad():
                # Part 4, 5.13.1.1: the server ended the subscription (for example its lifetime
                # expired while the client was away); only a new session rebuilds it.
                raise ConnectionLost(f"subscription {active.name} ended by the server: {status.name}")
        return None

    async def _poll(self, client: Client, resolved: list[ResolvedNode], sink: RecordSink) -> None:
        """Read every node each poll interval (for servers whose subscriptions misbehave)."""
        interval_s = self.config.poll_interval_ms / 1000
        limit = await self._read_limit(client)
        node_ids = [node.node_id for node in resolved]
        while True:
            started = self.clock.monotonic()
            values = await read_values(client, node_ids, limit)
            now = self.clock.now()
            records = [
                datachange_record(self.name, node.config.subject, node.config.address, value, now)
                for node, value in zip(resolved, values, strict=True)
            ]
            if records:
                # An unchanged value keeps its timestamps, hence its id: the outbox skips it.
                await self._store(sink, records)
            await self.clock.sleep(interval_s - (self.clock.monotonic() - started))

    async def _watch(self, session: OpcUaSession, subscriptions: Sequence[ActiveSubscription]) -> None:
        """Raise `ConnectionLost` when the session probe fails or a subscription misses its
        keep-alives, which also catches a hung server whose TCP connection stays open.

        Ages are measured on `time.monotonic`, the clock asyncua stamps publish responses with."""

        deadlines = [active.deadline_s for active in subscriptions] or [
            keepalive_deadline_s(self.config.publishing_interval_ms, self.config.keepalive_count, 1)
        ]
        check_every = max(min(min(deadlines) / 4, 1.0), 0.05)
        started = time.monotonic()
        while True:
            if session.lost.is_set():
                raise ConnectionLost(f"{self.config.endpoint}: connection lost ({session.lost_reason})")
            now = time.monotonic()
            for active in subscriptions:
                age = active.publish_age_s(now)
                if age is None:
                    age = now - started
                if age > active.deadline_s:
                    raise ConnectionLost(
                        f"{self.config.endpoint}: no publish response for {age:.1f} s on subscription "
                        f"{active.name} (keep-alive deadline {active.deadline_s:.1f} s)"
                    )
            await self.clock.sleep(check_every)

    async def _store(self, sink: RecordSink, records: list[Record]) -> None:
        """Append the records, waiting while the outbox is unavailable so none is lost."""
        failures = 0
        while True:
            try:
                await sink.append(records)
            except OutboxUnavailable as error:
                failures += 1
                if failures == 1:
                    log.warning(
                        "source %s: outbox unavailable, holding %d record(s): %s",
                        self.name,
                        len(records),
                        error,
                    )
                await self.clock.sleep(STORE_RETRY_S)
                continue
            except OutboxFull as error:
                log.warning("source %s: outbox full, %d record(s) not stored: %s", self.name, len(records), error)
                self.status.details["changes_dropped"] += len(records)
                return
            break
        self.status.records_captured += len(records)
        self.status.last_value_at = self.clock.now()

    # -- status ------------------------------------------------------------------------------

    def _note_dropped(self, active: ActiveSubscription) -> None:
        dropped = active.queue.dropped
        if dropped == 0:
            return
        active.queue.dropped = 0
        self.status.details["changes_dropped"] += dropped
        total = self.status.details["changes_dropped"]
        if total >= 2 * max(self._dropped_reported, 1):
            log.warning("source %s: %d value change(s) dropped so far: the outbox could not keep up", self.name, total)
            self._dropped_reported = total

    def _report_unresolved(self, failed: Sequence[AddressError], *, append: bool = False) -> None:
        addresses = [error.address for error in failed]
        previous = self.status.details["unresolved"] if append else []
        current = sorted({*previous, *addresses})
        if current != sorted(self.status.details["unresolved"]):
            for error in failed:
                log.warning("source %s: %s; the other nodes keep flowing", self.name, error)
        self.status.details["unresolved"] = current

    def _set_state(self, state: SourceState, error: str | None = None) -> None:
        if self.status.state != state:
            self.status.state = state
            self.status.state_since = self.clock.now()
        if error is not None:
            self.status.last_error = error

    def _mark_connected(self) -> None:
        self.status.connects += 1
        self.backoff.reset()
        if self._failed_attempts:
            log.info(
                "source %s: connected to %s after %d failed attempt(s)",
                self.name,
                self.config.endpoint,
                self._failed_attempts,
            )
        else:
            log.info("source %s: connected to %s", self.name, self.config.endpoint)
        self._failed_attempts = 0
        self._set_state(SourceState.CONNECTED)

    def _mark_disconnected(self, reason: str) -> None:
        self._failed_attempts += 1
        if self.status.state != SourceState.DISCONNECTED:
            log.warning("source %s: disconnected: %s; reconnecting with backoff", self.name, reason)
        self._set_state(SourceState.DISCONNECTED, reason)
