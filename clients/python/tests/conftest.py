"""A real corrald for each test, on its own socket, state directory and JSON
audit log in a temporary directory, running demo workers.

The binaries are corral's debug build (target/debug of the checkout these
tests are in) unless $CORRAL_BIN_DIR names another directory holding
`corrald` and `corral-demo-worker`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest

from corral_client import Client

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("CORRAL_BIN_DIR", REPO / "target" / "debug"))
CORRALD = BIN_DIR / "corrald"
DEMO = BIN_DIR / "corral-demo-worker"
PATIENCE = 30.0

# `web` speaks the worker protocol: a soft stop is a request on its channel,
# which it acknowledges, drains (its units take 200 ms) and answers.
# `stuck` acknowledges a soft stop and never finishes it.
# The request frame limit is small so that a test can exceed it.
CONFIG = """\
socket = {socket}
state_directory = {state}
scopes = "off"
max_frame_size = 4096
audit_logs_json_target = {audit}
audit_journal = false
audit_sync = true

[groups.web]
command = {demo}
args = ["--concurrency", "2", "--unit-ms", "200", "--log", {log}]
count = 3
stop_mode = "protocol"
stop_timeout = "20s"

[groups.stuck]
command = {demo}
args = ["--ignore-stop", "--log", {log}]
count = 1
stop_mode = "protocol"
stop_timeout = "60s"
"""


def poll(what: str, check: Callable[[], T | None], patience: float = PATIENCE) -> T:
    """Calls `check` until it returns something other than None, or fails
    the test after `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        seen = check()
        if seen is not None:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"waited {patience} s for {what}")
        time.sleep(0.02)


class Corrald:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "corrald.sock"
        self.audit = directory / "audit.jsonl"
        self.work_log = directory / "work.log"
        self.stderr = directory / "corrald.stderr"
        self.config = directory / "corral.toml"
        self.config.write_text(
            CONFIG.format(
                socket=json.dumps(str(self.socket)),
                state=json.dumps(str(directory / "state")),
                audit=json.dumps(str(self.audit)),
                demo=json.dumps(str(DEMO)),
                log=json.dumps(str(self.work_log)),
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.stderr, "wb") as stderr:
            self.process = subprocess.Popen(
                [CORRALD, "--config", self.config],
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "CORRAL_LOG": "debug"},
            )
        poll("corrald to open its socket", self._answers)
        with Client(self.socket) as client:
            poll("every worker to be ready", lambda: self._all_ready(client))

    @property
    def pid(self) -> int:
        assert self.process is not None, "corrald was started"
        return self.process.pid

    def _answers(self) -> bool | None:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"corrald exited at start with {self.process.returncode}:\n{self.log_tail()}")
        try:
            Client(self.socket, timeout=1).close()
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return None

    @staticmethod
    def _all_ready(client: Client) -> bool | None:
        groups = {g.name: g for g in client.status().groups}
        return True if groups["web"].ready == 3 and groups["stuck"].ready == 1 else None

    def log_tail(self) -> str:
        return "\n".join(self.stderr.read_text(errors="replace").splitlines()[-40:])

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def work_lines(self) -> list[list[str]]:
        """The demo workers' log: `start W PID UNIT`, `done W PID UNIT`,
        `exit W PID`."""
        if not self.work_log.exists():
            return []
        return [line.split() for line in self.work_log.read_text().splitlines()]

    def stop(self) -> None:
        """Kills corrald and its workers: a drain would wait out `stuck`'s
        stop_timeout. The workers are found while corrald still lives, as
        its children."""
        if self.process is None:
            return
        workers = _children(self.process.pid)
        self.process.kill()
        self.process.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the fields after
        # its closing parenthesis are state, then ppid.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


@pytest.fixture
def corrald() -> Iterator[Corrald]:
    for binary in (CORRALD, DEMO):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is not there: build corral first (cargo build) or set CORRAL_BIN_DIR")
    # Short: a unix socket's path has at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="corral-py-"))
    daemon = Corrald(directory)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
