"""What the synchronous and the asyncio client share: framing, request ids,
and routing each response to the request it answers (docs/protocol.md)."""

from __future__ import annotations

import enum
import os
import struct
from collections import deque
from typing import Callable

from google.protobuf.message import DecodeError, Message

from . import corral_pb2 as pb
from .errors import ConnectionClosed, CorralError, ProtocolError, RequestFailed

#: corrald never sends a larger response frame (limits.max_response_size is
#: capped there), so a larger length can only be a broken stream.
MAX_RESPONSE_FRAME = 16 * 1024 * 1024

_LENGTH = struct.Struct(">I")


class Default(enum.Enum):
    """The default of a `timeout` argument: the client's own timeout."""

    CLIENT_TIMEOUT = enum.auto()


CLIENT_TIMEOUT = Default.CLIENT_TIMEOUT
_FINAL = (pb.STATUS_OK, pb.STATUS_FAILURE)
_KNOWN = (pb.STATUS_OK, pb.STATUS_FAILURE, pb.STATUS_PROCESSING)
_COMMANDS = {field.name for field in pb.Request.DESCRIPTOR.oneofs_by_name["command"].fields}


def default_socket_path() -> str:
    """The socket corralctl uses when given none: $CORRAL_SOCKET, else
    /run/corral/corrald.sock for root, else under $XDG_RUNTIME_DIR, else
    /tmp/corral-<uid>/corrald.sock."""
    explicit = os.environ.get("CORRAL_SOCKET")
    if explicit:
        return explicit
    uid = os.getuid()
    if uid == 0:
        return "/run/corral/corrald.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "corral", "corrald.sock")
    return f"/tmp/corral-{uid}/corrald.sock"


class FrameReader:
    """Cuts a byte stream into response frames. Bytes may come in any
    pieces; a frame is handed out only once whole, so a wait that times
    out part way through one loses nothing."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> list[bytes]:
        out = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_RESPONSE_FRAME:
                raise ProtocolError(f"a response frame of {length} bytes, over the protocol's 16 MiB")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            out.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return out

    def partial(self) -> bool:
        return bool(self._buffer)


class CallState:
    """The responses that came for one request and were not yet taken."""

    def __init__(self, request_id: int, wake: Callable[[], None] | None) -> None:
        self.id = request_id
        self.responses: deque[pb.Response] = deque()
        self.final_received = False
        self.final: pb.Response | None = None
        self.error: CorralError | None = None
        self._wake = wake

    def push(self, response: pb.Response) -> None:
        self.responses.append(response)
        if response.status in _FINAL:
            self.final_received = True
        self.wakeup()

    def fail(self, error: CorralError) -> None:
        if not self.final_received and self.error is None:
            self.error = error
            self.wakeup()

    def wakeup(self) -> None:
        if self._wake is not None:
            self._wake()

    def take(self) -> pb.Response | None:
        """The next response, or None when none is waiting; raises the
        connection's error once every response that came is taken."""
        if self.responses:
            response = self.responses.popleft()
            if response.status in _FINAL:
                self.final = response
            return response
        if self.error is not None:
            raise self.error
        return None


class Session:
    """One connection's requests: ids counting up from 1 (0 is corrald's,
    for answers about the connection itself), and the requests in flight."""

    def __init__(self) -> None:
        self._next_id = 1
        self._in_flight: dict[int, CallState] = {}
        self._refusal: str | None = None
        self.error: CorralError | None = None

    def request(self, command: dict[str, Message], wake: Callable[[], None] | None) -> tuple[CallState, bytes]:
        """Registers a request of `command` (one `Request` oneof field, as a
        keyword, e.g. {"status": StatusRequest()}) and returns its frame."""
        if self.error is not None:
            raise self.error
        if len(command) != 1 or not set(command) <= _COMMANDS:
            raise TypeError(f"name exactly one command, e.g. status=StatusRequest(); got {sorted(command)}")
        ((name, message),) = command.items()
        request_id = self._next_id
        self._next_id += 1
        request = pb.Request(id=request_id)
        field = getattr(request, name)
        # Set even when empty: corrald refuses a request with no command.
        field.SetInParent()
        field.MergeFrom(message)
        body = request.SerializeToString()
        state = CallState(request_id, wake)
        self._in_flight[request_id] = state
        return state, _LENGTH.pack(len(body)) + body

    def closed(self, text: str) -> ConnectionClosed:
        """The error for a connection that ended, with what corrald said
        about it (a FAILURE with id 0), if it said anything."""
        return ConnectionClosed(text, self._refusal)

    def forget(self, state: CallState) -> None:
        """Drops a request whose frame never went out whole."""
        self._in_flight.pop(state.id, None)

    def dispatch(self, frame: bytes) -> None:
        response = pb.Response()
        try:
            response.ParseFromString(frame)
        except DecodeError as e:
            raise ProtocolError(f"a response that is not a corral.v1.Response: {e}") from e
        if response.status not in _KNOWN:
            raise ProtocolError(f"a response with status {response.status}, unknown to this client (id {response.id})")
        if response.id == 0:
            if response.status != pb.STATUS_FAILURE:
                raise ProtocolError(f"a response with id 0 and status {pb.Status.Name(response.status)}")
            self._refusal = response.message
            return
        state = self._in_flight.get(response.id)
        if state is None:
            raise ProtocolError(f"a response with id {response.id}, which no request in flight has")
        state.push(response)
        if state.final_received:
            del self._in_flight[response.id]

    def end(self, error: CorralError | None = None) -> None:
        """The connection is over: every request still unanswered fails with
        `error`, or with the end of the stream."""
        if self.error is None:
            self.error = error or self.closed("corrald closed the connection")
        for state in self._in_flight.values():
            state.fail(self.error)
        self._in_flight.clear()


def raise_if_failed(response: pb.Response) -> pb.Response:
    if response.status == pb.STATUS_FAILURE:
        raise RequestFailed(response)
    return response


def outcome_of(response: pb.Response) -> pb.Outcome:
    return response.outcome


def message_of(response: pb.Response) -> str:
    return response.message


def metrics_of(response: pb.Response) -> str:
    return response.metrics.text


def same(response: pb.Response) -> pb.Response:
    return response


def status_of(response: pb.Response) -> pb.SupervisorStatus:
    if not response.HasField("supervisor_status"):
        raise ProtocolError(f"a Status answered OK with no SupervisorStatus (id {response.id})")
    return response.supervisor_status


def worker_part(response: pb.Response) -> list[pb.WorkerInfo]:
    if not response.HasField("workers"):
        raise ProtocolError(f"a worker listing answered with no WorkerList (id {response.id})")
    return list(response.workers.workers)


def is_processing(response: pb.Response) -> bool:
    return response.status == pb.STATUS_PROCESSING
