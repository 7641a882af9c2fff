"""Delivery decisions for the forwarder, as plain functions: what an HTTP outcome means, how a
batch is encoded on the wire, its idempotency key, and how a rejected batch is bisected.

The forwarder (`agent.forwarder`) only carries these decisions out, so every rule here is
covered by table tests without a network.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import quote

from outbox.backoff import backoff_delay
from outbox.records import CLOCK_SET_AFTER, StoredRecord, format_time

CONTENT_TYPE = "application/cloudevents-batch+json"
EVENT_TYPE_PREFIX = "com.plantgate"
# 4xx statuses that describe the request target or protocol, never the records in the body. A
# wrong central.url (404) must not dead-letter the whole outbox one record at a time, so these
# are retried like 401 and 403 (RFC 9110, section 15.5, defines each status).
ENDPOINT_STATUSES = frozenset({404, 405, 406, 410, 411, 414, 415, 417, 421, 426, 428, 431})
# The receiver's body is kept with a dead letter up to this many characters: enough for a
# validation message, small enough that a receiver that returns HTML pages does not bloat the file.
REASON_BODY_CHARS = 500


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    RETRY = "retry"
    SPLIT = "split"
    REJECT = "reject"


class Cause(StrEnum):
    """Reason class of a retried attempt. The forwarder logs each change of cause once."""

    NONE = ""
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    TLS = "tls"
    CREDENTIALS = "credentials"
    SERVER = "server"
    THROTTLED = "throttled"
    REDIRECT = "redirect"
    ENDPOINT = "endpoint"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Decision:
    """Action for the records of one attempt. `delay` is in seconds, for RETRY only."""

    action: Action
    delay: float = 0.0
    cause: Cause = Cause.NONE
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float
    max_s: float
    already_delivered: frozenset[int] = frozenset({409})


# -- classification ---------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime, max_s: float) -> float | None:
    """Return the wait in seconds that a `Retry-After` header requests, or None if absent or invalid.

    Both forms of RFC 9110, section 10.2.3, are accepted: delay-seconds and an HTTP-date. The
    result is never negative (a date in the past means "now") and never above `max_s`, so a
    receiver cannot park the forwarder for days.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None

    if text.isdigit():
        seconds = float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), max_s)


def classify_status(
    status: int,
    *,
    retry_after: str | None,
    attempt: int,
    policy: RetryPolicy,
    now: datetime,
    body: str = "",
    rng: random.Random | None = None,
) -> Decision:
    """Decide what a complete HTTP response means for the records it carried.

    2xx and the configured "already delivered" statuses acknowledge. 413 splits the batch.
    408, 429 and 5xx are retried after `Retry-After` if given (but not sooner than
    `policy.initial_s`), else after the backoff delay for `attempt`. 401, 403 and 407 are retried too: a wrong or expired credential is not the
    records' fault, and dead-lettering them would lose data that a fixed token delivers. The
    same holds for ENDPOINT_STATUSES (404 for a wrong URL, 415, ...). Any other 4xx rejects
    the records (the forwarder bisects to find which). Statuses
    outside 2xx and 4xx that are not listed (1xx, 3xx, unknown codes) are retried, because
    they tell nothing about the records.
    """
    if 200 <= status < 300 or status in policy.already_delivered:
        return Decision(Action.ACKNOWLEDGE)

    excerpt = body[:REASON_BODY_CHARS]
    if status == 413:
        return Decision(Action.SPLIT, reason=f"HTTP 413 Content Too Large: {excerpt}".rstrip(": "))

    if status in (401, 403, 407):
        cause, reason = (
            Cause.CREDENTIALS,
            (
                f"HTTP {status}: the central endpoint rejected the credentials;"
                " check central.token_file and the client certificate"
            ),
        )
    elif status in ENDPOINT_STATUSES:
        cause, reason = (
            Cause.ENDPOINT,
            (
                f"HTTP {status} from the central endpoint: the request itself was refused,"
                f" not its records; check central.url and the receiver's configuration: {excerpt}"
            ).rstrip(": "),
        )
    elif status == 429:
        cause, reason = Cause.THROTTLED, "HTTP 429: the central endpoint is throttling"
    elif status == 408 or status >= 500:
        cause, reason = Cause.SERVER, f"HTTP {status} from the central endpoint"
    elif 400 <= status < 500:
        return Decision(Action.REJECT, reason=f"HTTP {status}: {excerpt}".rstrip(": "))
    elif 300 <= status < 400:
        cause, reason = (
            Cause.REDIRECT,
            (f"HTTP {status}: the central endpoint redirects; set central.url to the final address"),
        )
    else:
        cause, reason = Cause.SERVER, f"unexpected HTTP status {status} from the central endpoint"

    waited = parse_retry_after(retry_after, now, policy.max_s)
    if waited is not None:
        # Never sooner than the initial backoff, so `Retry-After: 0` on every response cannot
        # make the forwarder spin. Retrying later than the header asks is allowed.
        delay = max(waited, policy.initial_s)
    else:
        delay = backoff_delay(attempt, policy.initial_s, policy.max_s, rng)
    return Decision(Action.RETRY, delay=delay, cause=cause, reason=reason)


