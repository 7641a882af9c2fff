"""The forwarder against a real outbox file and a real receiver on 127.0.0.1, under receiver faults.

Delays and timeouts are short so the suite stays fast; the tests assert outcomes (what was
delivered, dead-lettered, counted, and in which order), never timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import ipaddress
import logging
import sqlite3
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import CentralSection
from agent.forwarder import Forwarder
from agent.receiver import Receiver
from outbox.delivery import event_source
from outbox.records import Lane, Quality, Record, record_id
from outbox.store import Outbox

SITE = "plant-a"
GATEWAY = "gw-01"
SOURCE = "press-7"
SOURCE_URI = event_source(SITE, GATEWAY, SOURCE)
T0 = dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.UTC)


def make_records(count: int, *, lane: Lane = Lane.TELEMETRY, source: str = SOURCE, start: int = 0) -> list[Record]:
    return [
        Record(
            id=record_id(source, lane.label, index),
            source=source,
            lane=lane,
            kind="opcua.datachange",
            subject=f"ns=2;s=Line1.Temp{index}",
            source_time=T0 + dt.timedelta(seconds=index),
            captured_at=T0 + dt.timedelta(seconds=index),
            quality=Quality.GOOD,
            payload={"value": index},
        )
        for index in range(start, start + count)
    ]


def central_for(url: str, **overrides: Any) -> CentralSection:
    settings: dict[str, Any] = {
        "url": url,
        # Generous, so a loaded test machine does not time out. The stall cases set a shorter one.
        "timeout_s": 3.0,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "idle_poll_s": 0.02,
        "batch_max_records": 50,
    }
    return CentralSection(**{**settings, **overrides})


@contextlib.asynccontextmanager
async def forwarding(outbox: Outbox, central: CentralSection) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(outbox, central, site=SITE, gateway_id=GATEWAY)
    async with asyncio.TaskGroup() as task_group:
        task = task_group.create_task(forwarder.run())
        try:
            yield forwarder
        finally:
            task.cancel()


async def wait_until(condition: Callable[[], bool], limit_s: float = 15.0) -> None:
    """Poll `condition` until it is true. The outbox and receiver offer no event to wait on."""
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.01)


async def wait_drained(outbox: Outbox, forwarder: Forwarder, count: int, limit_s: float = 15.0) -> None:
    """Wait until the outbox is empty and the forwarder has counted `count` records as delivered or
    dead-lettered. The outbox empties a moment before the forwarder updates its status."""
    status = forwarder.status
    await wait_until(lambda: outbox.depth() == 0 and status.delivered_records + status.dead_lettered >= count, limit_s)


def dead_letters(outbox_path: Path) -> list[tuple[str, int | None, str]]:
    with contextlib.closing(sqlite3.connect(outbox_path)) as db:
        return db.execute("SELECT id, status, reason FROM dead_letters ORDER BY seq").fetchall()


@pytest.fixture
async def outbox(tmp_path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "outbox.sqlite") as box:
        yield box


@pytest.fixture
async def receiver(tmp_path) -> AsyncIterator[Receiver]:
    async with Receiver(tmp_path / "central.sqlite", host="127.0.0.1", port=0) as running:
        yield running


# -- the receiver-fault suite -----------------------------------------------------------------


def http_date_in(seconds: float) -> str:
    return email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds), usegmt=True)


@dataclass(frozen=True)
class FaultCase:
    """A receiver fault and the outcome expected once it has passed."""

    name: str
    inject: Callable[[Receiver, list[Record]], Awaitable[None]]
    dead_lettered: set[int] = field(default_factory=set)
    min_retries: int = 1
    min_duplicates: int = 0
    dead_letter_status: int | None = None
    central: dict[str, Any] = field(default_factory=dict)


async def go_down(receiver: Receiver, records: list[Record]) -> None:
    await receiver.go_down(0.3)


def fail_with(status: int, **options: Any) -> Callable[[Receiver, list[Record]], Awaitable[None]]:
    async def inject(receiver: Receiver, records: list[Record]) -> None:
        receiver.fail(status, **options)

    return inject


async def reject_record_3(receiver: Receiver, records: list[Record]) -> None:
    receiver.fail(400, reject_ids={records[3].id})


async def retry_after_date(receiver: Receiver, records: list[Record]) -> None:
    receiver.fail(503, times=2, retry_after=http_date_in(1))


async def slow_past_timeout(receiver: Receiver, records: list[Record]) -> None:
    receiver.stall(delay_s=1.0, times=1)


async def stored_then_hangs(receiver: Receiver, records: list[Record]) -> None:
    receiver.stall(delay_s=1.0, times=1, store_first=True)


async def reset_mid_response(receiver: Receiver, records: list[Record]) -> None:
    receiver.reset(times=2)


FAULT_CASES = [
    FaultCase("receiver down (connection refused)", go_down),
    FaultCase("500", fail_with(500, times=3), min_retries=3),
    FaultCase("503 with Retry-After seconds", fail_with(503, times=2, retry_after=1), min_retries=2),
    FaultCase("503 with Retry-After date", retry_after_date, min_retries=2),
    FaultCase("429", fail_with(429, times=2, retry_after=0), min_retries=2),
    FaultCase("413 splits the batch", fail_with(413, times=1), min_retries=0),
    FaultCase("400 rejects one record", reject_record_3, {3}, min_retries=0, dead_letter_status=400),
    FaultCase("401 retries, never dead-letters", fail_with(401, times=3), min_retries=3),
    FaultCase("403 retries, never dead-letters", fail_with(403, times=3), min_retries=3),
    FaultCase("404 retries, never dead-letters", fail_with(404, times=3), min_retries=3),
    FaultCase("slow response past the timeout", slow_past_timeout, central={"timeout_s": 0.3}),
    FaultCase("connection reset mid-response", reset_mid_response, min_retries=2),
    FaultCase("stored, then no reply", stored_then_hangs, min_duplicates=10, central={"timeout_s": 0.3}),
]


@pytest.mark.parametrize("case", FAULT_CASES, ids=[case.name for case in FAULT_CASES])
async def test_forward_survives_receiver_fault(case, tmp_path, outbox, receiver):
    records = make_records(10)
    await case.inject(receiver, records)
    await outbox.append(records)

    async with forwarding(outbox, central_for(receiver.url, **case.central)) as forwarder:
        await wait_drained(outbox, forwarder, len(records))
        await wait_until(lambda: receiver.stats().duplicates >= case.min_duplicates)
    status = forwarder.status

    expected_ids = [record.id for index, record in enumerate(records) if index not in case.dead_lettered]
    assert [event.id for event in receiver.events(source=SOURCE_URI)] == expected_ids
    assert receiver.stats().unique_events == len(expected_ids)
    assert status.delivered_records == len(expected_ids)
    assert status.dead_lettered == len(case.dead_lettered)
    assert status.retries >= case.min_retries
    assert status.wan_state == "up"
    letters = dead_letters(tmp_path / "outbox.sqlite")
    assert [letter[0] for letter in letters] == [records[index].id for index in sorted(case.dead_lettered)]
    for _, status_code, reason in letters:
        assert status_code == case.dead_letter_status
        assert reason.startswith(f"HTTP {case.dead_letter_status}")
    for index in case.dead_lettered:
        assert await outbox.lookup(records[index].id) == "dead-lettered"


# -- single response rules ------------------------------------------------------------------


async def test_forward_keeps_records_on_503(outbox, receiver):
    receiver.fail(503, retry_after=1)
    records = make_records(5)
    await outbox.append(records)

    async with forwarding(outbox, central_for(receiver.url)) as forwarder:
        await wait_until(lambda: forwarder.status.retries >= 3)
        assert outbox.depth() == 5
        assert forwarder.status.wan_state == "down"
        assert forwarder.status.last_error == "HTTP 503 from the central endpoint"

        receiver.clear_faults()
        await wait_drained(outbox, forwarder, 5)

    assert receiver.stats().unique_events == 5
    assert forwarder.status.consecutive_failures == 0


async def test_forward_413_lowers_batch_limit(outbox, receiver):
    receiver.fail(413, times=1)
    await outbox.append(make_records(40))

    async with forwarding(outbox, central_for(receiver.url, batch_max_records=40)) as forwarder:
        await wait_drained(outbox, forwarder, 40)

    assert forwarder.limits.max_records == 20
    assert receiver.stats().unique_events == 40
    assert forwarder.status.dead_lettered == 0


async def test_forward_413_single_record_dead_lettered(tmp_path, outbox, receiver):
    receiver.fail(413)
    records = make_records(1)
    await outbox.append(records)

    async with forwarding(outbox, central_for(receiver.url)) as forwarder:
        await wait_drained(outbox, forwarder, 1)

    assert forwarder.status.dead_lettered == 1
    letters = dead_letters(tmp_path / "outbox.sqlite")
    assert [(letter[0], letter[1]) for letter in letters] == [(records[0].id, 413)]


async def test_forward_timeout_keeps_records(outbox, receiver):
    receiver.stall(delay_s=2.0)
    await outbox.append(make_records(3))

    async with forwarding(outbox, central_for(receiver.url, timeout_s=0.2)) as forwarder:
        await wait_until(lambda: forwarder.status.retries >= 2)
        assert outbox.depth() == 3
        assert "central.timeout_s" in (forwarder.status.last_error or "")
        receiver.clear_faults()
        await wait_drained(outbox, forwarder, 3)


async def test_forward_409_counts_as_delivered(outbox, receiver):
    receiver.fail(409, times=1)
    await outbox.append(make_records(4))

    async with forwarding(outbox, central_for(receiver.url)) as forwarder:
        await wait_drained(outbox, forwarder, 4)

    # The 409 acknowledged the batch without storing, as a receiver that already has it responds.
    assert forwarder.status.delivered_records == 4
    assert forwarder.status.retries == 0
    assert receiver.stats().unique_events == 0


async def test_forward_delivers_lanes_in_priority(outbox, receiver):
    telemetry = make_records(5, lane=Lane.TELEMETRY)
    transactions = make_records(3, lane=Lane.TRANSACTION, source="mes")
    events = make_records(2, lane=Lane.EVENT, source="alarms")
    await outbox.append(telemetry)
    await outbox.append(events)
    await outbox.append(transactions)

    async with forwarding(outbox, central_for(receiver.url, batch_max_records=2)) as forwarder:
        await wait_drained(outbox, forwarder, 10)

    order = [item.type.split(".")[2] for item in receiver.events()]
    assert order == ["transaction"] * 3 + ["event"] * 2 + ["telemetry"] * 5


async def test_forward_batches_by_bytes(outbox, receiver):
    # Indexes 10 to 21 all have two digits, so every record has the same size.
    records = make_records(12, start=10)
    assert len({record.size for record in records}) == 1
    await outbox.append(records)
    limit = records[0].size * 3

    async with forwarding(outbox, central_for(receiver.url, batch_max_bytes=limit)) as forwarder:
        await wait_drained(outbox, forwarder, 12)

    assert forwarder.status.batches_sent == 4
    assert receiver.stats().accepted_requests == 4


async def test_forward_sends_gzip_and_same_key_on_retry(outbox, receiver):
    receiver.reset(times=1, store_first=True)
    await outbox.append(make_records(6))

    async with forwarding(outbox, central_for(receiver.url, gzip=True)) as forwarder:
        await wait_drained(outbox, forwarder, 6)

    stats = receiver.stats()
    assert stats.gzip_requests == 2
    assert stats.repeated_batch_keys == 1
    assert stats.duplicates == 6
    assert stats.unique_events == 6


async def test_forward_wakes_on_wake_call(outbox, receiver):
    async with forwarding(outbox, central_for(receiver.url, idle_poll_s=3600)) as forwarder:
        await asyncio.sleep(0.05)
        await outbox.append(make_records(2))
        forwarder.wake()
        await wait_drained(outbox, forwarder, 2, limit_s=5)


async def test_forward_logs_outage_once(outbox, receiver, caplog):
    await receiver.go_down()
    await outbox.append(make_records(2))
    caplog.set_level(logging.INFO, logger="agent.forwarder")

    async with forwarding(outbox, central_for(receiver.url)) as forwarder:
        await wait_until(lambda: forwarder.status.retries >= 5)
        await receiver.come_up()
        await wait_drained(outbox, forwarder, 2)

    messages = [record.getMessage() for record in caplog.records if record.name == "agent.forwarder"]
    assert len([text for text in messages if "unavailable" in text]) == 1
    assert len([text for text in messages if "reachable again" in text]) == 1


class VirtualClock:
    """A clock whose sleeps return at once and advance its time, so backoff runs in virtual time."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return self.elapsed

    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.elapsed)

    async def sleep(self, seconds: float) -> None:
        self.elapsed += max(0.0, seconds)
        await asyncio.sleep(0)


