"""The exceptions of corral-client. All derive from `CorralError`."""

from __future__ import annotations

from . import corral_pb2 as pb


class CorralError(Exception):
    """Anything that kept a request from getting its answer, or its answer."""


class RequestFailed(CorralError):
    """corrald's final answer to a request was FAILURE.

    `message` is corrald's text for a person (`no group or worker named
    "nosuch"`, `refused: ...`, `denied: ...`). When the request was a fan-out
    (stop, start, restart, scale, reload), `outcome` is its `Outcome` and
    `failures` lists each worker that did not succeed, with its `kind`
    (a `FailureKind`: DIED, TIMED_OUT, INTERRUPTED, FAILED) and `detail`.
    """

    def __init__(self, response: pb.Response) -> None:
        super().__init__(response.message)
        self.response = response
        self.request_id: int = response.id
        self.message: str = response.message
        self.outcome: pb.Outcome | None = response.outcome if response.HasField("outcome") else None
        self.failures: list[pb.WorkerFailure] = list(self.outcome.failures) if self.outcome else []

    def kinds(self) -> set[str]:
        """The names of the failures' kinds, e.g. {"FAILURE_KIND_INTERRUPTED"}.

        A kind this client does not know (from a newer corrald) is named by
        its number.
        """
        return {_kind_name(f.kind) for f in self.failures}


class ConnectionClosed(CorralError):
    """The connection ended before the request's final answer.

    The request may have run: corrald's audit log says. `reason` is what
    corrald said about the connection before closing it (a FAILURE with
    id 0, such as a request frame over its size limit), if it said anything.
    """

    def __init__(self, text: str, reason: str | None = None) -> None:
        super().__init__(f"{text}: {reason}" if reason else text)
        self.reason = reason


class ProtocolError(CorralError):
    """corrald sent something the protocol does not allow (a frame over
    16 MiB, an unknown status, an answer to no request). The connection is
    closed: nothing more on it can be trusted."""


class Timeout(CorralError, TimeoutError):
    """No answer came within the timeout. The request stays in flight: a
    later wait for it may still get its answer. A request whose sending
    timed out was not sent, or, when part of it was, the connection is
    closed."""


def _kind_name(kind: int) -> str:
    try:
        return str(pb.FailureKind.Name(kind))
    except ValueError:
        return str(kind)