def classify_failure(
    cause: Cause, reason: str, *, attempt: int, policy: RetryPolicy, rng: random.Random | None = None
) -> Decision:
    """Decide on an attempt that got no complete response (refused, reset, timed out, TLS failed).

    Always a retry: the receiver may or may not have stored the batch, and resending is safe
    because every event keeps its id.
    """
    return Decision(
        Action.RETRY,
        delay=backoff_delay(attempt, policy.initial_s, policy.max_s, rng),
        cause=cause,
        reason=reason,
    )


# -- wire format ------------------------------------------------------------------------------


def event_source(site: str, gateway_id: str, source: str) -> str:
    """Build the CloudEvents `source` of a plantgate source: a URI-reference of site, gateway and source."""
    return "/plantgate/" + "/".join(quote(part, safe="") for part in (site, gateway_id, source))


def encode_event(stored: StoredRecord, *, site: str, gateway_id: str) -> str:
    """Encode one record as a CloudEvents 1.0 JSON event (JSON Event Format, structured).

    The payload is spliced in as stored, so it is neither parsed nor re-serialised here.
    `quality` and `capturedtime` are extension attributes. CloudEvents allows only lower-case
    ASCII letters and digits in attribute names. `clockunset` (true) marks a record the gateway
    captured before its clock was set (a capture time before 2020), and `sourceclockunset` one
    whose source timestamp is that old, so neither is taken as a real time by the receiver.
    """
    record = stored.record
    attributes: dict[str, str | bool] = {
        "specversion": "1.0",
        "id": record.id,
        "source": event_source(site, gateway_id, record.source),
        "type": f"{EVENT_TYPE_PREFIX}.{record.lane.label}.{record.kind}",
        "time": format_time(record.source_time or record.captured_at),
        "subject": record.subject,
        "datacontenttype": "application/json",
        "quality": record.quality,
        "capturedtime": format_time(record.captured_at),
    }
    if not record.subject:
        # CloudEvents 1.0 requires `subject`, when present, to be a non-empty string.
        del attributes["subject"]
    if record.captured_before_clock_set:
        attributes["clockunset"] = True
    if record.source_time is not None and _before_clock_set(record.source_time):
        attributes["sourceclockunset"] = True
    head = json.dumps(attributes, separators=(",", ":"), ensure_ascii=False)
    return f'{head[:-1]},"data":{record.payload_json}}}'


def _before_clock_set(moment: datetime) -> bool:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) < CLOCK_SET_AFTER


def encode_batch(records: Sequence[StoredRecord], *, site: str, gateway_id: str) -> bytes:
    """Encode records as one `application/cloudevents-batch+json` body: a JSON array of events."""
    events = ",".join(encode_event(stored, site=site, gateway_id=gateway_id) for stored in records)
    return f"[{events}]".encode()


def batch_key(records: Sequence[StoredRecord]) -> str:
    """Derive the `Idempotency-Key` of a batch from its record ids, in order.

    The same records give the same key on every retry and after a restart, because the ids
    are fixed at capture and the outbox returns them in a stable order.
    """
    digest = hashlib.sha256()
    for stored in records:
        digest.update(stored.record.id.encode())
        digest.update(b"\n")
    return f"pg1-{digest.hexdigest()[:48]}"


# -- bisection --------------------------------------------------------------------------------


class DeliveryPlan:
    """The chunks of one batch still to send, in delivery order.

    It starts as the whole batch. A chunk that the receiver rejects (4xx) or finds too large
    (413) is replaced by its two halves, left half first, so the accepted records still go in
    order and a single bad record is isolated in about 2·log2(n) requests.
    """

    def __init__(self, records: Sequence[StoredRecord]) -> None:
        self._pending: list[list[StoredRecord]] = [list(records)] if records else []

    def next_chunk(self) -> list[StoredRecord] | None:
        """Remove and return the next chunk to send, or None when the batch is done."""
        if not self._pending:
            return None
        return self._pending.pop()

    def split(self, chunk: Sequence[StoredRecord]) -> None:
        """Queue the two halves of a chunk of two or more records, to be sent before anything else."""
        if len(chunk) < 2:
            raise ValueError("a chunk of one record cannot be split; dead-letter it instead")
        middle = len(chunk) // 2
        self._pending.append(list(chunk[middle:]))
        self._pending.append(list(chunk[:middle]))

    def __len__(self) -> int:
        return sum(len(chunk) for chunk in self._pending)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_records: int
    max_bytes: int


def shrink_limits(limits: BatchLimits, too_large: Collection[StoredRecord]) -> BatchLimits:
    """Lower the batch limits after a 413 for `too_large`, so later batches do not repeat it.

    The new limits are half the rejected chunk's count and bytes (never below one record),
    and never above the current limits. A single record over the limit leaves them as they
    are, because that record is dead-lettered rather than split.
    """
    if len(too_large) < 2:
        return limits
    size = sum(stored.size for stored in too_large)
    return BatchLimits(
        max_records=max(1, min(limits.max_records, len(too_large) // 2)),
        max_bytes=max(1, min(limits.max_bytes, size // 2)),
    )
