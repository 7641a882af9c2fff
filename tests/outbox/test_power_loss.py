"""Accepted means synced: the outbox's write-ahead log reaches the disk before `append` returns.

A producer process is traced with strace. Between its "APPENDING" and "ACCEPTED" lines on
stdout, the trace must show the commit written to the `-wal` file and then an fdatasync or
fsync of that file that has returned. A second run with `synchronous = NORMAL` shows that the
check notices a missing sync. Then the agent itself is traced while the MES posts a transaction:
the WAL write holding the transaction and a returned sync of the WAL come before the HTTP 201.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<fd>\d+)<(?P<path>[^>]*)>(?P<rest>.*)$")
RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$")

pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)"
)


def completed_calls(trace: list[str]) -> list[tuple[str, str, str]]:
    """(syscall, path, rest) for each call in the order it returned; unfinished calls count when resumed."""
    pending: dict[str, tuple[str, str]] = {}
    calls: list[tuple[str, str, str]] = []
    for line in trace:
        resumed = RESUMED.match(line)
        if resumed:
            name, path = pending.pop(resumed["pid"], (resumed["name"], ""))
            calls.append((name, path, resumed["rest"]))
            continue
        call = CALL.match(line)
        if not call:
            continue
        if "<unfinished ...>" in call["rest"]:
            pending[call["pid"]] = (call["name"], call["path"])
        else:
            calls.append((call["name"], call["path"], call["rest"]))
    return calls


def wal_synced_before_accept(trace: list[str]) -> bool:
    """Whether, between APPENDING and ACCEPTED, a WAL write is followed by a returned sync of the WAL."""
    calls = completed_calls(trace)
    start = next(i for i, (name, _, rest) in enumerate(calls) if name == "write" and "APPENDING" in rest)
    end = next(i for i, (name, _, rest) in enumerate(calls) if name == "write" and "ACCEPTED" in rest)
    window = calls[start + 1 : end]
    wal_writes = [i for i, (name, path, _) in enumerate(window) if name.startswith("pwrite") and path.endswith("-wal")]
    if not wal_writes:
        return False
    return any(
        name in ("fdatasync", "fsync") and path.endswith("-wal") and rest.rstrip().endswith("= 0")
        for name, path, rest in window[wal_writes[-1] + 1 :]
    )


def trace_append(tmp_path: Path, *flags: str) -> list[str]:
    log = tmp_path / "strace.log"
    outbox = tmp_path / "outbox.sqlite"
    result = subprocess.run(
        [
            "strace", "-f", "-y", "-o", str(log),
            "-e", "trace=write,pwrite64,fsync,fdatasync,sync_file_range",
            sys.executable, "-m", "tests.outbox.append_one", str(outbox), *flags,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["APPENDING", "ACCEPTED"]
    return log.read_text().splitlines()


def test_append_returns_after_wal_is_synced(tmp_path: Path) -> None:
    trace = trace_append(tmp_path)

    assert wal_synced_before_accept(trace)


def test_check_notices_missing_sync(tmp_path: Path) -> None:
    trace = trace_append(tmp_path, "--unsafe")

    assert not wal_synced_before_accept(trace)


def test_unfinished_calls_count_when_they_return() -> None:
    trace = [
        '10 write(1</dev/null>, "APPENDING\\n", 10) = 10',
        '11 pwrite64(7</x/outbox.sqlite-wal>, "..."..., 4096, 0) = 4096',
        "11 fdatasync(7</x/outbox.sqlite-wal> <unfinished ...>",
        '10 write(1</dev/null>, "ACCEPTED\\n", 9) = 9',
        "11 <... fdatasync resumed>)  = 0",
    ]

    assert not wal_synced_before_accept(trace)
    assert wal_synced_before_accept([*trace[:3], trace[4], trace[3]])


MES_CONFIG = """
[agent]
site = "plant1"
gateway_id = "gw-sync"

[outbox]
path = "{outbox}"

[central]
url = "http://127.0.0.1:{central_port}/v1/events"

[health]
port = 0

[[sources]]
type = "mes"
name = "mes-line1"

[sources.http]
port = {mes_port}
token_file = "{token}"
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post_until_answered(url: str, body: bytes, token: str, limit_s: float) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def mes_reply_follows_wal_sync(trace: list[str], transaction_id: str) -> bool:
    """Whether the WAL write holding `transaction_id`, then a returned sync of the WAL, come
    before the agent writes the HTTP 201 reply to the socket."""
    calls = completed_calls(trace)
    reply = next(i for i, (name, _, rest) in enumerate(calls) if name in SOCKET_WRITES and "HTTP/1.1 201" in rest)
    record_writes = [
        i
        for i, (name, path, rest) in enumerate(calls[:reply])
        if name.startswith("pwrite") and path.endswith("-wal") and transaction_id in rest
    ]
    if not record_writes:
        return False
    return any(
        name in ("fdatasync", "fsync") and path.endswith("-wal") and rest.rstrip().endswith("= 0")
        for name, path, rest in calls[record_writes[-1] + 1 : reply]
    )


SOCKET_WRITES = ("write", "writev", "sendto", "sendmsg")


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def test_mes_reply_is_sent_after_wal_sync(tmp_path: Path) -> None:
    token = "sync-test-token"
    (tmp_path / "mes.token").write_text(token + "\n")
    mes_port = free_port()
    config = tmp_path / "plantgate.toml"
    config.write_text(
        MES_CONFIG.format(
            outbox=tmp_path / "outbox.sqlite", central_port=free_port(), mes_port=mes_port, token=tmp_path / "mes.token"
        )
    )
    log = tmp_path / "strace.log"
    agent = subprocess.Popen(
        [
            "strace", "-f", "-y", "-s", "8192", "-o", str(log),
            "-e", "trace=write,writev,sendto,sendmsg,pwrite64,fsync,fdatasync",
            sys.executable, "-m", "agent", "run", "--config", str(config),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    transaction = {
        "type": "goods_movement",
        "transaction_id": "SYNC-CHECK-4711",
        "material": "RM-4711",
        "quantity": "12.500",
        "unit": "KG",
        "movement_type": "261",
        "from_location": "WH01",
        "to_location": "LINE1",
        "posted_at": "2026-03-02T07:15:00+01:00",
    }
    try:
        status = post_until_answered(
            f"http://127.0.0.1:{mes_port}/v1/transactions", json.dumps(transaction).encode(), token, 60
        )
    finally:
        # Stop the agent, not strace: strace detaches on SIGTERM and leaves the agent running.
        for pid in child_pids(agent.pid):
            os.kill(pid, signal.SIGTERM)
        try:
            agent.wait(60)
        finally:
            if agent.poll() is None:
                for pid in child_pids(agent.pid):
                    os.kill(pid, signal.SIGKILL)
                agent.kill()

    assert status == 201
    assert mes_reply_follows_wal_sync(log.read_text().splitlines(), "SYNC-CHECK-4711")
