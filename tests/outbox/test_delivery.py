"""Table tests of the delivery rules: response classification, Retry-After, wire format, keys, bisection."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from outbox.delivery import (
    CONTENT_TYPE,
    Action,
    BatchLimits,
    Cause,
    DeliveryPlan,
    RetryPolicy,
    batch_key,
    classify_failure,
    classify_status,
    encode_batch,
    encode_event,
    event_source,
    parse_retry_after,
    shrink_limits,
)
from outbox.records import Lane, Quality, Record, StoredRecord

NOW = datetime(2026, 12, 4, 20, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy(initial_s=1.0, max_s=60.0, already_delivered=frozenset({409}))


def stored(index: int, *, lane: Lane = Lane.TELEMETRY, source_time: datetime | None = NOW, size: int = 100):
    record = Record(
        id=f"00000000-0000-4000-8000-{index:012d}",
        source="press-7",
        lane=lane,
        kind="opcua.datachange",
        subject=f"ns=2;s=Temp{index}",
        source_time=source_time,
        captured_at=NOW + timedelta(seconds=1),
        quality=Quality.GOOD,
        payload={"value": index, "unit": "°C"},
    )
    return StoredRecord(seq=index, record=record, size=size, attempts=0)


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action", "cause"),
    [
        (200, Action.ACKNOWLEDGE, Cause.NONE),
        (202, Action.ACKNOWLEDGE, Cause.NONE),
        (204, Action.ACKNOWLEDGE, Cause.NONE),
        (409, Action.ACKNOWLEDGE, Cause.NONE),
        (413, Action.SPLIT, Cause.NONE),
        (400, Action.REJECT, Cause.NONE),
        (422, Action.REJECT, Cause.NONE),
        (412, Action.REJECT, Cause.NONE),
        (451, Action.REJECT, Cause.NONE),
        (404, Action.RETRY, Cause.ENDPOINT),
        (405, Action.RETRY, Cause.ENDPOINT),
        (415, Action.RETRY, Cause.ENDPOINT),
        (431, Action.RETRY, Cause.ENDPOINT),
        (407, Action.RETRY, Cause.CREDENTIALS),
        (401, Action.RETRY, Cause.CREDENTIALS),
        (403, Action.RETRY, Cause.CREDENTIALS),
        (408, Action.RETRY, Cause.SERVER),
        (429, Action.RETRY, Cause.THROTTLED),
        (500, Action.RETRY, Cause.SERVER),
        (502, Action.RETRY, Cause.SERVER),
        (503, Action.RETRY, Cause.SERVER),
        (504, Action.RETRY, Cause.SERVER),
        (301, Action.RETRY, Cause.REDIRECT),
        (307, Action.RETRY, Cause.REDIRECT),
        (100, Action.RETRY, Cause.SERVER),
        (600, Action.RETRY, Cause.SERVER),
    ],
)
def test_classify_status_table(status, action, cause):
    decision = classify_status(status, retry_after=None, attempt=0, policy=POLICY, now=NOW)
    assert decision.action is action
    assert decision.cause is cause


@pytest.mark.parametrize(
    ("already_delivered", "status", "action"),
    [
        (frozenset(), 409, Action.REJECT),
        (frozenset({409, 422}), 422, Action.ACKNOWLEDGE),
        (frozenset({208}), 208, Action.ACKNOWLEDGE),
    ],
)
def test_already_delivered_statuses_configurable(already_delivered, status, action):
    policy = RetryPolicy(initial_s=1.0, max_s=60.0, already_delivered=already_delivered)
    decision = classify_status(status, retry_after=None, attempt=0, policy=policy, now=NOW)
    assert decision.action is action


def test_rejection_keeps_body_start():
    body = "event 3: data.value must be a number " + "x" * 5000
    decision = classify_status(400, retry_after=None, attempt=0, policy=POLICY, now=NOW, body=body)
    assert decision.reason.startswith("HTTP 400: event 3: data.value must be a number")
    assert len(decision.reason) < 600


def test_credentials_reason_names_fix():
    decision = classify_status(401, retry_after=None, attempt=0, policy=POLICY, now=NOW)
    assert "central.token_file" in decision.reason


def test_endpoint_reason_names_url_setting():
    decision = classify_status(404, retry_after=None, attempt=0, policy=POLICY, now=NOW, body="no route /v2/evts")
    assert "central.url" in decision.reason
    assert decision.reason.endswith("no route /v2/evts")


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (503, "7", 7.0),
        (429, "0", 1.0),
        (503, "3600", 60.0),
        (503, "Fri, 04 Dec 2026 20:00:30 GMT", 30.0),
        (429, "Fri, 04 Dec 2026 19:00:00 GMT", 1.0),
        (503, "Sat, 05 Dec 2026 20:00:00 GMT", 60.0),
    ],
)
def test_classify_status_honours_retry_after(status, retry_after, expected):
    decision = classify_status(status, retry_after=retry_after, attempt=5, policy=POLICY, now=NOW)
    assert decision.action is Action.RETRY
    assert decision.delay == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 10, 100])
def test_retry_without_header_uses_backoff(attempt):
    ceiling = min(POLICY.max_s, POLICY.initial_s * 2**attempt)
    rng = random.Random(attempt)
    decision = classify_status(503, retry_after=None, attempt=attempt, policy=POLICY, now=NOW, rng=rng)
    assert ceiling / 2 <= decision.delay <= ceiling


@pytest.mark.parametrize("cause", [Cause.UNREACHABLE, Cause.TIMEOUT, Cause.TLS])
def test_classify_failure_always_retries_with_backoff(cause):
    decision = classify_failure(cause, "connection refused", attempt=3, policy=POLICY, rng=random.Random(1))
    assert decision.action is Action.RETRY
    assert decision.cause is cause
    assert 4.0 <= decision.delay <= 8.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("12", 12.0),
        (" 12 ", 12.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("99999999", 60.0),
        ("Fri, 04 Dec 2026 20:01:00 GMT", 60.0),
        ("Fri, 04 Dec 2026 20:00:10 GMT", 10.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        # RFC 850 and asctime forms are obsolete but still valid HTTP-dates.
        ("Friday, 04-Dec-26 20:00:20 GMT", 20.0),
        ("Fri Dec  4 20:00:05 2026", 5.0),
    ],
)
def test_parse_retry_after_table(value, expected):
    result = parse_retry_after(value, NOW, max_s=60.0)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


# -- wire format ------------------------------------------------------------------------------


def test_encode_event_has_cloudevents_attributes():
    event = json.loads(encode_event(stored(1, lane=Lane.TRANSACTION), site="plant-a", gateway_id="gw-01"))
    assert event == {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000001",
        "source": "/plantgate/plant-a/gw-01/press-7",
        "type": "com.plantgate.transaction.opcua.datachange",
        "time": "2026-12-04T20:00:00.000000Z",
        "subject": "ns=2;s=Temp1",
        "datacontenttype": "application/json",
        "quality": "good",
        "capturedtime": "2026-12-04T20:00:01.000000Z",
        "data": {"value": 1, "unit": "°C"},
    }


def test_encode_event_time_falls_back_to_captured_time():
    event = json.loads(encode_event(stored(2, source_time=None), site="s", gateway_id="g"))
    assert event["time"] == "2026-12-04T20:00:01.000000Z"


def test_encode_event_omits_empty_subject():
    item = stored(5)
    record = dataclasses.replace(item.record, subject="")
    event = json.loads(encode_event(dataclasses.replace(item, record=record), site="s", gateway_id="g"))
    assert "subject" not in event


def test_extension_names_lowercase_alphanumeric():
    event = json.loads(encode_event(stored(3), site="s", gateway_id="g"))
    for name in event:
        assert name.isascii()
        assert name.isalnum()
        assert name == name.lower()
        assert len(name) <= 20


@pytest.mark.parametrize(
    ("site", "gateway", "source", "expected"),
    [
        ("plant-a", "gw-01", "press-7", "/plantgate/plant-a/gw-01/press-7"),
        ("p", "g", "a b/c", "/plantgate/p/g/a%20b%2Fc"),
    ],
)
def test_event_source_is_uri_reference(site, gateway, source, expected):
    assert event_source(site, gateway, source) == expected


def test_encode_batch_is_json_array_in_order():
    records = [stored(index) for index in range(5)]
    body = encode_batch(records, site="s", gateway_id="g")
    events = json.loads(body)
    assert [event["id"] for event in events] == [item.record.id for item in records]
    assert CONTENT_TYPE == "application/cloudevents-batch+json"


def test_encode_batch_keeps_payload_as_stored():
    item = stored(4)
    body = encode_batch([item], site="s", gateway_id="g").decode()
    assert item.record.payload_json in body


# -- idempotency key --------------------------------------------------------------------------


def test_batch_key_is_stable_for_same_ids():
    first = [stored(index) for index in range(3)]
    again = [stored(index, size=999) for index in range(3)]
    assert batch_key(first) == batch_key(again)


def test_batch_key_differs_for_other_ids_or_order():
    records = [stored(index) for index in range(3)]
    assert batch_key(records) != batch_key(records[:2])
    assert batch_key(records) != batch_key(list(reversed(records)))


def test_batch_key_is_header_safe():
    key = batch_key([stored(1)])
    assert key.isascii()
    assert " " not in key
    assert len(key) <= 64


# -- bisection --------------------------------------------------------------------------------


def run_plan(count: int, bad: set[int]) -> tuple[list[int], list[int], int]:
    """Play a plan against a receiver that rejects any chunk holding a bad seq."""
    plan = DeliveryPlan([stored(index) for index in range(count)])
    delivered: list[int] = []
    dead: list[int] = []
    requests = 0
    while (chunk := plan.next_chunk()) is not None:
        requests += 1
        seqs = [item.seq for item in chunk]
        if not bad.intersection(seqs):
            delivered.extend(seqs)
        elif len(chunk) == 1:
            dead.extend(seqs)
        else:
            plan.split(chunk)
    return delivered, dead, requests


@pytest.mark.parametrize(
    ("count", "bad", "max_requests"),
    [
        (1, set(), 1),
        (1, {0}, 1),
        (8, set(), 1),
        (8, {3}, 7),
        (500, {0}, 19),
        (500, {499}, 19),
        (500, {250}, 19),
        (7, {0, 6}, 13),
        (5, {0, 1, 2, 3, 4}, 9),
    ],
)
def test_delivery_plan_isolates_rejected_records(count, bad, max_requests):
    delivered, dead, requests = run_plan(count, bad)
    assert sorted(dead) == sorted(bad)
    assert delivered == [seq for seq in range(count) if seq not in bad]
    assert requests <= max_requests


def test_delivery_plan_refuses_to_split_one_record():
    plan = DeliveryPlan([stored(1)])
    with pytest.raises(ValueError, match="dead-letter"):
        plan.split([stored(1)])


def test_delivery_plan_empty_batch_has_no_chunk():
    assert DeliveryPlan([]).next_chunk() is None


@pytest.mark.parametrize(
    ("limits", "chunk_count", "expected"),
    [
        (BatchLimits(500, 1_000_000), 500, BatchLimits(250, 25_000)),
        (BatchLimits(100, 1_000), 500, BatchLimits(100, 1_000)),
        (BatchLimits(500, 1_000_000), 2, BatchLimits(1, 100)),
        (BatchLimits(500, 1_000_000), 1, BatchLimits(500, 1_000_000)),
    ],
)
def test_shrink_limits_after_413(limits, chunk_count, expected):
    chunk = [stored(index) for index in range(chunk_count)]
    assert shrink_limits(limits, chunk) == expected
