"""The MES HTTP API: every response status, through real requests to a running source and a real outbox."""

from __future__ import annotations

import json
from pathlib import Path

from drivers.mes.intake import transaction_record_id
from tests.drivers.mes.conftest import (
    TOKEN,
    goods_movement,
    mes_config,
    production_confirmation,
    quality_result,
)

PROBLEM_JSON = "application/problem+json"


async def test_post_one_transaction_answers_201_after_storing(source_factory) -> None:
    async with source_factory() as running:
        status, _, body = await running.post(goods_movement("GM-100"))

        assert status == 201
        assert body["status"] == "created"
        assert body["transactions"] == [
            {
                "transaction_id": "GM-100",
                "record_id": transaction_record_id("mes-line1", "GM-100"),
                "status": "created",
            }
        ]
        assert await running.outbox.lookup(transaction_record_id("mes-line1", "GM-100")) == "stored"


async def test_post_keeps_quantities_exact_in_the_record(source_factory) -> None:
    body = (
        '[{"type": "goods_movement", "transaction_id": "GM-101", "material": "M", "quantity": 1234.5670,'
        ' "unit": "KG", "movement_type": "261", "to_location": "L1", "posted_at": "2026-03-02T07:15:00Z"},'
        ' {"type": "goods_movement", "transaction_id": "GM-102", "material": "M", "quantity": 0.123456789012345,'
        ' "unit": "KG", "movement_type": "261", "to_location": "L1", "posted_at": "2026-03-02T07:15:00Z"}]'
    )
    async with source_factory() as running:
        status, _, _ = await running.post_raw(body, running.headers(**{"Content-Type": "application/json"}))
        batch = await running.outbox.next_batch(10, 1 << 20)

    assert status == 201
    quantities = {stored.record.payload["transaction_id"]: stored.record.payload["quantity"] for stored in batch}
    assert quantities == {"GM-101": "1234.5670", "GM-102": "0.123456789012345"}


async def test_post_same_transaction_twice_answers_200_duplicate(source_factory) -> None:
    async with source_factory() as running:
        first, _, _ = await running.post(quality_result("QR-7"))
        second, _, body = await running.post(quality_result("QR-7"))
        depth = running.outbox.depth()

    assert first == 201
    assert second == 200
    assert body["status"] == "duplicate"
    assert body["transactions"][0]["status"] == "duplicate"
    assert depth == 1


async def test_post_mixed_array_answers_201_listing_each(source_factory) -> None:
    async with source_factory() as running:
        await running.post(production_confirmation("PC-1"))
        status, _, body = await running.post([production_confirmation("PC-1"), production_confirmation("PC-2")])
        depth = running.outbox.depth()

    assert status == 201
    assert [item["status"] for item in body["transactions"]] == ["duplicate", "created"]
    assert depth == 2


async def test_post_array_with_one_invalid_stores_nothing(source_factory) -> None:
    async with source_factory() as running:
        status, headers, body = await running.post(
            [goods_movement("GM-1"), goods_movement("GM-2", quantity="-3", unit=""), goods_movement("GM-3")]
        )
        depth = running.outbox.depth()

    assert status == 422
    assert headers["Content-Type"].startswith(PROBLEM_JSON)
    assert depth == 0
    pointers = {error["pointer"]: error["detail"] for error in body["errors"]}
    assert set(pointers) == {"/1/quantity", "/1/unit"}
    assert "greater than" in pointers["/1/quantity"]
    assert all(error["index"] == 1 for error in body["errors"])


async def test_post_invalid_fields_are_each_named(source_factory) -> None:
    async with source_factory() as running:
        status, _, body = await running.post(
            production_confirmation(
                "PC-9",
                yield_quantity="a lot",
                end_time="2026-03-02T05:00:00+01:00",
                finall=True,
            )
        )

    assert status == 422
    fields = {error["field"]: error["detail"] for error in body["errors"]}
    assert "'a lot' is not a decimal number" in fields["yield_quantity"]
    assert "did you mean 'final'" in fields["finall"]
    assert set(fields) == {"yield_quantity", "finall"}


async def test_post_end_before_start_names_end_time(source_factory) -> None:
    async with source_factory() as running:
        status, _, body = await running.post(production_confirmation("PC-10", end_time="2026-03-02T05:00:00+01:00"))

    assert status == 422
    assert body["errors"][0]["field"] == "end_time"
    assert "before start_time" in body["errors"][0]["detail"]


async def test_post_malformed_json_answers_400_with_line(source_factory) -> None:
    async with source_factory() as running:
        status, headers, body = await running.post_raw(
            '[\n  {"type": "goods_movement",\n  "transaction_id": }\n]',
            running.headers(**{"Content-Type": "application/json"}),
        )

    assert status == 400
    assert headers["Content-Type"].startswith(PROBLEM_JSON)
    assert body["errors"][0]["line"] == 3
    assert "invalid JSON" in body["detail"]


async def test_post_without_token_answers_401(source_factory) -> None:
    async with source_factory() as running:
        missing, missing_headers, _ = await running.post(goods_movement(), headers={"X-Other": "1"})
        wrong, wrong_headers, body = await running.post(goods_movement(), headers={"Authorization": "Bearer nope"})
        depth = running.outbox.depth()

    assert missing == 401
    assert missing_headers["WWW-Authenticate"].startswith("Bearer")
    assert wrong == 401
    assert 'error="invalid_token"' in wrong_headers["WWW-Authenticate"]
    assert TOKEN not in json.dumps(body)
    assert depth == 0


