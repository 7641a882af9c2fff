"""Data values to JSON-safe payloads and records (pure functions, table tests)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from asyncua import ua

from drivers.opcua.values import datachange_record, event_record, quality_of, status_name, to_json
from outbox.records import Lane, Quality

T0 = datetime(2026, 12, 4, 10, 0, 0, 123456, tzinfo=UTC)
T1 = datetime(2026, 12, 4, 10, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (ua.StatusCodes.Good, Quality.GOOD),
        (ua.StatusCodes.GoodClamped, Quality.GOOD),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN),
        (ua.StatusCodes.UncertainSensorNotAccurate, Quality.UNCERTAIN),
        (ua.StatusCodes.BadSensorFailure, Quality.BAD),
        (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD),
        (0xC0000000, Quality.BAD),  # reserved severity 11 counts as bad
    ],
)
def test_quality_from_status_severity(code, quality):
    assert quality_of(code) == quality


def test_status_name_ignores_info_bits():
    # Part 4 (StatusCode): bits 0-15 carry info such as the limit bits; the name is of the code alone.
    assert status_name(ua.StatusCodes.UncertainSensorNotAccurate | 0x0000_0100) == "UncertainSensorNotAccurate"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (42, 42),
        (2.5, 2.5),
        ("text", "text"),
        ([1, 2, 3], [1, 2, 3]),
        ([[1.5, 2.5], [3.5, 4.5]], [[1.5, 2.5], [3.5, 4.5]]),
        (T0, "2026-12-04T10:00:00.123456Z"),
        (datetime(2026, 1, 1), "2026-01-01T00:00:00.000000Z"),
        (b"\x00\x01\xff", "AAH/"),
        (ua.LocalizedText("Anlage läuft", "de-DE"), {"text": "Anlage läuft", "locale": "de-DE"}),
        (ua.QualifiedName("Line1", 2), "2:Line1"),
        (ua.NodeId("Line1.Speed", 2), "ns=2;s=Line1.Speed"),
        (ua.StatusCode(ua.StatusCodes.BadTimeout), {"code": ua.StatusCodes.BadTimeout, "name": "BadTimeout"}),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (ua.MessageSecurityMode.Sign, 2),
    ],
)
def test_to_json_builtin_types(value, expected):
    assert to_json(value) == expected


def test_to_json_unknown_extension_object_keeps_type_id():
    value = ua.ExtensionObject(TypeId=ua.NodeId(5001, 3), Body=b"\x01\x02")

    assert to_json(value) == {"type_id": "ns=3;i=5001", "body": "AQI="}


def test_to_json_decoded_structure_becomes_dict():
    value = ua.Range(Low=0.0, High=100.0)

    assert to_json(value) == {"Low": 0.0, "High": 100.0}


def test_to_json_output_is_serialisable():
    value = [ua.LocalizedText("x"), T0, b"ab", ua.Range(Low=1.0, High=2.0)]

    json.dumps(to_json(value))


def data_value(value, status=ua.StatusCodes.Good, source=T0, server=T1, variant_type=None):
    variant = ua.Variant(value, variant_type) if variant_type else ua.Variant(value)
    return ua.DataValue(variant, StatusCode=ua.StatusCode(status), SourceTimestamp=source, ServerTimestamp=server)


def test_datachange_record_carries_status_and_timestamps():
    record = datachange_record(
        "line1", "Speed", "ns=2;s=Line1.Speed", data_value(1200, variant_type=ua.VariantType.Int32), T1
    )

    assert record.lane == Lane.TELEMETRY
    assert record.kind == "opcua.datachange"
    assert record.subject == "Speed"
    assert record.source_time == T0
    assert record.quality == Quality.GOOD
    assert record.payload == {
        "value": 1200,
        "datatype": "Int32",
        "status": "Good",
        "status_code": 0,
        "source_timestamp": "2026-12-04T10:00:00.123456Z",
        "server_timestamp": "2026-12-04T10:00:01.000000Z",
        "node_id": "ns=2;s=Line1.Speed",
    }


def test_datachange_record_falls_back_to_server_timestamp():
    record = datachange_record("line1", "s", "ns=2;s=X", data_value(1.0, source=None), T1)

    assert record.source_time == T1
    assert record.payload["source_timestamp"] is None


def test_datachange_record_keeps_bad_value_as_sent():
    value = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure), SourceTimestamp=T0)

    record = datachange_record("line1", "s", "ns=2;s=X", value, T1)

    assert record.quality == Quality.BAD
    assert record.payload["value"] is None
    assert record.payload["status"] == "BadSensorFailure"


def test_datachange_record_nan_is_encodable():
    record = datachange_record("line1", "s", "ns=2;s=X", data_value(float("nan")), T1)

    assert '"value":"NaN"' in record.payload_json


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        (("ns=2;s=X", T0, T1), ("ns=2;s=X", T0, T1), True),
        (("ns=2;s=X", T0, T1), ("ns=2;s=Y", T0, T1), False),
        (("ns=2;s=X", T0, T1), ("ns=2;s=X", T1, T1), False),
        (("ns=2;s=X", T0, T0), ("ns=2;s=X", T0, T1), False),
    ],
)
def test_datachange_record_id_from_address_and_timestamps(first, second, same):
    def make(address, source, server):
        return datachange_record("line1", "s", address, data_value(1, source=source, server=server), T1).id

    assert (make(*first) == make(*second)) is same


def test_datachange_record_without_timestamps_uses_capture_time():
    value = data_value(1, source=None, server=None)

    first = datachange_record("line1", "s", "ns=2;s=X", value, T0)
    second = datachange_record("line1", "s", "ns=2;s=X", value, T1)

    assert first.id != second.id
    assert first.source_time is None


def test_event_record_id_from_event_id():
    fields = {"EventId": b"\x01\x02", "Time": T0, "Message": ua.LocalizedText("Door open"), "Severity": 500}

    record = event_record("line1", "alarms", "i=2253", fields, T1)
    again = event_record("line1", "alarms", "i=2253", fields, T1)

    assert record.id == again.id
    assert record.lane == Lane.EVENT
    assert record.kind == "opcua.event"
    assert record.source_time == T0
    assert record.payload["Message"] == {"text": "Door open", "locale": None}
    assert record.payload["Severity"] == 500
    assert record.payload["notifier"] == "i=2253"
