"""The asyncio client against a real corrald (conftest.py): the essentials
of test_client.py, awaited."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import Corrald, poll
from corral_client import AsyncClient, RequestFailed, Timeout, pb


def test_status_and_workers(corrald: Corrald) -> None:
    async def session() -> tuple[pb.SupervisorStatus, list[pb.WorkerInfo], RequestFailed]:
        async with await AsyncClient.connect(corrald.socket) as client:
            status = await client.status()
            workers = await client.workers()
            with pytest.raises(RequestFailed) as unknown:
                await client.workers("nosuch")
            return status, workers, unknown.value

    status, workers, unknown = asyncio.run(session())
    assert status.pid == corrald.pid
    assert {g.name: g.ready for g in status.groups} == {"web": 3, "stuck": 1}
    assert sorted((w.id, w.state) for w in workers) == [
        ("stuck-1", "ready"),
        ("web-1", "ready"),
        ("web-2", "ready"),
        ("web-3", "ready"),
    ]
    assert unknown.message == 'no group named "nosuch"'


def test_pipelined_requests_on_one_connection_are_matched_by_id(corrald: Corrald) -> None:
    async def session() -> tuple[list[int], list[object]]:
        async with await AsyncClient.connect(corrald.socket) as client:
            stop = client.stop("web-1")
            status = client.request(status=pb.StatusRequest())
            listing = client.request(list_workers=pb.ListWorkers(group="stuck"))
            nosuch = client.stop("nosuch")
            answers = await asyncio.gather(stop, status, listing, nosuch, return_exceptions=True)
            return [stop.id, status.id, listing.id, nosuch.id], list(answers)

    ids, (outcome, status, listing, nosuch) = asyncio.run(session())
    assert ids == [1, 2, 3, 4]
    assert isinstance(outcome, pb.Outcome) and (outcome.total, outcome.succeeded) == (1, 1)
    assert isinstance(status, pb.Response) and (status.id, status.supervisor_status.pid) == (2, corrald.pid)
    assert isinstance(listing, pb.Response) and [w.id for w in listing.workers.workers] == ["stuck-1"]
    assert isinstance(nosuch, RequestFailed) and nosuch.request_id == 4
    assert nosuch.message == 'no group or worker named "nosuch"'


def test_a_soft_stop_reports_progress_then_ok(corrald: Corrald) -> None:
    async def session() -> tuple[list[tuple[str, str]], pb.Outcome, pb.Response | None, dict[str, str]]:
        async with await AsyncClient.connect(corrald.socket) as client:
            stop = client.stop("web-2")
            progress = [(p.worker, p.event) async for p in stop]
            outcome = await stop
            after = {w.id: w.state for w in await client.workers()}
            return progress, outcome, stop.final, after

    progress, outcome, final, after = asyncio.run(session())
    assert progress == [("web-2", "acknowledged"), ("web-2", "stopped")]
    assert final is not None and (final.status, final.message) == (pb.STATUS_OK, "stopped web-2 (1 workers)")
    assert (outcome.total, outcome.succeeded) == (1, 1)
    assert after == {"stuck-1": "ready", "web-1": "ready", "web-2": "stopped", "web-3": "ready"}


def test_an_audited_stop_names_this_python_process(corrald: Corrald) -> None:
    async def session() -> int:
        async with await AsyncClient.connect(corrald.socket) as client:
            call = client.stop("web-3")
            await call
            return call.id

    request_id = asyncio.run(session())

    def stop_records() -> list[dict[str, Any]] | None:
        records = [r for r in corrald.audit_records() if r.get("command") == "Stop"]
        return records if len(records) == 2 else None

    comm = Path("/proc/self/comm").read_text().strip()
    for record in poll("the stop's accepted and ok records", stop_records):
        assert (record["request_id"], record["worker"]) == (request_id, "web-3")
        actor = record["actor"]
        assert (actor["pid"], actor["uid"], actor["comm"]) == (os.getpid(), os.getuid(), comm), record


def test_a_failure_is_raised_with_its_message_and_kind(corrald: Corrald) -> None:
    async def session() -> RequestFailed:
        async with await AsyncClient.connect(corrald.socket) as client:
            soft = client.stop("stuck")
            async for progress in soft:
                assert progress.event == "acknowledged"
                break
            with pytest.raises(Timeout):
                await soft.result(timeout=0.5)
            await client.stop("stuck", hard=True)
            with pytest.raises(RequestFailed) as interrupted:
                await soft
            assert (await client.status()).pid == corrald.pid
            return interrupted.value

    failure = asyncio.run(session())
    assert failure.message == "1 of 1 workers failed: stuck-1 (interrupted)"
    assert failure.kinds() == {"FAILURE_KIND_INTERRUPTED"}


def test_events_follow_a_stop_from_another_connection(corrald: Corrald) -> None:
    async def session() -> list[pb.Event]:
        async with await AsyncClient.connect(corrald.socket) as watcher, \
                await AsyncClient.connect(corrald.socket) as operator:
            events = await watcher.events("web-2")
            await operator.stop("web-2")
            seen: list[pb.Event] = []
            async for event in events:
                seen.append(event)
                if event.WhichOneof("kind") == "exited":
                    return seen
            return seen

    seen = asyncio.run(session())
    assert {e.worker for e in seen} == {"web-2"}, seen
    assert seen[-1].WhichOneof("kind") == "exited", seen
