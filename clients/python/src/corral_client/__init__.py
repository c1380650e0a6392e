"""A client for corrald's command socket (docs/protocol.md in corral).

    from corral_client import Client

    with Client("/run/corral/corrald.sock") as corral:
        for group in corral.status().groups:
            print(group.name, group.ready, "of", group.desired, "ready")
        stop = corral.stop("web")
        for progress in stop:
            print(progress.worker, progress.event)
        print(stop.result().succeeded, "stopped")

The message types (`SupervisorStatus`, `Outcome`, ...) are generated from
corral's proto/corral.proto when the package is built: `corral_client.pb`.
"""

from . import corral_pb2 as pb
from ._core import MAX_RESPONSE_FRAME, default_socket_path
from .aio import AsyncCall, AsyncClient
from .client import DEFAULT_TIMEOUT, Call, Client
from .errors import ConnectionClosed, CorralError, ProtocolError, RequestFailed, Timeout

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_RESPONSE_FRAME",
    "AsyncCall",
    "AsyncClient",
    "Call",
    "Client",
    "ConnectionClosed",
    "CorralError",
    "ProtocolError",
    "RequestFailed",
    "Timeout",
    "default_socket_path",
    "pb",
]
