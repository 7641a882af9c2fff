"""The agent as a real process, killed with SIGKILL at random moments while the MES posts
transactions and drops files, then started again.

Afterwards every transaction that got a 2xx, and every transaction of a file that reached
processed/, is at the receiver exactly once. No transaction that got an error status, and none
of a file moved to error/, is there.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from agent.receiver import Receiver
from drivers.mes.intake import transaction_record_id
from tests.conftest import REPO_ROOT, free_port, plantgate_command
from tests.drivers.mes.conftest import TOKEN, goods_movement

SOURCE = "mes-line1"
CONFIG = """
[agent]
site = "plant1"
gateway_id = "gw-mes-kill"

[outbox]
path = "{outbox}"

[central]
url = "{central}"
timeout_s = 2
batch_max_records = 20
retry_initial_s = 0.1
retry_max_s = 0.5
idle_poll_s = 0.1

[health]
port = 0

[logging]
format = "json"

[[sources]]
type = "mes"
name = "{source}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5

[sources.http]
port = {port}
token_file = "{token}"

[sources.drop]
folder = "{drop}"
settle_s = 0.2
poll_interval_s = 0.05
"""


@dataclass
class MesLedger:
    """The responses the simulated MES received, by transaction id, and the files it wrote."""

    accepted: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    unanswered: set[str] = field(default_factory=set)
    files: dict[str, list[str]] = field(default_factory=dict)
    bad_files: set[str] = field(default_factory=set)


async def post_transactions(url: str, ledger: MesLedger, stop: asyncio.Event) -> None:
    """Post until stopped: mostly valid batches of one to three, every seventh one invalid."""
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    number = 0
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            number += 1
            if number % 7 == 0:
                batch = [goods_movement(f"HB-{number}-0"), goods_movement(f"HB-{number}-1", quantity="-1")]
            else:
                batch = [goods_movement(f"H-{number}-{k}") for k in range(1 + number % 3)]
            ids = [transaction["transaction_id"] for transaction in batch]
            try:
                async with session.post(url, json=batch, headers=headers) as response:
                    status = response.status
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                ledger.unanswered.update(ids)
                await asyncio.sleep(0.05)
                continue
            (ledger.accepted if 200 <= status < 300 else ledger.rejected).update(ids)
            await asyncio.sleep(0.01)


async def drop_files(folder: Path, ledger: MesLedger, stop: asyncio.Event) -> None:
    """Write a JSON lines file every 0.1 s, renamed from a temporary name; every fifth has a bad line."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    number = 0
    while not stop.is_set():
        number += 1
        name = f"f{number:04d}.jsonl"
        bad = number % 5 == 0
        prefix = "FB" if bad else "F"
        transactions = [goods_movement(f"{prefix}-{number}-{k}") for k in range(3)]
        if bad:
            transactions[1]["posted_at"] = "not a time"
        await asyncio.to_thread(write_complete_file, folder / name, transactions)
        ledger.files[name] = [transaction["transaction_id"] for transaction in transactions]
        if bad:
            ledger.bad_files.add(name)
        await asyncio.sleep(0.1)


def write_complete_file(path: Path, transactions: list[dict[str, object]]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(transaction) + "\n" for transaction in transactions))
    os.rename(temporary, path)


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        plantgate_command("run", "--config", str(config)),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


async def wait_until(condition: Callable[[], bool], limit_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(limit_s):
            while not condition():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit_s} s waiting until {what}") from None


def files_in(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if path.is_file()} if folder.exists() else set()


async def run_kill_cycles(tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    drop = tmp_path / "drop"
    port = free_port()
    (tmp_path / "mes.token").write_text(TOKEN)
    ledger = MesLedger()
    stop = asyncio.Event()
    log = tmp_path / "agent.log"

    async with Receiver(tmp_path / "receiver.sqlite") as receiver:
        config = tmp_path / "plantgate.toml"
        config.write_text(
            CONFIG.format(
                outbox=tmp_path / "outbox.sqlite",
                central=receiver.url,
                source=SOURCE,
                port=port,
                token=tmp_path / "mes.token",
                drop=drop,
            )
        )
        url = f"http://127.0.0.1:{port}/v1/transactions"
        async with asyncio.TaskGroup() as load:
            load.create_task(post_transactions(url, ledger, stop))
            load.create_task(drop_files(drop, ledger, stop))

            for _ in range(kills):
                agent = start_agent(config, log)
                await asyncio.sleep(rng.uniform(0.8, 3.0))
                agent.send_signal(signal.SIGKILL)
                await asyncio.to_thread(agent.wait)

            agent = start_agent(config, log)
            await wait_until(lambda: len(ledger.accepted) > 0, 30, "a post is accepted after the last restart")
            await asyncio.sleep(0.5)
            stop.set()

        try:
            await wait_until(lambda: not files_in(drop), 30, "the drop folder is empty")
            processed = files_in(drop / "processed")
            expected = {transaction_record_id(SOURCE, i) for i in ledger.accepted}
            for name in processed:
                expected.update(transaction_record_id(SOURCE, i) for i in ledger.files[name])
            await wait_until(
                lambda: expected <= {event.id for event in receiver.events()}, 60, "the receiver has every transaction"
            )
        finally:
            agent.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(agent.wait, 30)
        received = [event.id for event in receiver.events()]

    errored = files_in(drop / "error")
    context = f"seed {seed}, log {log}"
    received_set = set(received)
    assert exit_code == 0, context
    assert len(received) == len(received_set), context
    assert ledger.accepted, context
    assert processed, context
    for transaction_id in ledger.accepted:
        assert transaction_record_id(SOURCE, transaction_id) in received_set, (
            f"accepted {transaction_id} lost; {context}"
        )
    for transaction_id in ledger.rejected:
        assert transaction_record_id(SOURCE, transaction_id) not in received_set, (
            f"rejected {transaction_id} stored; {context}"
        )
    for name in processed:
        assert name not in ledger.bad_files, f"{name} processed despite its bad line; {context}"
        for transaction_id in ledger.files[name]:
            assert transaction_record_id(SOURCE, transaction_id) in received_set, (
                f"{name}: {transaction_id} lost; {context}"
            )
    assert {name for name in errored if not name.endswith(".error.txt")} == ledger.bad_files, context
    for name in ledger.bad_files:
        for transaction_id in ledger.files[name]:
            assert transaction_record_id(SOURCE, transaction_id) not in received_set, (
                f"{name}: {transaction_id} stored; {context}"
            )
    assert processed | ledger.bad_files == set(ledger.files), f"a file went missing; {context}"
    known = ledger.accepted | ledger.unanswered | {i for name in processed for i in ledger.files[name]}
    assert received_set <= {transaction_record_id(SOURCE, i) for i in known}, context


async def test_sigkill_keeps_accepted_transactions_once(tmp_path: Path) -> None:
    await run_kill_cycles(tmp_path, kills=3, seed=random.randrange(1 << 30))


@pytest.mark.slow
async def test_sigkill_many_times_keeps_transactions_once(tmp_path: Path) -> None:
    await run_kill_cycles(tmp_path, kills=25, seed=random.randrange(1 << 30))
