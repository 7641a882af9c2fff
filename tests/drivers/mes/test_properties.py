"""Property-based tests: random and malformed JSON and CSV thrown at the HTTP API and the drop folder.

Whatever arrives, the agent responds without a 5xx and without crashing, and every rejection
says why: a problem+json body with a detail per problem, or an `.error.txt` with a reason per
line.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.mes.config import MesDropConfig
from drivers.mes.drop_folder import ERROR_REPORT_SUFFIX, DropFolder, FileOutcome
from drivers.mes.file_formats import parse_file
from drivers.mes.intake import BatchInvalid, validate_batch
from drivers.mes.source import MesSource
from outbox.clock import SYSTEM_CLOCK
from outbox.store import Outbox
from tests.drivers.mes.conftest import TOKEN, goods_movement, mes_config, production_confirmation, quality_result

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
EXAMPLES = [goods_movement(), production_confirmation(), quality_result()]
FIELD_NAMES = sorted({name for example in EXAMPLES for name in example} | {"extra", ""})
_ids = itertools.count()


@st.composite
def mutated_transactions(draw: st.DrawFn) -> dict[str, Any]:
    """A valid transaction with a few fields changed, removed or added."""
    value = dict(draw(st.sampled_from(EXAMPLES)))
    value["transaction_id"] = f"P-{next(_ids)}"
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(FIELD_NAMES))
        if draw(st.booleans()):
            value.pop(name, None)
        else:
            value[name] = draw(json_values)
    return value


bodies = (
    json_values
    | mutated_transactions()
    | st.lists(mutated_transactions(), min_size=1, max_size=4)
    | st.lists(mutated_transactions() | json_values, min_size=0, max_size=3)
)


class LoopThread:
    """An event loop in a thread, running a real outbox and MES source for the sync tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.outbox = Outbox(folder / "outbox.sqlite")
        self.source = MesSource(mes_config(folder, max_body_bytes=20_000))
        self.task: asyncio.Task[None] | None = None

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def start(self) -> int:
        self.thread.start()

        async def begin() -> int:
            await self.outbox.__aenter__()
            self.task = asyncio.create_task(self.source.run(self.outbox))
            return await self.source.wait_listening()

        return int(self.call(begin()))

    def stop(self) -> None:
        async def end() -> None:
            if self.task is not None:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
            await self.outbox.close()

        self.call(end())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def agent_loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, int]]:
    runner = LoopThread(tmp_path_factory.mktemp("mes-properties"))
    port = runner.start()
    try:
        yield runner, port
    finally:
        runner.stop()


def request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {key.lower(): value for key, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def assert_explained(status: int, headers: dict[str, str], body: bytes) -> None:
    assert headers["content-type"].startswith("application/problem+json"), (status, body)
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["detail"].strip()
    if status in (400, 422):
        assert problem["errors"], problem
        for error in problem["errors"]:
            assert error["detail"].strip(), problem
            assert "pointer" in error


def post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    return request(port, "POST", "/v1/transactions", body, headers)


@SETTINGS
@given(value=bodies)
def test_post_any_json_is_stored_or_explained(agent_loop: tuple[LoopThread, int], value: Any) -> None:
    _, port = agent_loop

    status, headers, body = post(port, json.dumps(value).encode())

    assert status in (200, 201, 400, 413, 422), body
    if status >= 400:
        assert_explained(status, headers, body)
        return
    for item in json.loads(body)["transactions"]:
        found, _, _ = request(
            port, "GET", f"/v1/transactions/{item['transaction_id']}", None, {"Authorization": f"Bearer {TOKEN}"}
        )
        assert found == 200


@SETTINGS
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_post_any_bytes_is_explained(agent_loop: tuple[LoopThread, int], data: bytes) -> None:
    _, port = agent_loop

    status, headers, body = post(port, data)

    assert status in (200, 201, 400, 422), body
    if status >= 400:
        assert_explained(status, headers, body)


@settings(max_examples=40, deadline=None)
@given(
    content_type=st.sampled_from(["text/plain", "application/xml", "application/json; charset=utf-16", ""]),
    data=st.binary(max_size=50),
)
def test_post_other_content_types_answer_415(
    agent_loop: tuple[LoopThread, int], content_type: str, data: bytes
) -> None:
    _, port = agent_loop

    status, headers, body = post(port, data, content_type)

    assert status == 415
    assert_explained(status, headers, body)


# -- files ------------------------------------------------------------------------------------

CSV_HEADERS = ["transaction_id", "material", "quantity", "unit", "movement_type", "to_location", "posted_at", "x"]
csv_cells = st.sampled_from(["", "1,5", "1.5", "abc", "2026-03-02T07:15:00Z", '"q;"', "ä", "\x00", "\r"]) | st.text(
    max_size=8
)


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    header = draw(st.lists(st.sampled_from(CSV_HEADERS), min_size=0, max_size=8))
    rows = draw(st.lists(st.lists(csv_cells, max_size=9), max_size=5))
    lines = [";".join(header), *(";".join(row) for row in rows)]
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines)


file_contents = st.one_of(
    st.tuples(st.just(".json"), bodies.map(lambda value: json.dumps(value).encode())),
    st.tuples(
        st.just(".jsonl"),
        st.lists(mutated_transactions() | json_values, max_size=4).map(
            lambda values: "\n".join(json.dumps(value) for value in values).encode()
        ),
    ),
    st.tuples(st.just(".csv"), csv_texts().map(str.encode)),
    st.tuples(st.just(".csv"), csv_texts().map(lambda text: text.encode("utf-16"))),
    st.tuples(st.sampled_from([".json", ".jsonl", ".csv"]), st.binary(max_size=200)),
)

DROP_CONFIG = {
    "settle_s": 0,
    "legacy_encoding": "cp1252",
    "csv": [{"pattern": "*.csv", "type": "goods_movement", "delimiter": ";", "decimal_separator": ","}],
}


@SETTINGS
@given(content=file_contents)
def test_parse_any_file_returns_items_or_explains(content: tuple[str, bytes]) -> None:
    suffix, data = content
    config = MesDropConfig.model_validate({"folder": "/unused", **DROP_CONFIG})

    try:
        validate_batch(parse_file(f"drop{suffix}", data, config))
    except BatchInvalid as invalid:
        assert invalid.problems
        assert all(problem.reason.strip() for problem in invalid.problems)


@SETTINGS
@given(content=file_contents)
def test_drop_any_file_processed_or_reported(agent_loop: tuple[LoopThread, int], content: tuple[str, bytes]) -> None:
    runner, _ = agent_loop
    suffix, data = content
    config = MesDropConfig.model_validate({"folder": str(runner.folder / "drop"), **DROP_CONFIG})
    drop = DropFolder(config, "mes-line1", runner.outbox, SYSTEM_CLOCK)
    runner.call(drop.prepare())
    name = f"file-{next(_ids)}{suffix}"
    (drop.folder / name).write_bytes(data)

    outcome = runner.call(drop.process(drop.folder / name))

    assert not (drop.folder / name).exists()
    if outcome is FileOutcome.PROCESSED:
        assert (drop.folder / "processed" / name).exists()
        return
    assert outcome is FileOutcome.REJECTED
    assert (drop.folder / "error" / name).read_bytes() == data
    report = (drop.folder / "error" / (name + ERROR_REPORT_SUFFIX)).read_text(encoding="utf-8")
    problems = report.split("\n\n", 1)[1].strip()
    assert problems
