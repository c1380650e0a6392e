//! A slot and the states it moves through.
//!
//! The state carries what it needs: a process exists exactly in the
//! states where one runs (`Starting`, `Ready`, `Stopping`), so a slot can
//! be neither "ready with no process" nor "stopped with one".

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::health::Health;
use super::restart::StartLimit;
use crate::systemd::PlaceError;

/// A worker process as the fleet sees it. `H` is what the actor keeps to
/// reach the process (its task's channel, its descriptors); the fleet
/// never looks inside it, so its rules can be tested with `H = ()`.
#[derive(Debug)]
pub struct Proc<H> {
    /// Which start of the slot this is: events from an older process of
    /// the same slot are recognised as stale.
    pub generation: u64,
    pub pid: u32,
    /// With the pid, names the process for good (see `runtime`).
    pub start_time: u64,
    /// Wall-clock start, for listings.
    pub started_at: SystemTime,
    /// Its output goes straight to journald, so corrald holds no pipes.
    pub direct_output: bool,
    /// When corrald started (or adopted) it; how long it ran drives the
    /// backoff.
    pub started: Instant,
    /// Why systemd did not take it into its scope, if so: it never ran.
    pub placement_error: Option<PlaceError>,
    /// What its pings and probes found.
    pub health: Health,
    pub handle: H,
}

#[derive(Debug)]
pub enum SlotState<H> {
    /// Its group waits for the groups it starts after.
    Waiting,
    /// In the fork queue: starting, with no process yet.
    Queued,
    Starting(Proc<H>),
    Ready(Proc<H>),
    /// Asked to stop (by an operator, a scale-down, a reload, a shutdown);
    /// its exit is then no reason to restart.
    Stopping(Proc<H>),
    /// Waiting out its restart delay; `token` names the timer that may end
    /// it, so a timer from an earlier backoff is recognised as stale.
    Backoff {
        token: u64,
    },
    /// Not running and not to be restarted: `requested` when someone
    /// stopped it (kept in a saved state), otherwise it ended by itself and
    /// its restart policy said to leave it.
    Stopped {
        requested: bool,
    },
    /// It crashed and its policy ended it, or its group failed at a
    /// start limit.
    Failed,
}

impl<H> SlotState<H> {
    /// The name clients see.
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Waiting => "waiting",
            SlotState::Queued | SlotState::Starting(_) => "starting",
            SlotState::Ready(_) => "ready",
            SlotState::Stopping(_) => "stopping",
            SlotState::Backoff { .. } => "backoff",
            SlotState::Stopped { .. } => "stopped",
            SlotState::Failed => "failed",
        }
    }

    pub fn proc(&self) -> Option<&Proc<H>> {
        match self {
            SlotState::Starting(p) | SlotState::Ready(p) | SlotState::Stopping(p) => Some(p),
            _ => None,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, SlotState::Ready(_))
    }

    pub fn is_running(&self) -> bool {
        self.proc().is_some()
    }

    /// Settled for the groups that start after this one: ready, stopped,
    /// or on its way to stopping because someone asked.
    pub fn settled(&self) -> bool {
        matches!(self, SlotState::Ready(_) | SlotState::Stopped { .. } | SlotState::Stopping(_))
    }

    /// Stopped by request: a saved state keeps it stopped.
    pub fn stopped_on_request(&self) -> bool {
        matches!(self, SlotState::Stopped { requested: true })
    }
}

#[derive(Debug)]
pub struct Slot<H> {
    pub state: SlotState<H>,
    /// Restarts by policy over the slot's life.
    pub restarts: u32,
    /// Exits in a row that came soon after their start; drives the backoff.
    pub consecutive_failures: u32,
    /// Its restarts in the start-limit window: a crash loop is one slot's.
    pub start_limit: StartLimit,
    pub last_exit: String,
    /// Output lines of this worker dropped because the log queue was full;
    /// shared with the pumps that read its output.
    pub output_dropped: Arc<AtomicU64>,
}

impl<H> Slot<H> {
    pub fn new(state: SlotState<H>) -> Slot<H> {
        Slot {
            state,
            restarts: 0,
            consecutive_failures: 0,
            start_limit: StartLimit::default(),
            last_exit: String::new(),
            output_dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Takes the process out, leaving `then` in its place.
    pub fn take_proc(&mut self, then: SlotState<H>) -> Option<Proc<H>> {
        match std::mem::replace(&mut self.state, then) {
            SlotState::Starting(p) | SlotState::Ready(p) | SlotState::Stopping(p) => Some(p),
            other => {
                self.state = other;
                None
            }
        }
    }
}
