"""Accepted means synced: the outbox's write-ahead log reaches the disk before `append` returns.

A producer process is traced with strace. Between its "APPENDING" and "ACCEPTED" lines on
stdout, the trace must show the commit written to the `-wal` file and then an fdatasync or
fsync of that file that has returned. A second run with `synchronous = NORMAL` shows that the
check notices a missing sync.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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
