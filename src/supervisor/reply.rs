//! How answers travel from the supervisor to a connection's writer: never
//! blocking the sender, and counting what waits so the connection can stop
//! reading a client that does not read its answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;

use crate::proto::{self, response::Content, Status};

/// A response on its way to a connection's writer, with the sequence
/// number the connection gave the request it answers (0: a request the
/// connection refused itself, which it does not track).
pub struct Outgoing {
    pub seq: u64,
    pub response: proto::Response,
    /// The response's encoded length, counted once.
    pub len: usize,
}

/// Where the responses to one connection's requests go. Never blocks the
/// sender (the actor must not wait on a client); instead it counts the
/// bytes waiting, so the connection can stop reading a client that does
/// not read its answers.
#[derive(Clone)]
pub struct Replies {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
}

/// The receiving end of [`Replies`], for the connection's writer.
pub struct ReplyQueue {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

impl Replies {
    pub fn channel() -> (Replies, ReplyQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (Replies { tx, queued: queued.clone() }, ReplyQueue { rx, queued })
    }

    /// Bytes of responses sent and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn send(&self, seq: u64, response: proto::Response) {
        let len = response.encoded_len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        // A client that hung up no longer wants the answer; the work goes on.
        if self.tx.send(Outgoing { seq, response, len }).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }
}

impl ReplyQueue {
    /// The next response; its bytes no longer count as waiting.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let outgoing = self.rx.recv().await?;
        self.queued.fetch_sub(outgoing.len, Ordering::Relaxed);
        Some(outgoing)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Answers one request: any number of `PROCESSING`, then one final answer.
#[derive(Clone)]
pub struct Reply {
    id: u64,
    seq: u64,
    tx: Replies,
}

impl Reply {
    pub fn new(id: u64, seq: u64, tx: Replies) -> Reply {
        Reply { id, seq, tx }
    }

    fn send(&self, status: Status, message: String, content: Option<Content>) {
        self.tx.send(self.seq, proto::Response { id: self.id, status: status as i32, message, content });
    }

    pub fn processing(&self, message: String, content: Option<Content>) {
        self.send(Status::Processing, message, content)
    }

    pub fn ok(&self, message: String, content: Option<Content>) {
        self.send(Status::Ok, message, content)
    }

    pub fn failure(&self, message: String, content: Option<Content>) {
        self.send(Status::Failure, message, content)
    }
}