async def test_forward_summarises_long_outage(outbox, receiver, caplog):
    await receiver.go_down()
    await outbox.append(make_records(1))
    caplog.set_level(logging.INFO, logger="agent.forwarder")
    clock = VirtualClock()
    central = central_for(receiver.url, retry_initial_s=10, retry_max_s=60)
    forwarder = Forwarder(outbox, central, site=SITE, gateway_id=GATEWAY, clock=clock)

    async with asyncio.TaskGroup() as task_group:
        task = task_group.create_task(forwarder.run())
        await wait_until(lambda: clock.elapsed >= 3600)
        task.cancel()

    messages = [record.getMessage() for record in caplog.records if record.name == "agent.forwarder"]
    summaries = [text for text in messages if "still unavailable after" in text]
    assert forwarder.status.retries >= 55
    assert 4 <= len(summaries) <= 6
    assert len(messages) == 1 + len(summaries)


async def test_forward_401_logged_as_error(outbox, receiver, caplog):
    receiver.fail(401, times=3)
    await outbox.append(make_records(2))
    caplog.set_level(logging.INFO, logger="agent.forwarder")

    async with forwarding(outbox, central_for(receiver.url)) as forwarder:
        await wait_drained(outbox, forwarder, 2)

    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "central.token_file" in errors[0].getMessage()


