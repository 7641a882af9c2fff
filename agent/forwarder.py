"""The forwarder: reads batches from the outbox and delivers them to the central endpoint.

Producers never wait on it: it reads the outbox and only changes it through the outbox's
writer queue, so an outage of the WAN leaves capture and storage at full speed. Each batch goes out as a
CloudEvents batch with an `Idempotency-Key` derived from its record ids; the rules for what
a response means live in `outbox.delivery`, and this loop carries them out:

- 2xx, or a status configured as "already delivered": the records are acknowledged.
- 413: the batch is split in halves and the batch limits lowered; one record that still
  gets 413 is dead-lettered.
- Any other 4xx, except 401/403/407 and those naming the endpoint (404, 415, ...): the batch is bisected until the rejected records are isolated,
  they are dead-lettered with the status and the start of the body, and the rest delivered.
- Everything else (no response, timeout, TLS failure, 401/403, 404, 408, 429, 5xx): the records
  stay, and the loop backs off, honouring `Retry-After`.

An outage is logged once when it starts, again when its cause changes or every
OUTAGE_SUMMARY_INTERVAL_S while it lasts, and once when it ends, never on every retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.central_client import CentralClient, DeliveryFailed
from agent.config import CentralSection
from outbox.backoff import backoff_delay
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.delivery import (
    Action,
    BatchLimits,
    Cause,
    Decision,
    DeliveryPlan,
    RetryPolicy,
    batch_key,
    classify_failure,
    classify_status,
    encode_batch,
    shrink_limits,
)
from outbox.records import StoredRecord, format_time
from outbox.store import Outbox

log = logging.getLogger(__name__)

# Causes that a person must fix (a credential, a certificate, a file, the URL): logged at
# ERROR. The others usually heal by themselves and are logged at WARNING.
OPERATOR_CAUSES = frozenset({Cause.CREDENTIALS, Cause.TLS, Cause.LOCAL, Cause.REDIRECT, Cause.ENDPOINT})
# During a long outage, a summary line is logged at most this often, so the log shows that
# the outage goes on without a line per retry.
OUTAGE_SUMMARY_INTERVAL_S = 600.0


@dataclass
class ForwarderStatus:
    """Delivery state for /status and /metrics. The forwarder updates it in place.

    `last_error` keeps the last failure after recovery; `wan_state` shows whether it is current.
    `batches_sent` counts POST requests, bisection steps included. `retries` counts attempts
    that ended in a retry. `last_progress_monotonic` is the monotonic time of the loop's last
    step (an attempt or an idle check). While backing off, `next_attempt_monotonic` is when
    the loop will try again, so a health check can tell a long backoff from a stuck loop.
    """

    wan_state: str = "unknown"
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_cause: Cause = Cause.NONE
    consecutive_failures: int = 0
    delivered_records: int = 0
    batches_sent: int = 0
    retries: int = 0
    dead_lettered: int = 0
    last_progress_monotonic: float | None = None
    next_attempt_monotonic: float | None = None
    outage_started_monotonic: float | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "wan_state": self.wan_state,
            "last_success_at": format_time(self.last_success_at) if self.last_success_at else None,
            "last_error": self.last_error,
            "last_cause": self.last_cause.value or None,
            "consecutive_failures": self.consecutive_failures,
            "delivered_records": self.delivered_records,
            "batches_sent": self.batches_sent,
            "retries": self.retries,
            "dead_lettered": self.dead_lettered,
            "last_progress_monotonic": self.last_progress_monotonic,
            "next_attempt_monotonic": self.next_attempt_monotonic,
        }


class Forwarder:
    """Delivery loop from the outbox to `central.url`, running until cancelled.

    Call `wake()` (or set `wakeup`) after appending records to deliver them without waiting
    for the next idle poll of `central.idle_poll_s`.
    """

    def __init__(
        self,
        outbox: Outbox,
        central: CentralSection,
        *,
        site: str,
        gateway_id: str,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.central = central
        self.site = site
        self.gateway_id = gateway_id
        self.clock = clock
        self.status = ForwarderStatus()
        self.wakeup = asyncio.Event()
        self.limits = BatchLimits(central.batch_max_records, int(central.batch_max_bytes))
        self._policy = RetryPolicy(
            initial_s=central.retry_initial_s,
            max_s=central.retry_max_s,
            already_delivered=frozenset(central.already_delivered_statuses),
        )
        self._rng = rng or random.Random()
        self._last_outage_log = 0.0
        self._outbox_failures = 0

    def wake(self) -> None:
        """Wake the loop: records were appended."""
        self.wakeup.set()

    async def run(self) -> None:
        """Deliver until cancelled, the only way it ends. WAN, receiver and outbox errors are retried."""
        async with CentralClient(self.central) as client:
            while True:
                delay = await self._step(client)
                if delay is not None:
                    self.status.next_attempt_monotonic = self.clock.monotonic() + delay
                    await self.clock.sleep(delay)
                    self.status.next_attempt_monotonic = None

    async def _step(self, client: CentralClient) -> float | None:
        """Deliver one batch, or wait for records. Return the delay before the next step, if any."""
        # Clear before reading, so an append that lands while the batch is read still wakes us.
        self.wakeup.clear()
        try:
            batch = await self.outbox.next_batch(self.limits.max_records, self.limits.max_bytes)
            if not batch:
                self._mark_progress()
                await self._wait_for_records()
                return None
            delay = await self._deliver(client, batch)
        except Exception as error:
            # An outbox error must not end delivery: the records are still on disk. The first
            # failure and each new message are logged with the traceback, repeats only counted.
            message = f"outbox: {type(error).__name__}: {error}"
            if message != self.status.last_error:
                log.exception("forwarder failed to read or update the outbox; retrying with backoff")
            self.status.last_error = message
            self._outbox_failures += 1
            return backoff_delay(self._outbox_failures - 1, self._policy.initial_s, self._policy.max_s, self._rng)
        self._outbox_failures = 0
        return delay

    async def _deliver(self, client: CentralClient, batch: list[StoredRecord]) -> float | None:
        """Send one batch chunk by chunk. Return the retry delay if a retryable outcome stopped it."""
        plan = DeliveryPlan(batch)
        while (chunk := plan.next_chunk()) is not None:
            decision, status = await self._attempt(client, chunk)
            self._mark_progress()
            seqs = [stored.seq for stored in chunk]

            if decision.action is Action.ACKNOWLEDGE:
                await self.outbox.acknowledge(seqs)
                self._on_reachable()
                self.status.delivered_records += len(chunk)
                self.status.last_success_at = self.clock.now()
                continue

            if decision.action is Action.RETRY:
                self._on_failure(decision)
                await self.outbox.count_attempt(seqs)
                return decision.delay

            # SPLIT or REJECT: the receiver is reachable and objects to these records.
            self._on_reachable()
            if len(chunk) == 1:
                await self.outbox.dead_letter(seqs, status, decision.reason)
                self.status.dead_lettered += 1
                log.warning(
                    "record dead-lettered: %s",
                    decision.reason,
                    extra={
                        "record_id": chunk[0].record.id,
                        "source": chunk[0].record.source,
                        "status": status,
                    },
                )
                continue
            if decision.action is Action.SPLIT:
                self._shrink_limits(chunk)
            plan.split(chunk)
        return None

    async def _attempt(self, client: CentralClient, chunk: list[StoredRecord]) -> tuple[Decision, int | None]:
        """POST one chunk and classify the outcome. Returns the decision and the HTTP status, if any."""
        key = batch_key(chunk)
        body = encode_batch(chunk, site=self.site, gateway_id=self.gateway_id)
        attempt = self.status.consecutive_failures
        self.status.batches_sent += 1
        try:
            response = await client.post(body, key)
        except DeliveryFailed as failure:
            decision = classify_failure(
                failure.cause, str(failure), attempt=attempt, policy=self._policy, rng=self._rng
            )
            log.debug("batch not delivered: %s", failure, extra={"batch_key": key, "records": len(chunk)})
            return decision, None

        decision = classify_status(
            response.status,
            retry_after=response.retry_after,
            attempt=attempt,
            policy=self._policy,
            now=self.clock.now(),
            body=response.body,
            rng=self._rng,
        )
        log.debug(
            "central endpoint responded with HTTP %d: %s",
            response.status,
            decision.action,
            extra={"batch_key": key, "records": len(chunk)},
        )
        return decision, response.status

    # -- state ------------------------------------------------------------------------------

    def _on_failure(self, decision: Decision) -> None:
        status = self.status
        status.consecutive_failures += 1
        status.retries += 1
        status.last_error = decision.reason
        level = logging.ERROR if decision.cause in OPERATOR_CAUSES else logging.WARNING
        now = self.clock.monotonic()

        if status.wan_state != "down":
            status.wan_state = "down"
            status.outage_started_monotonic = now
            self._last_outage_log = now
            log.log(
                level,
                "central endpoint unavailable: %s; records stay in the outbox, retrying with backoff",
                decision.reason,
                extra={"cause": decision.cause.value, "retry_in_s": round(decision.delay, 3)},
            )
        elif decision.cause is not status.last_cause:
            self._last_outage_log = now
            log.log(
                level,
                "central endpoint still unavailable, now: %s",
                decision.reason,
                extra={"cause": decision.cause.value, "failures": status.consecutive_failures},
            )
        elif now - self._last_outage_log >= OUTAGE_SUMMARY_INTERVAL_S:
            self._last_outage_log = now
            started = status.outage_started_monotonic
            log.log(
                level,
                "central endpoint still unavailable after %.0f s and %d failed attempts: %s",
                now - started if started is not None else 0.0,
                status.consecutive_failures,
                decision.reason,
                extra={"cause": decision.cause.value, "failures": status.consecutive_failures},
            )
        status.last_cause = decision.cause

    def _on_reachable(self) -> None:
        status = self.status
        if status.wan_state == "down":
            started = status.outage_started_monotonic
            duration = self.clock.monotonic() - started if started is not None else 0.0
            log.info(
                "central endpoint reachable again after %.1f s and %d failed attempts",
                duration,
                status.consecutive_failures,
                extra={"outage_s": round(duration, 3), "failures": status.consecutive_failures},
            )
        elif status.wan_state == "unknown":
            log.info("central endpoint reachable", extra={"url": str(self.central.url)})
        status.wan_state = "up"
        status.consecutive_failures = 0
        status.last_cause = Cause.NONE
        status.outage_started_monotonic = None

    def _shrink_limits(self, chunk: list[StoredRecord]) -> None:
        limits = shrink_limits(self.limits, chunk)
        if limits != self.limits:
            log.warning(
                "central endpoint returned 413 for %d records; batches now at most %d records, %d bytes",
                len(chunk),
                limits.max_records,
                limits.max_bytes,
            )
            self.limits = limits

    def _mark_progress(self) -> None:
        self.status.last_progress_monotonic = self.clock.monotonic()

    async def _wait_for_records(self) -> None:
        """Return when `wakeup` is set or after `central.idle_poll_s`, whichever comes first."""
        if self.wakeup.is_set():
            return
        waiter = asyncio.ensure_future(self.wakeup.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(self.central.idle_poll_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)
