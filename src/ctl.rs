//! The client side of corrald's command socket, shared by `corralctl` and the
//! integration tests.
//!
//! A [`Client`] owns one connection. [`Client::call`] is the common case: one
//! request, its PROCESSING responses handed to a callback, its final OK or
//! FAILURE returned. [`Client::send`] and [`Client::recv`] expose the raw
//! protocol so a caller can keep several requests in flight on one
//! connection, which the protocol allows and the tests need to exercise.
//!
//! Errors are meant to be shown to a person as one line: connection failures
//! say what the failure most likely means (no daemon, a stale socket, missing
//! permissions) rather than only quoting the OS error.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use prost::Message;
use serde_json::{json, Map, Value};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::frame;
use crate::proto::{self, request, response, Request, Response, Status};

/// The largest response frame the client accepts: corrald's default
/// `limits.max_response_size`, which it never exceeds (a larger answer is
/// replaced by a FAILURE saying so, and worker listings come in parts).
pub const MAX_RESPONSE_FRAME: usize = 16 * 1024 * 1024;

/// Why a request got no final answer.
///
/// The connection variants carry the socket path because the path is what a
/// person has to check or fix; the rest are problems of an established
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket file does not exist.
    #[error("no socket at {}: is corrald running? (or pass --socket)", .path.display())]
    NoSocket { path: PathBuf },
    /// The socket file exists but nobody accepts on it: corrald died without
    /// removing it.
    #[error("nothing listens on {}: corrald is not running (stale socket)", .path.display())]
    NotListening { path: PathBuf },
    /// The path exists but is no socket, e.g. a configuration file passed
    /// by mistake; connecting to it fails like a stale socket would.
    #[error("{} is not a socket: pass the path of corrald's socket", .path.display())]
    NotASocket { path: PathBuf },
    #[error(
        "permission denied on {}: this user may not connect to corrald (check the socket's owner and mode)",
        .path.display()
    )]
    PermissionDenied { path: PathBuf },
    /// The process serving the socket is neither root nor this user.
    #[error(
        "the process serving {} runs as uid {uid}, neither root nor you: not trusting it (has someone else \
         created the socket's directory?)",
        .path.display()
    )]
    Untrusted { path: PathBuf, uid: u32 },
    #[error("cannot connect to {}: {source}", .path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot send to corrald: {0}")]
    Send(io::Error),
    #[error("cannot read from corrald: {0}")]
    Receive(io::Error),
    /// The connection ended while a request was still unanswered.
    #[error("corrald closed the connection before answering request {id}")]
    Closed { id: u64 },
    /// corrald sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// corrald refused the connection's input as a whole (a response with id
    /// 0 and FAILURE, e.g. for a frame it could not decode) and closes it.
    #[error("corrald refused the request: {0}")]
    Refused(String),
}

impl CtlError {
    fn connect(path: &Path, err: io::Error) -> CtlError {
        let path = path.to_path_buf();
        match err.kind() {
            io::ErrorKind::NotFound => CtlError::NoSocket { path },
            io::ErrorKind::ConnectionRefused if !is_socket(&path) => CtlError::NotASocket { path },
            io::ErrorKind::ConnectionRefused => CtlError::NotListening { path },
            io::ErrorKind::PermissionDenied => CtlError::PermissionDenied { path },
            _ => CtlError::Connect { path, source: err },
        }
    }

    fn receive(err: io::Error) -> CtlError {
        // The codec reports an oversized frame as an I/O error; it is a
        // protocol violation, and saying so is more useful than "invalid data".
        if err.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) {
            return CtlError::Protocol(format!("response frame larger than {MAX_RESPONSE_FRAME} bytes"));
        }
        CtlError::Receive(err)
    }
}

fn is_socket(path: &Path) -> bool {
    // When the path cannot be inspected, assume a socket: the refused
    // connection then reads as the common case, a stale socket.
    std::fs::metadata(path).map_or(true, |meta| meta.file_type().is_socket())
}

