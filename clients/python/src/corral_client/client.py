"""The synchronous client."""

from __future__ import annotations

import os
import selectors
import socket
import time
from typing import Callable, Generic, Iterator, Sequence, TypeVar

from google.protobuf.message import Message

from . import _core
from . import corral_pb2 as pb
from .errors import ConnectionClosed, CorralError, Timeout

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


class Call(Generic[T]):
    """A request in flight, sent when the call was made.

    Iterating over it yields the request's progress (one `Progress` per
    PROCESSING response of a fan-out) as corrald sends it and ends at the
    final answer; `result()` then returns that answer's value. A FAILURE
    raises `RequestFailed` from both: at the end of the iteration, and from
    every `result()`. `result()` without iterating first skips the progress.
    """

    def __init__(self, client: Client, state: _core.CallState, value: Callable[[pb.Response], T]) -> None:
        self._client = client
        self._state = state
        self._value = value

    @property
    def id(self) -> int:
        """The request id on this connection."""
        return self._state.id

    @property
    def final(self) -> pb.Response | None:
        """The final answer (OK or FAILURE) once it has been taken."""
        return self._state.final

    def responses(self, timeout: float | None | _core.Default = _core.CLIENT_TIMEOUT) -> Iterator[pb.Response]:
        """Every response to the request as it comes, the final one last, a
        FAILURE included without raising. `timeout` bounds each wait (the
        client's by default; None waits for ever)."""
        while self._state.final is None:
            yield self._client._next(self._state, timeout)

    def __iter__(self) -> Iterator[pb.Progress]:
        for response in self.responses():
            if _core.is_processing(response) and response.HasField("progress"):
                yield response.progress
        _core.raise_if_failed(self._final())

    def result(self, timeout: float | None | _core.Default = _core.CLIENT_TIMEOUT) -> T:
        """Waits for the final answer and returns its value, or raises
        `RequestFailed`. `timeout` bounds each wait for a response."""
        for _ in self.responses(timeout):
            pass
        return self._value(_core.raise_if_failed(self._final()))

    def _final(self) -> pb.Response:
        final = self._state.final
        assert final is not None, "responses() ends only at the final answer"
        return final


