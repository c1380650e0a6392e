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
use crate::proto::{self, event::Kind, request, response, Request, Response, Status};

pub mod top;
pub mod units;

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
                "subscribers": s.subscribers,
                "events_dropped": s.events_dropped,
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
                        "health": w.health.iter().map(|c| json!({
                            "kind": c.kind,
                            "last_result": c.last_result,
                            "last_at_ms": c.last_at_ms,
                            "consecutive_failures": c.consecutive_failures,
                        })).collect::<Vec<_>>(),
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
        response::Content::Event(e) => ("event", event_to_json(e)),
        response::Content::Metrics(m) => ("metrics", json!({ "text": m.text })),
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

/// An event as JSON: `time_ms`, `group`, `worker` (empty when corrald-wide),
/// `kind` (its name) and the kind's own fields beside them.
fn event_to_json(event: &proto::Event) -> Value {
    let mut object = Map::new();
    object.insert("time_ms".to_owned(), json!(event.time_ms));
    object.insert("group".to_owned(), json!(event.group));
    object.insert("worker".to_owned(), json!(event.worker));
    object.insert("replayed".to_owned(), json!(event.replayed));
    let (kind, fields) = match &event.kind {
        Some(kind) => event_fields(kind),
        None => ("unknown", json!({})),
    };
    object.insert("kind".to_owned(), json!(kind));
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
}

fn event_fields(kind: &Kind) -> (&'static str, Value) {
    match kind {
        Kind::Spawned(e) => ("spawned", json!({ "pid": e.pid, "adopted": e.adopted })),
        Kind::Placed(e) => ("placed", json!({ "pid": e.pid, "unit": e.unit })),
        Kind::Ready(e) => ("ready", json!({ "pid": e.pid })),
        Kind::Exited(e) => {
            ("exited", json!({ "pid": e.pid, "description": e.description, "code": e.code, "signal": e.signal }))
        }
        Kind::RestartScheduled(e) => ("restart_scheduled", json!({ "delay_ms": e.delay_ms })),
        Kind::Failed(e) => ("failed", json!({ "reason": e.reason })),
        Kind::GroupState(e) => ("group_state", json!({ "from": e.from, "to": e.to, "reason": e.reason })),
        Kind::Reloaded(e) => {
            ("reloaded", json!({ "added": e.added, "removed": e.removed, "changed": e.changed, "scaled": e.scaled }))
        }
        Kind::Request(e) => (
            "request",
            json!({
                "command": e.command,
                "arguments": e.arguments,
                "uid": e.uid,
                "outcome": e.outcome,
                "message": e.message,
            }),
        ),
        Kind::OutputDropped(e) => ("output_dropped", json!({ "lines": e.lines, "total": e.total })),
        Kind::Corrald(e) => ("corrald", json!({ "state": e.state })),
        Kind::Lagged(e) => ("lagged", json!({ "dropped": e.dropped })),
        Kind::Health(e) => (
            "health",
            json!({
                "check": e.check,
                "passed": e.passed,
                "consecutive_failures": e.consecutive_failures,
                "message": e.message,
                "restart_reason": e.restart_reason,
            }),
        ),
    }
}

/// An event as one line for people: what it concerns, then what happened.
/// Text from corrald is left as it came: the caller escapes the line.
pub fn event_line(event: &proto::Event) -> String {
    let what = match &event.kind {
        None => "an event of a kind this corralctl does not know".to_string(),
        Some(Kind::Spawned(e)) if e.adopted => format!("adopted, pid {}", e.pid),
        Some(Kind::Spawned(e)) => format!("spawned, pid {}", e.pid),
        Some(Kind::Placed(e)) => format!("placed in {}", e.unit),
        Some(Kind::Ready(e)) => format!("ready, pid {}", e.pid),
        Some(Kind::Exited(e)) => format!("{} (pid {})", e.description, e.pid),
        Some(Kind::RestartScheduled(e)) => {
            format!("restart in {}", humantime::format_duration(std::time::Duration::from_millis(e.delay_ms)))
        }
        Some(Kind::Failed(e)) => format!("failed: {}", e.reason),
        Some(Kind::GroupState(e)) => {
            let from = if e.from.is_empty() { "new" } else { &e.from };
            let to = if e.to.is_empty() { "removed" } else { &e.to };
            let reason = if e.reason.is_empty() { String::new() } else { format!(" ({})", e.reason) };
            format!("{from} -> {to}{reason}")
        }
        Some(Kind::Reloaded(e)) => {
            let list = |names: &[String]| if names.is_empty() { "-".to_string() } else { names.join(",") };
            format!(
                "config reloaded: added {}, removed {}, changed {}, scaled {}",
                list(&e.added),
                list(&e.removed),
                list(&e.changed),
                list(&e.scaled)
            )
        }
        Some(Kind::Request(e)) => {
            let message = if e.message.is_empty() { String::new() } else { format!(": {}", e.message) };
            format!("{} {} by uid {}: {}{message}", e.command, e.arguments.join(" "), e.uid, e.outcome)
        }
        Some(Kind::OutputDropped(e)) => format!("{} lines of worker output dropped ({} since start)", e.lines, e.total),
        Some(Kind::Corrald(e)) => e.state.replace('_', " "),
        Some(Kind::Lagged(e)) => format!("lagged: {} events dropped", e.dropped),
        Some(Kind::Health(e)) if e.passed => format!("{} check {}", e.check, e.message),
        Some(Kind::Health(e)) => {
            let restart =
                if e.restart_reason.is_empty() { String::new() } else { format!("; restarting: {}", e.restart_reason) };
            format!("{} check failed ({} in a row): {}{restart}", e.check, e.consecutive_failures, e.message)
        }
    };
    let at = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.time_ms));
    let subject = match (event.worker.is_empty(), event.group.is_empty()) {
        (false, _) => event.worker.as_str(),
        (true, false) => event.group.as_str(),
        (true, true) => "corrald",
    };
    // One line per event, whatever a message holds.
    format!("{at} {subject}: {what}").replace('\n', "; ")
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