async def test_post_wrong_content_type_answers_415(source_factory) -> None:
    async with source_factory() as running:
        plain, _, body = await running.post_raw(
            json.dumps(goods_movement()), running.headers(**{"Content-Type": "text/plain"})
        )
        latin, _, _ = await running.post_raw(
            json.dumps(goods_movement()), running.headers(**{"Content-Type": "application/json; charset=latin-1"})
        )

    assert plain == 415
    assert latin == 415
    assert "application/json" in body["detail"]


async def test_post_past_size_limit_answers_413(tmp_path: Path, source_factory) -> None:
    config = mes_config(tmp_path, max_body_bytes=2000)
    async with source_factory(config) as running:
        declared, _, body = await running.post([goods_movement(f"GM-{n}") for n in range(20)])

        async def chunks():
            for n in range(20):
                yield json.dumps(goods_movement(f"GM-{n}")).encode()

        async with running.session.post(
            running.url, data=chunks(), headers=running.headers(**{"Content-Type": "application/json"})
        ) as response:
            chunked = response.status
        depth = running.outbox.depth()

    assert declared == 413
    assert "2000 bytes" in body["detail"]
    assert chunked == 413
    assert depth == 0


async def test_post_outbox_full_answers_503(tmp_path: Path, source_factory) -> None:
    config = mes_config(tmp_path, retry_after_s=17)
    async with source_factory(config, max_bytes=300) as running:
        status, headers, body = await running.post(goods_movement("GM-full"))
        state = await running.outbox.lookup(transaction_record_id("mes-line1", "GM-full"))

    assert status == 503
    assert headers["Retry-After"] == "17"
    assert "outbox full" in body["detail"]
    assert state is None


async def test_post_outbox_failing_answers_503(source_factory) -> None:
    async with source_factory() as running:
        await running.outbox.close()
        status, headers, body = await running.post(goods_movement("GM-closed"))
        lookup_status, _ = await running.get("GM-closed")

    assert status == 503
    assert int(headers["Retry-After"]) > 0
    assert "Nothing of this request was stored" in body["detail"]
    assert lookup_status == 503


async def test_get_reports_stored_forwarded_and_dead_lettered(source_factory) -> None:
    async with source_factory() as running:
        await running.post([goods_movement("GM-a"), goods_movement("GM-b"), goods_movement("GM-c")])
        batch = await running.outbox.next_batch(10, 1 << 20)
        seq_by_id = {stored.record.payload["transaction_id"]: stored.seq for stored in batch}
        await running.outbox.acknowledge([seq_by_id["GM-b"]])
        await running.outbox.dead_letter([seq_by_id["GM-c"]], 422, "rejected by the receiver")

        answers = {name: await running.get(name) for name in ("GM-a", "GM-b", "GM-c", "GM-unknown")}

    assert answers["GM-a"] == (
        200,
        {"transaction_id": "GM-a", "record_id": transaction_record_id("mes-line1", "GM-a"), "state": "stored"},
    )
    assert answers["GM-b"][1]["state"] == "forwarded"
    assert answers["GM-c"][1]["state"] == "dead-lettered"
    assert answers["GM-unknown"][0] == 404
    assert "GM-unknown" in answers["GM-unknown"][1]["detail"]


async def test_get_without_token_answers_401(source_factory) -> None:
    async with source_factory() as running:
        async with running.session.get(f"{running.url}/GM-1") as response:
            status = response.status

    assert status == 401


async def test_unknown_path_answers_problem_json(source_factory) -> None:
    async with source_factory() as running:
        async with running.session.put(running.url, headers=running.headers()) as response:
            method_status, method_type = response.status, response.headers["Content-Type"]
        async with running.session.get(
            running.url.replace("/v1/transactions", "/v2"), headers=running.headers()
        ) as response:
            path_status = response.status

    assert method_status == 405
    assert method_type.startswith(PROBLEM_JSON)
    assert path_status == 404


async def test_status_reports_bound_port_and_counts(source_factory) -> None:
    async with source_factory() as running:
        await running.post(goods_movement("GM-s1"))
        await running.post(goods_movement("GM-s1"))
        await running.post({"type": "goods_movement"})
        snapshot = running.source.status.snapshot()

    assert snapshot["state"] == "connected"
    assert snapshot["http_port"] == running.source.bound_port
    assert snapshot["http_transactions_created"] == 1
    assert snapshot["http_transactions_duplicate"] == 1
    assert snapshot["http_requests_rejected"] == 1
    assert snapshot["records_captured"] == 1


async def test_get_finds_id_with_slash_and_percent(source_factory) -> None:
    async with source_factory() as running:
        await running.post(goods_movement("WE/2026/17%a"))
        async with running.session.get(f"{running.url}/WE%2F2026%2F17%25a", headers=running.headers()) as response:
            status, body = response.status, await response.json()

    assert status == 200
    assert body["transaction_id"] == "WE/2026/17%a"