class Client:
    """A connection to corrald's command socket.

    Each method sends its request at once. `status()`, `workers()` and
    `limit()` wait for their answer; the fan-outs (`stop`, `start`,
    `restart`, `scale`, `reload`) return a `Call` so that several can be in
    flight on the connection and their progress followed. Not for use from
    several threads at once.

    `timeout` (seconds; None: no limit) bounds connecting and each wait for
    the next response to a request: a drain that keeps reporting progress
    is never cut short, a silent corrald is.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.path = os.fspath(path) if path is not None else _core.default_socket_path()
        self.timeout = timeout
        self._session = _core.Session()
        self._frames = _core.FrameReader()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(self.path)
        except socket.timeout as e:
            self._sock.close()
            raise Timeout(f"connecting to {self.path} took over {timeout} s") from e
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; requests still in flight fail with
        `ConnectionClosed` (they may still run)."""
        if self._sock.fileno() >= 0:
            self._selector.close()
            self._sock.close()
        self._session.end(ConnectionClosed("the client closed the connection"))

    def request(self, **command: Message) -> Call[pb.Response]:
        """Sends any request, named by its `Request` field, e.g.
        `request(save_state=pb.SaveState(path="nightly"))`; the call's
        result is the final `Response`."""
        return self._call(command, _core.same)

    def status(self) -> pb.SupervisorStatus:
        return self._call({"status": pb.StatusRequest()}, _core.status_of).result()

    def workers(self, group: str = "") -> list[pb.WorkerInfo]:
        """Every worker, or a group's; a listing that corrald sends in parts
        (256 workers each) is put together."""
        call = self._call({"list_workers": pb.ListWorkers(group=group)}, _core.same)
        workers: list[pb.WorkerInfo] = []
        for response in call.responses():
            if response.status != pb.STATUS_FAILURE:
                workers += _core.worker_part(response)
        call.result()
        return workers

    def stop(self, target: str = "", hard: bool = False) -> Call[pb.Outcome]:
        """Stops the target: "" or "all" for everything, a group, or a worker
        id such as "web-3". Soft (drained) unless `hard` (SIGKILL at once)."""
        return self._call({"stop": pb.Stop(target=target, hard=hard)}, _core.outcome_of)

    def start(self, target: str = "") -> Call[pb.Outcome]:
        return self._call({"start": pb.Start(target=target)}, _core.outcome_of)

    def restart(self, target: str = "", rolling: bool = False, max_unavailable: int = 0) -> Call[pb.Outcome]:
        return self._call(
            {"restart": pb.Restart(target=target, rolling=rolling, max_unavailable=max_unavailable)},
            _core.outcome_of,
        )

    def scale(self, group: str, count: int) -> Call[pb.Outcome]:
        """The Outcome is empty when the group waits for the groups it
        starts after (nothing was started yet)."""
        return self._call({"scale": pb.Scale(group=group, count=count)}, _core.outcome_of)

    def reload(self) -> Call[pb.Outcome]:
        """Re-reads corrald's config file."""
        return self._call({"reload_config": pb.ReloadConfig()}, _core.outcome_of)

    def limit(self, target: str, properties: Sequence[str]) -> str:
        """Sets systemd resource properties ("MemoryMax=64M") on the target's
        scopes; returns corrald's message listing what systemd shows."""
        return self._call({"limit": pb.Limit(target=target, properties=properties)}, _core.message_of).result()

    def metrics(self) -> str:
        """The fleet's metrics in the OpenMetrics text format, as
        `corralctl metrics` prints them."""
        return self._call({"metrics": pb.Metrics()}, _core.metrics_of).result()

    def events(self, target: str = "", replay: int = 0) -> Iterator[pb.Event]:
        """Follows corrald's events (a `Subscribe`), every one or those of a
        group or worker (with corrald-wide ones). Returns once corrald has
        taken the subscription, so nothing that happens after is missed; a
        FAILURE (e.g. too many subscriptions) raises `RequestFailed` here.
        The iterator yields each `Event` as it comes, waiting as long as it
        takes between them, and ends when corrald ends the stream
        (shutdown, restart, upgrade: its final OK). To stop following,
        close the client. A subscriber that reads too slowly is sent a
        `lagged` event saying how many it missed. With `replay`, up to that
        many of the latest events corrald kept come first, each with
        `replayed` set (what happened before the subscription, the workers
        adopted on an upgrade among them)."""
        call = self._call({"subscribe": pb.Subscribe(target=target, replay=replay)}, _core.same)
        first = next(call.responses())
        if call.final is not None:
            _core.raise_if_failed(first)
        return _follow(call)

    def _call(self, command: dict[str, Message], value: Callable[[pb.Response], T]) -> Call[T]:
        state, frame = self._session.request(command, None)
        try:
            self._send(frame)
        except BaseException:
            self._session.forget(state)
            raise
        return Call(self, state, value)

    def _send(self, frame: bytes) -> None:
        # Answers are read while sending: corrald stops reading a connection
        # whose answers pile up, and a client blocked in a write would then
        # never take them.
        deadline = _deadline(self.timeout)
        view = memoryview(frame)
        self._selector.modify(self._sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while view:
                for events in self._select(deadline, f"sending a request to {self.path}"):
                    if events & selectors.EVENT_WRITE:
                        try:
                            view = view[self._sock.send(view) :]
                        except BlockingIOError:
                            pass
                        except OSError as e:
                            # What corrald said before it closed (why it
                            # did) may still be waiting to be read.
                            while self._session.error is None and self._read():
                                pass
                            error = self._session.error or self._session.closed(f"sending to {self.path} failed: {e}")
                            self._broken(error)
                            raise error from e
                    if events & selectors.EVENT_READ:
                        self._read()
        except Timeout:
            if len(view) < len(frame):
                # Half a frame is on the wire: the stream cannot go on.
                self._broken(self._session.closed("a request was cut off part way by a send timeout"))
            raise
        finally:
            if self._sock.fileno() >= 0:
                self._selector.modify(self._sock, selectors.EVENT_READ)

    def _next(self, state: _core.CallState, timeout: float | None | _core.Default) -> pb.Response:
        deadline = _deadline(self.timeout if timeout is _core.CLIENT_TIMEOUT else timeout)
        while True:
            response = state.take()
            if response is not None:
                return response
            for _ in self._select(deadline, f"waiting for the answer to request {state.id}"):
                self._read()

    def _select(self, deadline: float | None, doing: str) -> list[int]:
        if self._session.error is not None:
            raise self._session.error
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = self._selector.select(remaining)
        if not ready and deadline is not None and time.monotonic() >= deadline:
            raise Timeout(f"{doing}: no answer from corrald within the timeout")
        return [events for _, events in ready]

    def _read(self) -> bool:
        """Reads what is there and routes the whole frames; False when
        nothing was there to read."""
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return False
        except OSError as e:
            self._broken(self._session.closed(f"reading from {self.path} failed: {e}"))
            return True
        if not data:
            if self._frames.partial():
                self._broken(self._session.closed("corrald closed the connection part way through a response"))
            else:
                self._broken(None)
            return True
        self._frames.feed(data)
        try:
            for frame in self._frames.frames():
                self._session.dispatch(frame)
        except CorralError as e:
            self._broken(e)
        return True

    def _broken(self, error: CorralError | None) -> None:
        self._session.end(error)
        self._selector.close()
        self._sock.close()


def _follow(call: Call[pb.Response]) -> Iterator[pb.Event]:
    for response in call.responses(timeout=None):
        if response.HasField("event"):
            yield response.event
    call.result()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout
