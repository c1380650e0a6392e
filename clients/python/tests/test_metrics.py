"""corrald's metrics, as `corralctl metrics` prints them and as GET
/metrics serves them (metrics_listen), read by prometheus_client's
OpenMetrics parser, the one Prometheus' Python ecosystem scrapes with: the
text must parse, and its values must be what known actions left."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import BIN_DIR, Corrald, poll
from corral_client import Client

CORRALCTL = BIN_DIR / "corralctl"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample by name and labels; fails the test on text the parser
    refuses."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def corralctl_metrics(daemon: Corrald) -> str:
    done = subprocess.run(
        [CORRALCTL, "--socket", daemon.socket, "metrics"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def served() -> Iterator[tuple[Corrald, str]]:
    """A corrald that also serves its metrics over HTTP, on a port of its
    choosing (found in its log), and reads its workers' usage often; and
    the endpoint's URL."""
    if not os.access(CORRALCTL, os.X_OK):
        pytest.fail(f"{CORRALCTL} is not there: build corral first (cargo build) or set CORRAL_BIN_DIR")
    directory = Path(tempfile.mkdtemp(prefix="corral-py-"))
    daemon = Corrald(directory)
    prefix = 'metrics_listen = "127.0.0.1:0"\nusage_interval = "100ms"\n'
    daemon.config.write_text(prefix + daemon.config.read_text())
    try:
        daemon.start()

        def url() -> str | None:
            found = re.search(r"serving metrics over HTTP on (http://\S+/metrics)", daemon.stderr.read_text())
            return found.group(1) if found else None

        yield daemon, poll("corrald to log where it serves metrics", url)
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_corralctl_metrics_count_a_killed_worker_and_a_stop(served: tuple[Corrald, str]) -> None:
    daemon, _ = served
    with Client(daemon.socket) as client:
        killed = next(w for w in client.workers("web") if w.id == "web-1")
        os.kill(killed.pid, signal.SIGKILL)

        def restarted() -> bool | None:
            again = next(w for w in client.workers("web") if w.id == "web-1")
            return True if again.state == "ready" and again.pid != killed.pid else None

        poll("web-1 to be restarted and ready", restarted)
        client.stop("web-2").result()
        with pytest.raises(Exception):
            client.stop("nosuch").result()

    samples = parse(corralctl_metrics(daemon))
    assert value(samples, "corral_worker_exits_total", group="web", reason="signal") == 1
    assert value(samples, "corral_worker_restarts_total", group="web", reason="exit") == 1
    assert value(samples, "corral_workers", group="web", state="ready") == 2
    assert value(samples, "corral_workers", group="web", state="stopped") == 1
    assert value(samples, "corral_workers", group="stuck", state="ready") == 1
    assert value(samples, "corral_workers_desired", group="web") == 3
    assert value(samples, "corral_requests_total", command="Stop", result="ok") == 1
    assert value(samples, "corral_requests_total", command="Stop", result="failed") == 1
    assert value(samples, "corral_request_duration_seconds_count", command="Stop") == 2
    assert value(samples, "corral_request_duration_seconds_bucket", command="Stop", le="+Inf") == 2
    # Each stop has its accepted record and its outcome's.
    assert value(samples, "corral_audit_records_total", result="accepted") == 2
    assert value(samples, "corral_audit_records_total", result="ok") == 1
    assert value(samples, "corral_audit_records_total", result="failed") == 1
    assert value(samples, "corral_audit_write_failures_total") == 0
    assert value(samples, "corral_event_subscribers") == 0


def test_the_http_endpoint_serves_what_the_socket_does(served: tuple[Corrald, str]) -> None:
    daemon, url = served
    with Client(daemon.socket) as client:
        client.stop("web-3").result()
        on_socket = parse(client.metrics())
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        over_http = parse(response.read().decode())
    for samples in (on_socket, over_http):
        assert value(samples, "corral_workers", group="web", state="stopped") == 1
        assert value(samples, "corral_workers", group="web", state="ready") == 2
        assert value(samples, "corral_requests_total", command="Stop", result="ok") == 1
    # The socket's own Metrics request is counted once its answer is out.
    assert value(over_http, "corral_requests_total", command="Metrics", result="ok") == 1
    with pytest.raises(urllib.error.HTTPError) as elsewhere:
        urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
    assert elsewhere.value.code == 404


def test_each_running_worker_s_cpu_and_memory_are_there(served: tuple[Corrald, str]) -> None:
    daemon, _ = served
    with Client(daemon.socket) as client:
        client.stop("web-2").result()
        pid = next(w.pid for w in client.workers("web") if w.id == "web-1")

    def read() -> Samples | None:
        samples = parse(corralctl_metrics(daemon))
        key = ("corral_worker_memory_bytes", frozenset({"group": "web", "worker": "web-1", "source": "proc"}.items()))
        return samples if key in samples else None

    samples = poll("web-1's usage in the metrics", read)
    labels = {"group": "web", "worker": "web-1", "source": "proc"}
    rss_kib = int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
    memory = value(samples, "corral_worker_memory_bytes", **labels)
    assert 0 < memory < 4 * rss_kib * 1024, (memory, rss_kib)
    assert value(samples, "corral_worker_cpu_seconds_total", **labels) >= 0
    assert value(samples, "corral_worker_memory_peak_bytes", **labels) >= memory
    assert value(samples, "corral_worker_tasks", **labels) >= 1
    stopped = [k for k in samples if k[0] == "corral_worker_memory_bytes" and ("worker", "web-2") in k[1]]
    assert stopped == [], "a stopped worker has no usage"


def _connect(url: str) -> socket.socket:
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=15)


def _answer(conn: socket.socket) -> bytes:
    """All the endpoint sends before it closes; b"" for a close unanswered."""
    got = b""
    try:
        while chunk := conn.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


def test_the_http_endpoint_is_bounded_and_frees_what_it_held(served: tuple[Corrald, str]) -> None:
    _, url = served
    # A request head past 8 KiB is refused, not buffered.
    with _connect(url) as big:
        big.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 10) + b"\r\n\r\n")
        assert not _answer(big).startswith(b"HTTP/1.1 200"), "an oversized head was served"
    # 16 connections that never finish their head hold every place: one
    # more is closed unanswered, whatever it asks.
    silent = [_connect(url) for _ in range(16)]
    for conn in silent:
        conn.sendall(b"GET /metrics HTTP/1.1\r\n")
    with _connect(url) as extra:
        extra.sendall(GET)
        assert _answer(extra) == b"", "a 17th connection was served"
    # corrald closes a silent one once its head is late (5 s), by itself.
    assert _answer(silent[0]) == b"", "a silent connection was answered"
    for conn in silent:
        conn.close()

    def served_again() -> bool | None:
        with _connect(url) as conn:
            conn.sendall(GET)
            return True if _answer(conn).startswith(b"HTTP/1.1 200") else None

    poll("the endpoint to serve once the silent connections are gone", served_again)
