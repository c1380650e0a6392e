//! The `corral-usage` thread: reads every running worker once an interval
//! and publishes what it read as one snapshot. The supervisor tells it
//! which workers run (a list it swaps in, never a wait) and takes the latest
//! snapshot when it answers a listing or a status (a pointer copy), so
//! sampling costs the actor nothing however slow /proc or the cgroup files
//! are.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{read, Mounts, OwnCgroup, Reading};
use crate::target::SlotKey;

/// A running worker to sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub key: SlotKey,
    pub pid: u32,
    /// With the pid, names the process against pid reuse.
    pub start_time: u64,
    pub own: Option<OwnCgroup>,
}

/// What was read of one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    /// The process it was read of; a listing shows it only while the slot
    /// still holds that process.
    pub pid: u32,
    pub reading: Reading,
    /// CPU time over wall time since the previous reading of the same
    /// process, from the same source, in percent of one CPU; `None` for the
    /// first.
    pub cpu_percent: Option<f64>,
}

/// The last reading of every worker that could be read.
pub type Snapshot = HashMap<SlotKey, Usage>;

pub struct Sampler {
    /// The workers to read, replaced whole by the supervisor; the thread
    /// takes a copy of the pointer at each tick, so neither side holds the
    /// lock for longer than that, and a thread slowed by a stuck read never
    /// makes lists pile up.
    subjects: Arc<Mutex<Arc<Vec<Subject>>>>,
    /// Never sent on: dropping it ends the thread's wait, and the thread.
    _alive: mpsc::SyncSender<()>,
    latest: watch::Receiver<Arc<Snapshot>>,
}

impl Sampler {
    /// Starts the thread, sampling once per `interval`.
    pub fn start(interval: Duration) -> std::io::Result<Sampler> {
        let subjects = Arc::new(Mutex::new(Arc::new(Vec::new())));
        let (alive, ended) = mpsc::sync_channel(0);
        let (tx, latest) = watch::channel(Arc::new(Snapshot::new()));
        let theirs = subjects.clone();
        std::thread::Builder::new().name("corral-usage".into()).spawn(move || run(interval, &theirs, &ended, &tx))?;
        Ok(Sampler { subjects, _alive: alive, latest })
    }

    /// The workers running now; they are read from the next tick on.
    pub fn set_subjects(&self, subjects: Vec<Subject>) {
        *self.subjects.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(subjects);
    }

    pub fn latest(&self) -> Arc<Snapshot> {
        self.latest.borrow().clone()
    }
}

fn run(
    interval: Duration,
    subjects: &Mutex<Arc<Vec<Subject>>>,
    ended: &mpsc::Receiver<()>,
    out: &watch::Sender<Arc<Snapshot>>,
) {
    let mounts = Mounts::find();
    let hz = super::clock_ticks();
    let mut last = Previous::new();
    let mut next = Instant::now() + interval;
    loop {
        match ended.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {
                let current = subjects.lock().unwrap_or_else(PoisonError::into_inner).clone();
                last = sample(&current, &last, &mounts, hz);
                out.send_replace(Arc::new(last.iter().map(|(k, (_, _, u))| (k.clone(), u.clone())).collect()));
                next = (next + interval).max(Instant::now());
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

type Previous = HashMap<SlotKey, (Subject, Instant, Usage)>;

/// Reads each subject, with its CPU percent since the previous reading of
/// the same process.
fn sample(subjects: &[Subject], previous: &Previous, mounts: &Mounts, hz: u64) -> Previous {
    let mut now = Previous::with_capacity(subjects.len());
    for subject in subjects {
        let Some(reading) = read(subject.pid, subject.start_time, subject.own.as_ref(), mounts, hz) else { continue };
        let at = Instant::now();
        let cpu_percent = previous.get(&subject.key).and_then(|(before, then, usage)| {
            let same = before.pid == subject.pid
                && before.start_time == subject.start_time
                && usage.reading.source == reading.source;
            percent(usage.reading.cpu_us, reading.cpu_us, at.duration_since(*then)).filter(|_| same)
        });
        let usage = Usage { pid: subject.pid, reading, cpu_percent };
        now.insert(subject.key.clone(), (subject.clone(), at, usage));
    }
    now
}

/// CPU time used over `wall`, in percent of one CPU; `None` when the
/// counter went back (a reading of something else) or no time passed.
pub fn percent(before_us: u64, after_us: u64, wall: Duration) -> Option<f64> {
    let used = after_us.checked_sub(before_us)?;
    let wall_us = wall.as_micros();
    (wall_us > 0).then(|| used as f64 * 100.0 / wall_us as f64)
}
