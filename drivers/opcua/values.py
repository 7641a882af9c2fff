"""Turn OPC UA data values into JSON-safe payloads and telemetry records.

Everything here is pure: the subscription, the poller and `plantgate sample` all build their
records with `datachange_record`, so the same change gives the same record whichever path
read it.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from outbox.records import Lane, Quality, Record, format_time, record_id

DATACHANGE_KIND = "opcua.datachange"

# OPC UA Part 4, StatusCode: bits 30-31 of a StatusCode give its severity (00 Good, 01 Uncertain,
# 10 and 11 Bad); bits 16-29 the sub-code; the low 16 bits are info bits (limit, overflow).
SEVERITY_MASK = 0xC000_0000
CODE_MASK = 0xFFFF_0000


def quality_of(status: int) -> str:
    """Return the quality class of a numeric status code."""
    severity = status & SEVERITY_MASK
    if severity == 0:
        return Quality.GOOD
    if severity == 0x4000_0000:
        return Quality.UNCERTAIN
    return Quality.BAD


def status_name(status: int) -> str:
    """Return the symbolic name of a status code, ignoring its info bits ('BadNodeIdUnknown')."""
    name, _ = ua.status_codes.get_name_and_doc(status & CODE_MASK)
    return name


def to_json(value: Any) -> Any:
    """Convert a decoded OPC UA value into plain JSON types.

    DateTime becomes RFC 3339 text, ByteString base64 text, LocalizedText `{text, locale}`,
    node ids their string form, decoded structures a dict of their fields, and an
    ExtensionObject that could not be decoded `{type_id, body}` with the body in base64.
    NaN and infinities are left to `outbox.records.json_safe` when the payload is encoded.
    """
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, enum.Enum):
            return value.value
        return value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, ua.Variant):
        return to_json(value.Value)
    if isinstance(value, ua.LocalizedText):
        return {"text": value.Text, "locale": value.Locale}
    if isinstance(value, ua.QualifiedName):
        return f"{value.NamespaceIndex}:{value.Name}"
    if isinstance(value, ua.NodeId | ua.ExpandedNodeId):
        return value.to_string()
    if isinstance(value, ua.StatusCode):
        return {"code": value.value, "name": status_name(value.value)}
    if isinstance(value, ua.ExtensionObject):
        body = base64.b64encode(value.Body).decode("ascii") if value.Body else None
        return {"type_id": value.TypeId.to_string(), "body": body}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: to_json(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if item.name != "Encoding"
        }
    return str(value)


def as_utc(value: datetime | None) -> datetime | None:
    """Mark a naive timestamp as UTC, which is what OPC UA DateTime values are."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def variant_type_name(variant: ua.Variant | None) -> str | None:
    if variant is None or variant.VariantType is None:
        return None
    return str(variant.VariantType.name)


def datachange_record(
    source: str,
    subject: str,
    address: str,
    data_value: ua.DataValue,
    captured_at: datetime,
    *,
    kind: str = DATACHANGE_KIND,
) -> Record:
    """Build the telemetry record for one data value of the node configured as `address`.

    The id is derived from the source, the configured address and both timestamps, so a
    change delivered twice (a republish after a reconnect, a re-read) gives the same id.
    Only when the server sends neither timestamp does the capture time stand in for them,
    and such a value re-read later counts as a new record.
    """
    status = data_value.StatusCode.value if data_value.StatusCode is not None else 0
    source_ts = as_utc(data_value.SourceTimestamp)
    server_ts = as_utc(data_value.ServerTimestamp)
    source_text = format_time(source_ts) if source_ts else None
    server_text = format_time(server_ts) if server_ts else None
    id_parts: list[object] = [address, source_text or "", server_text or ""]
    if source_text is None and server_text is None:
        id_parts.append(format_time(captured_at))

    variant = data_value.Value
    payload: dict[str, Any] = {
        "value": to_json(variant.Value if variant is not None else None),
        "datatype": variant_type_name(variant),
        "status": status_name(status),
        "status_code": status,
        "source_timestamp": source_text,
        "server_timestamp": server_text,
        "node_id": address,
    }
    return Record(
        id=record_id(source, *id_parts),
        source=source,
        lane=Lane.TELEMETRY,
        kind=kind,
        subject=subject,
        source_time=source_ts or server_ts,
        captured_at=captured_at,
        quality=quality_of(status),
        payload=payload,
    )


EVENT_KIND = "opcua.event"


def event_record(source: str, subject: str, notifier: str, fields: dict[str, Any], captured_at: datetime) -> Record:
    """Build the event-lane record for one event notification with its selected fields.

    The id comes from the EventId field, which the server makes unique per event (OPC UA
    Part 5, BaseEventType), so an event delivered twice is stored once. Without an EventId the
    notifier, Time and the other fields stand in.
    """
    payload = {name: to_json(value) for name, value in fields.items()}
    event_id = payload.get("EventId")
    time_value = fields.get("Time")
    event_time = as_utc(time_value) if isinstance(time_value, datetime) else None
    identity = event_id if event_id else encode_identity(payload)
    payload["notifier"] = notifier
    return Record(
        id=record_id(source, "event", notifier, identity),
        source=source,
        lane=Lane.EVENT,
        kind=EVENT_KIND,
        subject=subject,
        source_time=event_time,
        captured_at=captured_at,
        quality=Quality.GOOD,
        payload=payload,
    )


def encode_identity(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, default=str)
