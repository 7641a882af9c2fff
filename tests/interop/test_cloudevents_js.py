"""The forwarder's wire format, parsed by the CloudEvents SDK for JavaScript (npm `cloudevents`).

The SDK validates every event strictly (required attributes, `source` as URI-reference, `time`
as RFC 3339, extension names of lower-case letters and digits), so a batch it accepts is one
that receivers built on it accept too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from outbox.delivery import CONTENT_TYPE, encode_batch
from outbox.records import Lane, Quality, Record, StoredRecord, record_id

pytestmark = pytest.mark.node

PROJECT = Path(__file__).resolve().parent / "cloudevents-js"
T0 = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sdk_project() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed; they run the CloudEvents SDK for JavaScript")
    if not (PROJECT / "node_modules" / "cloudevents").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=PROJECT, check=True, capture_output=True, timeout=300
        )
    return PROJECT


def parse_with_sdk(project: Path, body: bytes, content_type: str = CONTENT_TYPE) -> subprocess.CompletedProcess[str]:
    message = {"headers": {"content-type": content_type}, "body": body.decode()}
    return subprocess.run(
        ["node", str(project / "parse.js")],
        input=json.dumps(message),
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored(
    index: int, *, lane: Lane, source_time: datetime | None, payload: dict, subject: str | None = None
) -> StoredRecord:
    record = Record(
        id=record_id("line1", lane.label, index),
        source="line1-opcua",
        lane=lane,
        kind="opcua.datachange" if lane is Lane.TELEMETRY else "mes.goods_movement",
        subject=f"ns=2;s=Line1.Item{index}" if subject is None else subject,
        source_time=source_time,
        captured_at=T0 + timedelta(seconds=index, microseconds=1500),
        quality=Quality.UNCERTAIN,
        payload=payload,
    )
    return StoredRecord(seq=index, record=record, size=record.size, attempts=0)


def test_sdk_accepts_forwarded_batch(sdk_project):
    records = [
        stored(1, lane=Lane.TRANSACTION, source_time=T0, payload={"order": "4711", "quantity": 12}),
        stored(2, lane=Lane.TELEMETRY, source_time=None, payload={"value": float("nan"), "unit": "°C"}),
        stored(3, lane=Lane.EVENT, source_time=T0, payload={"nested": {"list": [1, 2.5, None, True]}}),
        stored(4, lane=Lane.EVENT, source_time=T0, payload={}, subject=""),
    ]
    body = encode_batch(records, site="plant-a", gateway_id="gw-01")

    result = parse_with_sdk(sdk_project, body)

    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert [event["id"] for event in events] == [item.record.id for item in records]
    assert {event["source"] for event in events} == {"/plantgate/plant-a/gw-01/line1-opcua"}
    assert events[0]["type"] == "com.plantgate.transaction.mes.goods_movement"
    assert events[1]["data"] == {"value": "NaN", "unit": "°C"}
    assert events[2]["data"] == {"nested": {"list": [1, 2.5, None, True]}}
    for event in events:
        assert event["quality"] == "uncertain"
        assert event["capturedtime"].endswith("Z")
        assert event["datacontenttype"] == "application/json"


def test_sdk_rejects_invalid_extension_name(sdk_project):
    # The check must be able to fail: an underscore is not allowed in a CloudEvents attribute name.
    event = json.loads(encode_batch([stored(1, lane=Lane.EVENT, source_time=T0, payload={})], site="s", gateway_id="g"))
    event[0]["captured_at"] = event[0].pop("capturedtime")

    result = parse_with_sdk(sdk_project, json.dumps(event).encode())

    assert result.returncode == 1
    assert "captured_at" in result.stderr