/// One connection to corrald's command socket.
pub struct Client {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    /// Starts at 1: id 0 is what corrald uses for errors that belong to no
    /// request, so a request must never carry it.
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`, and trusts what answers only if
    /// it runs as root or as this very user: a socket in a directory
    /// someone else could write to might be theirs, and their "OK" for a
    /// stop that never happened would be believed.
    pub async fn connect(path: &Path) -> Result<Client, CtlError> {
        let stream = UnixStream::connect(path).await.map_err(|err| CtlError::connect(path, err))?;
        let server = stream.peer_cred().map_err(|err| CtlError::connect(path, err))?.uid();
        let me = nix::unistd::geteuid().as_raw();
        if server != 0 && server != me {
            return Err(CtlError::Untrusted { path: path.to_path_buf(), uid: server });
        }
        Ok(Client { framed: Framed::new(stream, frame::codec(MAX_RESPONSE_FRAME)), next_id: 1 })
    }

    /// Sends `command` under a fresh id and returns that id, without waiting
    /// for any response.
    pub async fn send(&mut self, command: request::Command) -> Result<u64, CtlError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request { id, command: Some(command) };
        self.framed.send(frame::encode(&request)).await.map_err(CtlError::Send)?;
        Ok(id)
    }

    /// Receives the next response of any request; `None` when corrald closed
    /// the connection cleanly between frames.
    ///
    /// A response with id 0 and FAILURE is returned as [`CtlError::Refused`]:
    /// it answers no request, and corrald closes the connection after it.
    pub async fn recv(&mut self) -> Result<Option<Response>, CtlError> {
        let Some(frame) = self.framed.next().await else {
            return Ok(None);
        };
        let frame = frame.map_err(CtlError::receive)?;
        let response =
            Response::decode(frame).map_err(|err| CtlError::Protocol(format!("undecodable response: {err}")))?;
        if response.id == 0 && response.status() == Status::Failure {
            return Err(CtlError::Refused(response.message));
        }
        Ok(Some(response))
    }

    /// Sends `command` and waits for its final response (OK or FAILURE),
    /// passing every PROCESSING response to `on_progress` on the way.
    ///
    /// Expects no other request of this client to be in flight: a response
    /// for another id is reported as a protocol error rather than silently
    /// dropped, since dropping it would lose that request's answer.
    pub async fn call(
        &mut self,
        command: request::Command,
        mut on_progress: impl FnMut(&Response),
    ) -> Result<Response, CtlError> {
        let id = self.send(command).await?;
        loop {
            let Some(response) = self.recv().await? else {
                return Err(CtlError::Closed { id });
            };
            if response.id != id {
                return Err(CtlError::Protocol(format!(
                    "got a response for request {} while waiting for request {id}",
                    response.id
                )));
            }
            match Status::try_from(response.status) {
                Ok(Status::Processing) => on_progress(&response),
                Ok(Status::Ok | Status::Failure) => return Ok(response),
                Ok(Status::Unspecified) | Err(_) => {
                    return Err(CtlError::Protocol(format!(
                        "response to request {id} has no valid status ({})",
                        response.status
                    )))
                }
            }
        }
    }
}

/// The name of a response status as shown to people and in JSON. Unknown
/// values (a newer corrald) read as "UNSPECIFIED" so the JSON keeps one type.
pub fn status_name(status: i32) -> &'static str {
    match Status::try_from(status) {
        Ok(Status::Ok) => "OK",
        Ok(Status::Failure) => "FAILURE",
        Ok(Status::Processing) => "PROCESSING",
        Ok(Status::Unspecified) | Err(_) => "UNSPECIFIED",
    }
}

/// A response as a JSON object for scripts: `id`, `status` ("OK", "FAILURE",
/// "PROCESSING"), `message`, and the content, if any, under one key:
/// `supervisor`, `workers`, `progress` or `outcome`.
///
/// Hand-built rather than derived from the prost types so that the shape is
/// stable and readable (enum names instead of numbers, no `oneof` wrappers)
/// whatever prost generates. The supervisor status goes under `supervisor`
/// because `status` already holds the response status.
pub fn response_to_json(resp: &Response) -> Value {
    let mut object = Map::new();
    object.insert("id".to_owned(), json!(resp.id));
    object.insert("status".to_owned(), json!(status_name(resp.status)));
    object.insert("message".to_owned(), json!(resp.message));
    if let Some(content) = &resp.content {
        let (key, value) = content_to_json(content);
        object.insert(key.to_owned(), value);
    }
    Value::Object(object)
}

/// A reading: `null` for a figure it lacks, as for no reading at all.
fn usage_to_json(u: &proto::ResourceUsage) -> Value {
    json!({
        "source": u.source,
        "cpu_percent": u.cpu_percent,
        "cpu_time_us": u.cpu_time_us,
        "memory_bytes": u.memory_bytes,
        "memory_peak_bytes": u.memory_peak_bytes,
        "tasks": u.tasks,
        "workers": u.workers,
    })
}

fn content_to_json(content: &response::Content) -> (&'static str, Value) {
    match content {
        response::Content::SupervisorStatus(s) => (
            "supervisor",
            json!({
                "pid": s.pid,
                "version": s.version,
                "config_path": s.config_path,
                "socket_path": s.socket_path,
                "uptime_ms": s.uptime_ms,
                "scopes_active": s.scopes_active,
                "output_sink": s.output_sink,
                "output_dropped": s.output_dropped,
                "audit_journal_missed": s.audit_journal_missed,
                "groups": s.groups.iter().map(|g| json!({
                    "name": g.name,
                    "state": g.state,
                    "desired": g.desired,
                    "running": g.running,
                    "ready": g.ready,
                    "stopped": g.stopped,
                    "failed": g.failed,
                    "reason": g.reason,
                    "usage": g.usage.as_ref().map(usage_to_json),
                })).collect::<Vec<_>>(),
            }),
        ),
        response::Content::Workers(list) => (
            "workers",
            list.workers
                .iter()
                .map(|w| {
                    json!({
                        "id": w.id,
                        "group": w.group,
                        "pid": w.pid,
                        "state": w.state,
                        "started_at_ms": w.started_at_ms,
                        "restarts": w.restarts,
                        "last_exit": w.last_exit,
                        "output_dropped": w.output_dropped,
                        "usage": w.usage.as_ref().map(usage_to_json),
                    })
                })
                .collect(),
        ),
        response::Content::Progress(p) => (
            "progress",
            json!({
                "total": p.total,
                "acknowledged": p.acknowledged,
                "finished": p.finished,
                "failed": p.failed,
                "worker": p.worker,
                "event": p.event,
            }),
        ),
        response::Content::Outcome(o) => (
            "outcome",
            json!({
                "total": o.total,
                "succeeded": o.succeeded,
                "failures": o.failures.iter().map(|f| json!({
                    "worker": f.worker,
                    "kind": f.kind().name(),
                    "detail": f.detail,
                })).collect::<Vec<_>>(),
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FailureKind, Outcome, WorkerFailure};

    #[test]
    fn failure_kinds_are_names_in_json_and_words_in_messages() {
        let failure = |kind: i32| WorkerFailure { worker: "web-1".into(), kind, detail: String::new() };
        let resp = Response {
            id: 7,
            status: Status::Failure as i32,
            message: String::new(),
            content: Some(response::Content::Outcome(Outcome {
                total: 3,
                succeeded: 0,
                failures: vec![failure(FailureKind::TimedOut as i32), failure(FailureKind::Died as i32), failure(99)],
            })),
        };
        let kinds: Vec<Value> = response_to_json(&resp)["outcome"]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].clone())
            .collect();
        assert_eq!(kinds, [json!("timed_out"), json!("died"), json!("unspecified")]);
        assert_eq!(FailureKind::TimedOut.text(), "timed out");
        assert_eq!(FailureKind::Unspecified.text(), "failed");
    }
}