# -- credentials and TLS --------------------------------------------------------------------


async def test_forward_sends_token_and_rereads_file(tmp_path, outbox):
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    async with Receiver(tmp_path / "central.sqlite", token="new-token") as receiver:
        await outbox.append(make_records(3))

        async with forwarding(outbox, central_for(receiver.url, token_file=token_file)) as forwarder:
            await wait_until(lambda: receiver.stats().unauthorized_requests >= 2)
            assert outbox.depth() == 3
            assert "old-token" not in (forwarder.status.last_error or "")

            token_file.write_text("new-token\n")
            await wait_drained(outbox, forwarder, 3)

        assert receiver.stats().unique_events == 3


async def test_forward_missing_token_file_retries(tmp_path, outbox, receiver):
    token_file = tmp_path / "token"
    await outbox.append(make_records(2))

    async with forwarding(outbox, central_for(receiver.url, token_file=token_file)) as forwarder:
        await wait_until(lambda: forwarder.status.retries >= 2)
        assert "central.token_file" in (forwarder.status.last_error or "")
        assert receiver.stats().requests == 0

        token_file.write_text("any")
        await wait_drained(outbox, forwarder, 2)


@dataclass
class Certificates:
    ca_file: Path
    server_context: ssl.SSLContext
    client_cert_file: Path
    client_key_file: Path


