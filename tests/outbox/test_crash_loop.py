"""The crash loop from bench/crashloop.py: a worker writing and forwarding through the outbox is
killed with SIGKILL at random points, restarted, and finally drained; then the files are compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def crash_loop(tmp_path: Path, kills: int, seed: int) -> dict:
    result = subprocess.run(
        [sys.executable, "bench/crashloop.py", "--kills", str(kills), "--seed", str(seed), "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def check(report: dict, kills: int) -> None:
    assert report["kills"] == kills
    assert report["accepted_by_source"]["mes"] > 0
    assert report["accepted_by_source"]["opcua-press"] > 0
    assert report["accepted_by_source"]["modbus-pump"] > 0
    assert report["missing_transactions"] == 0
    assert report["unexplained_telemetry_gaps"] == {}
    assert report["left_in_outbox"] == 0
    assert report["ok"] is True


def test_crash_loop_loses_no_accepted_record(tmp_path: Path) -> None:
    report = crash_loop(tmp_path, kills=10, seed=7)

    check(report, kills=10)


@pytest.mark.slow
def test_crash_loop_long(tmp_path: Path) -> None:
    report = crash_loop(tmp_path, kills=200, seed=11)

    check(report, kills=200)


def agent_crash_loop(kills: int, seed: int) -> dict:
    result = subprocess.run(
        [sys.executable, "bench/agent_crashloop.py", "--kills", str(kills), "--seed", str(seed), "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return json.loads(result.stdout)


def check_agent(report: dict, kills: int) -> None:
    assert report["kills"] == kills
    assert report["committed_at_kills"] > 0
    assert report["mes_transactions_accepted"] > 0
    assert report["missing_accepted_transactions"] == 0
    assert report["missing_transactions_and_events"] == 0
    assert report["missing_telemetry"] <= report["shed_records"]
    assert report["last_exit_code"] == 0
    assert report["ok"] is True


def test_agent_crash_loop_short() -> None:
    report = agent_crash_loop(kills=3, seed=5)

    check_agent(report, kills=3)


@pytest.mark.slow
def test_agent_crash_loop_long() -> None:
    report = agent_crash_loop(kills=200, seed=13)

    check_agent(report, kills=200)
