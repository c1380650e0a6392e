"""What no well-behaved corrald sends, from a stand-in server on a unix
socket: the client's side of the framing rules."""

from __future__ import annotations

import asyncio
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from corral_client import MAX_RESPONSE_FRAME, AsyncClient, Client, ProtocolError, pb


def frame(response: pb.Response) -> bytes:
    body = response.SerializeToString()
    return struct.pack(">I", len(body)) + body


def read_request(conn: socket.socket) -> pb.Request:
    header = conn.recv(4, socket.MSG_WAITALL)
    (length,) = struct.unpack(">I", header)
    request = pb.Request()
    request.ParseFromString(conn.recv(length, socket.MSG_WAITALL) if length else b"")
    return request


Serve = Callable[[Callable[[socket.socket], None]], str]


@pytest.fixture
def server() -> Iterator[Serve]:
    """Serves one connection with the given function, in a thread."""
    directory = tempfile.TemporaryDirectory(prefix="corral-py-")
    threads = []

    def serve(handler: Callable[[socket.socket], None]) -> str:
        path = str(Path(directory.name) / "fake.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)

        def run() -> None:
            conn, _ = listener.accept()
            with conn, listener:
                handler(conn)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield serve
    for thread in threads:
        thread.join(timeout=10)
    directory.cleanup()


def over_the_limit(conn: socket.socket) -> None:
    request = read_request(conn)
    conn.sendall(struct.pack(">I", MAX_RESPONSE_FRAME + 1))
    conn.recv(1)
    assert request.HasField("status")


def test_a_response_frame_over_16_mib_is_a_protocol_error(server: Serve) -> None:
    with Client(server(over_the_limit)) as client:
        with pytest.raises(ProtocolError, match="over the protocol's 16 MiB"):
            client.status()


def test_the_asyncio_client_refuses_it_too(server: Serve) -> None:
    async def session() -> None:
        async with await AsyncClient.connect(server(over_the_limit)) as client:
            with pytest.raises(ProtocolError, match="over the protocol's 16 MiB"):
                await client.status()

    asyncio.run(session())


def test_a_frame_in_pieces_and_a_frame_of_16_mib_are_taken(server: Serve) -> None:
    big = pb.Response(status=pb.STATUS_OK, message="x" * (MAX_RESPONSE_FRAME - 16))

    def answer_in_pieces(conn: socket.socket) -> None:
        first = read_request(conn)
        second = read_request(conn)
        big.id = second.id
        whole = frame(pb.Response(id=first.id, status=pb.STATUS_OK, supervisor_status=pb.SupervisorStatus(pid=7)))
        for byte in whole:
            conn.sendall(bytes([byte]))
        conn.sendall(frame(big))
        conn.recv(1)

    with Client(server(answer_in_pieces)) as client:
        first = client.request(status=pb.StatusRequest())
        second = client.request(status=pb.StatusRequest())
        assert first.result().supervisor_status.pid == 7
        answer = second.result()
    assert MAX_RESPONSE_FRAME - 16 < len(answer.SerializeToString()) <= MAX_RESPONSE_FRAME
    assert answer.message == big.message