def make_certificates(folder: Path, *, require_client_cert: bool = False) -> Certificates:
    """Make a CA, a server certificate for 127.0.0.1 and a client certificate, all as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer, *, ca: bool, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def write(name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plantgate test CA")])
    ca_cert = issue("plantgate test CA", ca_key, ca_name, ca_key, ca=True)
    ca_file, _ = write("ca", ca_cert, ca_key)

    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert = issue("127.0.0.1", server_key, ca_name, ca_key, ca=False, san=san)
    server_cert_file, server_key_file = write("server", server_cert, server_key)

    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = issue("gw-01", client_key, ca_name, ca_key, ca=False)
    client_cert_file, client_key_file = write("client", client_cert, client_key)

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(server_cert_file, server_key_file)
    if require_client_cert:
        server_context.verify_mode = ssl.CERT_REQUIRED
        server_context.load_verify_locations(ca_file)
    return Certificates(ca_file, server_context, client_cert_file, client_key_file)


async def test_forward_rejects_unverified_certificate(tmp_path, outbox):
    certificates = make_certificates(tmp_path)
    async with Receiver(tmp_path / "central.sqlite", ssl_context=certificates.server_context) as receiver:
        assert receiver.url.startswith("https://")
        await outbox.append(make_records(3))

        async with forwarding(outbox, central_for(receiver.url)) as forwarder:
            await wait_until(lambda: forwarder.status.retries >= 2)
        assert outbox.depth() == 3
        assert receiver.stats().requests == 0
        assert "central.ca_file" in (forwarder.status.last_error or "")

        async with forwarding(outbox, central_for(receiver.url, ca_file=certificates.ca_file)) as forwarder:
            await wait_drained(outbox, forwarder, 3)
        assert receiver.stats().unique_events == 3


async def test_forward_presents_client_certificate(tmp_path, outbox):
    certificates = make_certificates(tmp_path, require_client_cert=True)
    async with Receiver(tmp_path / "central.sqlite", ssl_context=certificates.server_context) as receiver:
        await outbox.append(make_records(2))

        async with forwarding(outbox, central_for(receiver.url, ca_file=certificates.ca_file)) as forwarder:
            await wait_until(lambda: forwarder.status.retries >= 2)
        assert outbox.depth() == 2
        assert "central.client_cert_file" in (forwarder.status.last_error or "")

        mutual = central_for(
            receiver.url,
            ca_file=certificates.ca_file,
            client_cert_file=certificates.client_cert_file,
            client_key_file=certificates.client_key_file,
        )
        async with forwarding(outbox, mutual) as forwarder:
            await wait_drained(outbox, forwarder, 2)
        assert receiver.stats().unique_events == 2


async def test_forward_missing_ca_file_retries(tmp_path, outbox):
    certificates = make_certificates(tmp_path)
    async with Receiver(tmp_path / "central.sqlite", ssl_context=certificates.server_context) as receiver:
        await outbox.append(make_records(1))
        settings = central_for(receiver.url, ca_file=tmp_path / "missing-ca.pem")

        async with forwarding(outbox, settings) as forwarder:
            await wait_until(lambda: forwarder.status.retries >= 2)

        assert outbox.depth() == 1
        assert "central.ca_file" in (forwarder.status.last_error or "")


async def test_forward_survives_closed_outbox(tmp_path, receiver, caplog):
    caplog.set_level(logging.INFO, logger="agent.forwarder")
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        async with forwarding(outbox, central_for(receiver.url)) as forwarder:
            await outbox.close()
            await wait_until(lambda: forwarder.status.last_error is not None)
            await asyncio.sleep(0.3)
            errors = [record for record in caplog.records if record.levelno == logging.ERROR]

    assert (forwarder.status.last_error or "").startswith("outbox: OutboxUnavailable")
    assert len(errors) == 1
    assert "outbox" in errors[0].getMessage()


# -- status ---------------------------------------------------------------------------------


async def test_forward_status_snapshot_fields(outbox, receiver):
    await outbox.append(make_records(2))
    async with forwarding(outbox, central_for(receiver.url)) as forwarder:
        assert forwarder.status.snapshot()["wan_state"] == "unknown"
        await wait_drained(outbox, forwarder, 2)
        snapshot = forwarder.status.snapshot()

    assert snapshot["wan_state"] == "up"
    assert snapshot["delivered_records"] == 2
    assert snapshot["batches_sent"] == 1
    assert snapshot["retries"] == 0
    assert snapshot["dead_lettered"] == 0
    assert snapshot["consecutive_failures"] == 0
    assert snapshot["last_success_at"] is not None
    assert snapshot["last_progress_monotonic"] is not None
    assert snapshot["last_error"] is None
