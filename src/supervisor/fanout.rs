//! One request fanned out to many workers: collects each worker's
//! acknowledgement and outcome, streams `PROCESSING` progress to the client
//! and ends with exactly one final answer.
//!
//! The workers report concurrently through an unbounded channel, so a slow
//! client never holds up a worker and no worker waits for another.

use std::collections::BTreeSet;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Reply;
use crate::proto::{self, response::Content, FailureKind};

/// What one worker reports about one request.
#[derive(Debug)]
pub enum OpEvent {
    Acked(String),
    Finished(String, Result<(), (FailureKind, String)>),
}

/// The sending end handed to every worker taking part.
pub type OpSink = mpsc::UnboundedSender<OpEvent>;

pub struct Fanout {
    reply: Reply,
    rx: mpsc::UnboundedReceiver<OpEvent>,
    sink: OpSink,
    /// Workers not yet finished; anything left at the deadline timed out.
    pending: BTreeSet<String>,
    acked: BTreeSet<String>,
    total: u32,
    /// What a worker's success is called in progress lines ("stopped", "ready").
    done: &'static str,
    finished: u32,
    succeeded: u32,
    failures: Vec<proto::WorkerFailure>,
}

impl Fanout {
    /// `total` is how many worker outcomes the request will report, over
    /// all its phases.
    pub fn new(reply: Reply, total: usize, done: &'static str) -> Fanout {
        let (sink, rx) = mpsc::unbounded_channel();
        Fanout {
            reply,
            rx,
            sink,
            pending: BTreeSet::new(),
            acked: BTreeSet::new(),
            total: total as u32,
            done,
            finished: 0,
            succeeded: 0,
            failures: Vec::new(),
        }
    }

    /// Starts tracking workers about to be sent the request and returns
    /// the sink they report to.
    pub fn track(&mut self, workers: impl IntoIterator<Item = String>) -> OpSink {
        for w in workers {
            self.pending.insert(w);
        }
        self.sink.clone()
    }

    pub fn has_failures(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn interrupted(&self) -> bool {
        self.failures.iter().any(|f| f.kind() == FailureKind::Interrupted)
    }

    /// Records a failure for a worker that was never sent the request.
    pub fn fail_unsent(&mut self, worker: String, kind: FailureKind, detail: String) {
        self.pending.insert(worker.clone());
        self.record(OpEvent::Finished(worker, Err((kind, detail))));
    }

    /// Waits until every expected worker has finished, or the deadline
    /// passes, in which case the rest are reported as timed out.
    pub async fn wait(&mut self, deadline: Instant) {
        while !self.pending.is_empty() {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => self.record(event),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let late: Vec<String> = self.pending.iter().cloned().collect();
                    for worker in late {
                        let detail = "no answer before the request's deadline".to_string();
                        self.record(OpEvent::Finished(worker, Err((FailureKind::TimedOut, detail))));
                    }
                }
            }
        }
    }

    /// Takes one worker's report, sending the client a PROCESSING response.
    pub fn record(&mut self, event: OpEvent) {
        let (worker, what) = match event {
            OpEvent::Acked(worker) => {
                if !self.pending.contains(&worker) || !self.acked.insert(worker.clone()) {
                    return;
                }
                (worker, "acknowledged".to_string())
            }
            OpEvent::Finished(worker, result) => {
                if !self.pending.remove(&worker) {
                    return;
                }
                self.acked.insert(worker.clone());
                self.finished += 1;
                match result {
                    Ok(()) => {
                        self.succeeded += 1;
                        (worker, self.done.to_string())
                    }
                    Err((kind, detail)) => {
                        let what = format!("{}: {detail}", kind.text());
                        self.failures.push(proto::WorkerFailure { worker: worker.clone(), kind: kind as i32, detail });
                        (worker, what)
                    }
                }
            }
        };
        let progress = proto::Progress {
            total: self.total,
            acknowledged: self.acked.len() as u32,
            finished: self.finished,
            failed: self.failures.len() as u32,
            worker: worker.clone(),
            event: what.clone(),
        };
        self.reply.processing(format!("{worker}: {what}"), Some(Content::Progress(progress)));
    }

    /// Sends the one final answer: OK when every worker succeeded, otherwise
    /// FAILURE naming each worker that did not.
    pub fn finish(self, ok_message: String) {
        let outcome = proto::Outcome { total: self.total, succeeded: self.succeeded, failures: self.failures };
        if outcome.failures.is_empty() {
            self.reply.ok(ok_message, Some(Content::Outcome(outcome)));
        } else {
            let names: Vec<String> =
                outcome.failures.iter().map(|f| format!("{} ({})", f.worker, f.kind().text())).collect();
            let message = format!("{} of {} workers failed: {}", names.len(), outcome.total, names.join(", "));
            self.reply.failure(message, Some(Content::Outcome(outcome)));
        }
    }
}
