//! The anchor for corrald without scopes: the least a supervisor must do to
//! have N protocol workers ready, namely fork and exec each with a worker
//! channel and read its READY frame.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral::proto::{WorkerEvent, WorkerResponse};
use futures_util::StreamExt;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use prost::Message;
use serde_json::{json, Value};
use tokio_util::codec::FramedRead;

use crate::Children;

pub async fn fork_ready(count: usize, worker: &Path, args: &[String], timeout: Duration) -> Result<Value, String> {
    let mut children = Children(Vec::with_capacity(count));
    let mut readers = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..count {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        // Spawns happen one at a time, so only this child can inherit it.
        fcntl(theirs.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| format!("fcntl: {e}"))?;
        let child = Command::new(worker)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CORRAL_GROUP", "bench")
            .env("CORRAL_WORKER_ID", format!("bench-{i}"))
            .env("CORRAL_WORKER_FD", theirs.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", worker.display()))?;
        drop(theirs);
        children.0.push(child);
        ours.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
        readers.spawn(async move {
            let mut frames = FramedRead::new(stream, corral::frame::codec(corral::frame::MAX_WORKER_FRAME));
            while let Some(Ok(frame)) = frames.next().await {
                if WorkerResponse::decode(frame).is_ok_and(|r| r.event() == WorkerEvent::Ready) {
                    // The channel must outlive the measurement: a worker
                    // whose channel closes exits.
                    return Some(frames);
                }
            }
            None
        });
    }
    let mut ready = 0usize;
    let mut channels = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, readers.join_next()).await {
            Ok(Some(Ok(Some(channel)))) => {
                ready += 1;
                channels.push(channel);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    drop(children);
    Ok(json!({ "count": count, "ready": ready, "ms": elapsed.as_secs_f64() * 1000.0 }))
}
