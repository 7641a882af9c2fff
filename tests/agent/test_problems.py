"""The `problems` summary of `/status`: one line per thing that needs an operator, none when healthy."""

from __future__ import annotations

from agent.supervisor import summarise_problems

CONNECTED = {"name": "press", "state": "connected", "last_error": None}
HEALTHY_OUTBOX = {"condition": None, "writer_alive": True, "dead_letters": 0, "shed_records": 0}


def test_healthy_agent_has_no_problems() -> None:
    assert summarise_problems([CONNECTED], HEALTHY_OUTBOX, {"wan_state": "up"}, []) == []


def test_each_condition_gives_one_line() -> None:
    sources = [CONNECTED, {"name": "meter", "state": "disconnected", "last_error": "connection refused"}]
    outbox = {
        "condition": "disk-full",
        "last_error": "database or disk is full",
        "writer_alive": True,
        "dead_letters": 2,
        "shed_records": 40,
    }
    forwarder = {"wan_state": "down", "last_error": "timed out after 30 s"}
    incidents = [{"message": "outbox moved aside"}]

    problems = summarise_problems(sources, outbox, forwarder, incidents)

    assert problems == [
        "source meter is disconnected: connection refused",
        "outbox: disk-full: database or disk is full",
        "central endpoint unavailable: timed out after 30 s",
        "2 dead letter(s): see `plantgate outbox list`",
        "40 telemetry record(s) shed to stay within outbox.max_bytes",
        "incident: outbox moved aside",
    ]


def test_stopped_writer_is_a_problem() -> None:
    outbox = {**HEALTHY_OUTBOX, "writer_alive": False}

    assert summarise_problems([], outbox, {}, []) == ["outbox: the writer task stopped; restart the agent"]
