"""The asyncio client: the synchronous client's API, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import AsyncIterator, Callable, Generator, Generic, Sequence, TypeVar

from google.protobuf.message import Message

from . import _core
from . import corral_pb2 as pb
from .client import DEFAULT_TIMEOUT
from .errors import ConnectionClosed, CorralError, Timeout

T = TypeVar("T")


class AsyncCall(Generic[T]):
    """A request in flight, sent when the call was made.

    `async for progress in call` yields its `Progress` and ends at the
    final answer; `await call` (or `await call.result()`) then returns that
    answer's value. A FAILURE raises `RequestFailed` from both.
    """

    def __init__(self, client: AsyncClient, state: _core.CallState, woken: asyncio.Event,
                 value: Callable[[pb.Response], T]) -> None:
        self._client = client
        self._state = state
        self._woken = woken
        self._value = value

    @property
    def id(self) -> int:
        return self._state.id

    @property
    def final(self) -> pb.Response | None:
        return self._state.final

    async def responses(
        self, timeout: float | None | _core.Default = _core.CLIENT_TIMEOUT
    ) -> AsyncIterator[pb.Response]:
        """Every response as it comes, the final one last, a FAILURE
        included without raising. `timeout` bounds each wait."""
        while self._state.final is None:
            yield await self._next(timeout)

    async def __aiter__(self) -> AsyncIterator[pb.Progress]:
        async for response in self.responses():
            if _core.is_processing(response) and response.HasField("progress"):
                yield response.progress
        _core.raise_if_failed(self._final())

    async def result(self, timeout: float | None | _core.Default = _core.CLIENT_TIMEOUT) -> T:
        async for _ in self.responses(timeout):
            pass
        return self._value(_core.raise_if_failed(self._final()))

    def __await__(self) -> Generator[object, None, T]:
        return self.result().__await__()

    async def _next(self, timeout: float | None | _core.Default) -> pb.Response:
        limit = self._client.timeout if timeout is _core.CLIENT_TIMEOUT else timeout
        deadline = None if limit is None else time.monotonic() + limit
        await self._client._drain(limit)
        while True:
            response = self._state.take()
            if response is not None:
                return response
            self._woken.clear()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._woken.wait(), remaining)
            except asyncio.TimeoutError:
                raise Timeout(f"waiting for the answer to request {self.id}: no answer within the timeout") from None

    def _final(self) -> pb.Response:
        final = self._state.final
        assert final is not None, "responses() ends only at the final answer"
        return final


class AsyncClient:
    """A connection to corrald's command socket, for asyncio.

    Open it with `await AsyncClient.connect(path)` (or `async with await
    AsyncClient.connect(path) as client`). The methods are those of
    `Client`: the fan-outs return an `AsyncCall`, sent at once; `status()`,
    `workers()` and `limit()` are coroutines. A task reads the connection
    all the while, so any number of calls may wait at once.
    """

    def __init__(self, path: str, timeout: float | None, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
        self.timeout = timeout
        self._session = _core.Session()
        self._writer = writer
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    @classmethod
    async def connect(
        cls, path: str | os.PathLike[str] | None = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> AsyncClient:
        where = os.fspath(path) if path is not None else _core.default_socket_path()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(where), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"connecting to {where} took over {timeout} s") from None
        return cls(where, timeout, reader, writer)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection; calls still in flight fail with
        `ConnectionClosed` (their requests may still run)."""
        self._session.end(ConnectionClosed("the client closed the connection"))
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    def request(self, **command: Message) -> AsyncCall[pb.Response]:
        return self._call(command, _core.same)

    async def status(self) -> pb.SupervisorStatus:
        return await self._call({"status": pb.StatusRequest()}, _core.status_of)

    async def workers(self, group: str = "") -> list[pb.WorkerInfo]:
        call = self._call({"list_workers": pb.ListWorkers(group=group)}, _core.same)
        workers: list[pb.WorkerInfo] = []
        async for response in call.responses():
            if response.status != pb.STATUS_FAILURE:
                workers += _core.worker_part(response)
        await call
        return workers

    def stop(self, target: str = "", hard: bool = False) -> AsyncCall[pb.Outcome]:
        return self._call({"stop": pb.Stop(target=target, hard=hard)}, _core.outcome_of)

    def start(self, target: str = "") -> AsyncCall[pb.Outcome]:
        return self._call({"start": pb.Start(target=target)}, _core.outcome_of)

    def restart(self, target: str = "", rolling: bool = False, max_unavailable: int = 0) -> AsyncCall[pb.Outcome]:
        return self._call(
            {"restart": pb.Restart(target=target, rolling=rolling, max_unavailable=max_unavailable)},
            _core.outcome_of,
        )

    def scale(self, group: str, count: int) -> AsyncCall[pb.Outcome]:
        return self._call({"scale": pb.Scale(group=group, count=count)}, _core.outcome_of)

    def reload(self) -> AsyncCall[pb.Outcome]:
        return self._call({"reload_config": pb.ReloadConfig()}, _core.outcome_of)

    async def limit(self, target: str, properties: Sequence[str]) -> str:
        return await self._call({"limit": pb.Limit(target=target, properties=properties)}, _core.message_of)

    async def metrics(self) -> str:
        return await self._call({"metrics": pb.Metrics()}, _core.metrics_of)

    async def events(self, target: str = "", replay: int = 0) -> AsyncIterator[pb.Event]:
        """`Client.events`, awaited: returns once corrald has taken the
        subscription, then `async for event in ...` follows it:
        `async for event in await client.events("web")`."""
        call = self._call({"subscribe": pb.Subscribe(target=target, replay=replay)}, _core.same)
        first = await call._next(_core.CLIENT_TIMEOUT)
        if call.final is not None:
            _core.raise_if_failed(first)
        return _follow(call)

    def _call(self, command: dict[str, Message], value: Callable[[pb.Response], T]) -> AsyncCall[T]:
        woken = asyncio.Event()
        state, frame = self._session.request(command, woken.set)
        self._writer.write(frame)
        return AsyncCall(self, state, woken, value)

    async def _drain(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"sending to {self.path}: corrald took no more within the timeout") from None
        except OSError as e:
            self._session.end(self._session.closed(f"sending to {self.path} failed: {e}"))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = _core.FrameReader()
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    if frames.partial():
                        self._session.end(self._session.closed("corrald closed the connection part way through a response"))
                    break
                frames.feed(data)
                for frame in frames.frames():
                    self._session.dispatch(frame)
        except CorralError as e:
            self._session.end(e)
            self._writer.close()
        except OSError as e:
            self._session.end(self._session.closed(f"reading from {self.path} failed: {e}"))
        finally:
            self._session.end()


async def _follow(call: AsyncCall[pb.Response]) -> AsyncIterator[pb.Event]:
    async for response in call.responses(timeout=None):
        if response.HasField("event"):
            yield response.event
    await call.result()
