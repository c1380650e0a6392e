"""The synchronous client against a real corrald (conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conftest import Corrald, poll
from corral_client import Client, ConnectionClosed, RequestFailed, Timeout, pb


def test_status_and_workers(corrald: Corrald) -> None:
    with Client(corrald.socket) as client:
        status = client.status()
        workers = client.workers()
        web = client.workers("web")
        with pytest.raises(RequestFailed) as unknown:
            client.workers("nosuch")

    assert status.pid == corrald.pid
    assert status.socket_path == str(corrald.socket)
    assert status.config_path == str(corrald.config)
    assert status.version
    assert not status.scopes_active
    groups = {g.name: (g.state, g.desired, g.ready) for g in status.groups}
    assert groups == {"web": ("running", 3, 3), "stuck": ("running", 1, 1)}

    assert sorted(w.id for w in workers) == ["stuck-1", "web-1", "web-2", "web-3"]
    assert [w.id for w in web] == ["web-1", "web-2", "web-3"]
    for worker in workers:
        assert worker.state == "ready"
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
        assert b"corral-demo-worker" in cmdline, f"{worker.id}'s pid {worker.pid} runs {cmdline!r}"
    assert unknown.value.message == 'no group named "nosuch"'


def test_pipelined_requests_on_one_connection_are_matched_by_id(corrald: Corrald) -> None:
    with Client(corrald.socket) as client:
        # All four go out before any answer is read; web's units take
        # 200 ms, so the stop is still draining when the rest are answered.
        stop = client.stop("web-1")
        status = client.request(status=pb.StatusRequest())
        listing = client.request(list_workers=pb.ListWorkers(group="stuck"))
        refused = client.request(stop=pb.Stop(target="web/x"))
        assert [stop.id, status.id, listing.id, refused.id] == [1, 2, 3, 4]

        # Taken in the opposite order to the one they were sent in.
        with pytest.raises(RequestFailed) as bad_target:
            refused.result()
        stuck = listing.result()
        supervisor = status.result()
        outcome = stop.result()

    assert bad_target.value.request_id == 4
    assert bad_target.value.message.startswith('refused: invalid target "web/x"'), bad_target.value.message
    assert (stuck.id, stuck.status) == (3, pb.STATUS_OK)
    assert [w.id for w in stuck.workers.workers] == ["stuck-1"]
    assert (supervisor.id, supervisor.status) == (2, pb.STATUS_OK)
    assert supervisor.supervisor_status.pid == corrald.pid
    assert (outcome.total, outcome.succeeded, list(outcome.failures)) == (1, 1, [])
    assert stop.final is not None and stop.final.id == 1


def test_more_requests_than_corrald_keeps_in_flight_are_pipelined(corrald: Corrald) -> None:
    # Far beyond limits.max_requests_in_flight (64) and the socket buffers:
    # corrald stops reading until answers are taken, and the client takes
    # them while it sends, so neither side waits on the other.
    with Client(corrald.socket, timeout=10) as client:
        calls = [client.request(status=pb.StatusRequest()) for _ in range(2000)]
        answers = [call.result() for call in calls]
    assert [a.id for a in answers] == list(range(1, 2001))
    assert {a.supervisor_status.pid for a in answers} == {corrald.pid}


def test_a_soft_stop_reports_progress_then_ok(corrald: Corrald) -> None:
    with Client(corrald.socket) as client:
        pid = {w.id: w.pid for w in client.workers()}["web-2"]
        stop = client.stop("web-2")
        progress = [(p.worker, p.event, p.total, p.acknowledged, p.finished) for p in stop]
        outcome = stop.result()
        after = {w.id: w for w in client.workers()}

    assert progress == [("web-2", "acknowledged", 1, 1, 0), ("web-2", "stopped", 1, 1, 1)]
    assert stop.final is not None
    assert (stop.final.status, stop.final.message) == (pb.STATUS_OK, "stopped web-2 (1 workers)")
    assert (outcome.total, outcome.succeeded) == (1, 1)
    assert (after["web-2"].state, after["web-2"].pid) == ("stopped", 0)
    assert after["web-1"].state == "ready"
    # It drained through the worker protocol: every unit it began was
    # done, and it exited on its own.
    lines = [line for line in corrald.work_lines() if line[1:3] == ["web-2", str(pid)]]
    started = {line[3] for line in lines if line[0] == "start"}
    done = {line[3] for line in lines if line[0] == "done"}
    assert started and started == done, lines
    assert lines[-1][0] == "exit", lines


def test_an_audited_stop_names_this_python_process(corrald: Corrald) -> None:
    with Client(corrald.socket) as client:
        call = client.stop("web-3")
        call.result()

    def stop_records() -> list[dict[str, Any]] | None:
        records = [r for r in corrald.audit_records() if r.get("command") == "Stop" and r.get("worker") == "web-3"]
        return records if len(records) == 2 else None

    accepted, ok = poll("the stop's accepted and ok records", stop_records)
    comm = Path("/proc/self/comm").read_text().strip()
    assert comm.startswith("python"), f"run the tests as `python -m pytest` (this process is {comm!r})"
    for record in (accepted, ok):
        assert record["request_id"] == call.id
        assert record["socket"] == str(corrald.socket)
        assert "target=web-3" in record["arguments"], record
        actor = record["actor"]
        assert actor["kind"] == "client"
        assert (actor["pid"], actor["uid"], actor["comm"]) == (os.getpid(), os.getuid(), comm), record
    assert (accepted["result"], ok["result"]) == ("accepted", "ok")
    assert ok["reason"] == "stopped web-3 (1 workers)"


def test_a_failure_is_raised_with_its_message_and_kind(corrald: Corrald) -> None:
    with Client(corrald.socket) as client:
        with pytest.raises(RequestFailed) as nosuch:
            client.stop("nosuch").result()
        with pytest.raises(RequestFailed) as no_scopes:
            client.limit("web", ["MemoryMax=64M"])

        # A soft stop that never finishes: waiting for it times out and
        # leaves it in flight, until a hard stop overtakes it.
        soft = client.stop("stuck")
        assert next(iter(soft)).event == "acknowledged"
        with pytest.raises(Timeout):
            soft.result(timeout=0.5)
        hard = client.stop("stuck", hard=True)
        assert hard.result().succeeded == 1
        with pytest.raises(RequestFailed) as interrupted:
            soft.result()

        # The connection outlives every FAILURE above.
        assert client.status().pid == corrald.pid

    assert nosuch.value.message == 'no group or worker named "nosuch"'
    assert "scopes are not active" in no_scopes.value.message, no_scopes.value.message
    failure = interrupted.value
    assert failure.request_id == soft.id
    assert failure.message == "1 of 1 workers failed: stuck-1 (interrupted)"
    assert failure.kinds() == {"FAILURE_KIND_INTERRUPTED"}
    assert [(f.worker, f.kind, f.detail) for f in failure.failures] == [
        ("stuck-1", pb.FAILURE_KIND_INTERRUPTED, "interrupted by a hard stop")
    ]


def test_corrald_closing_the_connection_fails_what_is_in_flight_with_its_reason(corrald: Corrald) -> None:
    with Client(corrald.socket) as client:
        # Over the config's max_frame_size of 4096 bytes.
        too_big = client.request(limit=pb.Limit(target="web", properties=["MemoryMax=64M" * 20] * 32))
        with pytest.raises(ConnectionClosed) as closed:
            too_big.result()
        with pytest.raises(ConnectionClosed):
            client.status()

    assert closed.value.reason is not None
    assert closed.value.reason.startswith("bad frame: frame size too big"), closed.value.reason


def test_events_follow_a_stop_from_another_connection(corrald: Corrald) -> None:
    with Client(corrald.socket) as watcher, Client(corrald.socket) as operator:
        events = watcher.events("web")
        operator.stop("web-1").result()
        seen: list[pb.Event] = []
        for event in events:
            seen.append(event)
            kinds = {(e.worker, e.WhichOneof("kind")) for e in seen}
            if {("web-1", "exited"), ("web-1", "request")} <= kinds:
                break

    assert {e.group for e in seen} == {"web"}, "the filter lets through web's events only"
    exited = next(e.exited for e in seen if e.WhichOneof("kind") == "exited")
    assert "drained" in exited.description or exited.code == 0, exited
    request = next(e.request for e in seen if e.WhichOneof("kind") == "request")
    assert (request.command, request.uid, request.outcome) == ("Stop", os.getuid(), "ok"), request


def test_a_replay_tells_what_happened_before_the_subscription(corrald: Corrald) -> None:
    with Client(corrald.socket) as watcher, Client(corrald.socket) as operator:
        pid = next(w.pid for w in operator.workers() if w.id == "web-1")
        events = watcher.events("web-1", replay=64)
        operator.stop("web-1").result()
        replayed: list[pb.Event] = []
        for event in events:
            if not event.replayed:
                break
            replayed.append(event)

    assert all(e.worker in ("web-1", "") for e in replayed), replayed
    spawned = [e.spawned for e in replayed if e.WhichOneof("kind") == "spawned"]
    assert [s.pid for s in spawned] == [pid], replayed
