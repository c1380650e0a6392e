//! The supervisor: spawns worker groups, keeps them running by their restart
//! policy, and carries out the commands that reach it from the socket.
//!
//! Two halves. The [`fleet`] is the state and its rules, as plain data
//! with no I/O: which slot runs, what follows an exit, what a reload
//! changes, what status shows. The actor ([`Supervisor`], run loop in
//! `actor`) owns the fleet, takes messages one batch at a time, asks the
//! fleet what to do and does it: forks, placements, signals, timers,
//! files. It never waits on a worker: everything that takes time (a
//! drain, a rolling restart, a shutdown) runs as its own orchestration
//! task that asks the actor for quick state changes through a [`Handle`].
//! So a slow stop in one group never delays a command for another, and a
//! hard stop reaches the workers while a soft stop is still waiting on
//! them.
//!
//! The actor's work is split by concern: `requests` (client requests),
//! `slots` (forks, placement, process events, stops and starts),
//! `reload` (reload and load-state), `adopt` (workers of an earlier
//! corrald), `upgrade` (in-place upgrade) and `report` (status, the
//! service manager's status line, the runtime file).

mod actor;
mod adopt;
mod events;
mod fanout;
mod fleet;
mod health;
mod launch;
mod metrics;
mod orchestrate;
mod probe;
mod process;
mod reload;
mod reply;
mod report;
mod requests;
pub mod runtime;
mod slots;
pub mod state;
mod upgrade;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, OutputMode};
use crate::events::Events;
use crate::journal::Output;
use crate::systemd::notify::Notifier;
use crate::systemd::Systemd;
use crate::usage::sampler::{Sampler, Snapshot};
use fanout::OpSink;
use fleet::Fleet;
use process::ProcCmd;

pub use crate::target::SlotKey;
pub use actor::{Handle, Msg};
pub use health::{Condemnation, HealthNotice, NoticeStage};
pub use launch::keep_open_file_limit_for_workers;
pub use reply::{Outgoing, Replies, Reply, ReplyQueue};
pub use requests::{Request, SocketCommand};
pub use upgrade::{handshake_line, HANDSHAKE_ARG};

/// What the actor keeps of a worker process beyond the fleet's view of it:
/// the way to its task, and its descriptors that a later corrald needs.
pub struct ProcIo {
    tx: mpsc::UnboundedSender<ProcCmd>,
    /// corrald's ends of its descriptors, by store name.
    shared: process::Shared,
}

pub struct Supervisor {
    config: Config,
    fleet: Fleet<ProcIo>,
    /// The service manager, when workers are placed in scopes.
    systemd: Option<Systemd>,
    /// The service manager that runs corrald, if it was started as a
    /// notify service.
    notifier: Notifier,
    output: Output,
    rx: mpsc::UnboundedReceiver<Msg>,
    handle: Handle,
    /// Requests waiting for slots to be ready, by slot.
    waiters: HashMap<SlotKey, Vec<OpSink>>,
    next_generation: u64,
    started: Instant,
    /// The runtime file needs rewriting.
    runtime_dirty: bool,
    runtime_file: runtime::Writer,
    /// Where an accepted upgrade is announced to corrald's main loop.
    upgrades: Option<mpsc::UnboundedSender<PathBuf>>,
    upgrading: Option<PathBuf>,
    /// Whether journald's stream socket is there for `output = "journal"`.
    journal_streams: bool,
    /// Forked children that wait at their gate for placement; each pins
    /// the pages corrald writes meanwhile, so their number is bounded.
    gated: usize,
    /// A `ForkMore` is on its way.
    fork_more_sent: bool,
    events: Events,
    /// Each group's state as subscribers were last told it.
    told_states: BTreeMap<String, &'static str>,
    /// Where restarts for health are told, to be put on record.
    health_notices: Option<mpsc::UnboundedSender<health::HealthNotice>>,
    /// Exits, restarts and check results, for the metrics.
    counted: metrics::Counted,
    /// Reads the workers' CPU and memory off the actor; none when
    /// `usage_interval` is 0.
    usage: Option<Sampler>,
}

/// How the run loop ended.
pub enum Ending {
    /// After a soft shutdown; clean when every worker drained.
    Shutdown { clean: bool },
    /// `systemctl restart`: the workers stay for the next corrald.
    Handover,
    /// Replace this corrald with `binary`, passing it the workers'
    /// descriptors (by store name).
    Upgrade { binary: PathBuf, fds: Vec<(String, OwnedFd)> },
}

impl Supervisor {
    pub fn new(config: Config, systemd: Option<Systemd>, notifier: Notifier, output: Output) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let journal_streams = std::path::Path::new(launch::JOURNAL_STREAM_SOCKET).exists();
        let wanted: Vec<&str> =
            config.groups.values().filter(|g| g.output == OutputMode::Journal).map(|g| g.name.as_str()).collect();
        if !wanted.is_empty() && !journal_streams {
            tracing::warn!(
                groups = %wanted.join(", "),
                "output = \"journal\", but journald's stream socket {} is not there: corrald carries their output",
                launch::JOURNAL_STREAM_SOCKET
            );
        }
        let limits = &config.limits;
        let events =
            Events::new(limits.max_subscribers as usize, limits.event_queue as usize, limits.event_history as usize);
        output.tell(events.clone());
        Supervisor {
            usage: start_sampler(config.usage_interval),
            fleet: Fleet::new(&config),
            runtime_file: runtime::Writer::start(runtime::path(&config.state_directory)),
            config,
            systemd,
            notifier,
            output,
            rx,
            handle: Handle { tx },
            waiters: HashMap::new(),
            next_generation: 1,
            started: Instant::now(),
            runtime_dirty: false,
            upgrades: None,
            upgrading: None,
            journal_streams,
            gated: 0,
            fork_more_sent: false,
            events,
            told_states: BTreeMap::new(),
            health_notices: None,
            counted: metrics::Counted::default(),
        }
    }

    /// The broadcaster the supervisor emits into, for the socket layer to
    /// subscribe clients to and emit the outcome of requests into. Its
    /// bounds are the config's at start.
    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// The last reading of every worker the sampler could read.
    fn usage(&self) -> Arc<Snapshot> {
        self.usage.as_ref().map(Sampler::latest).unwrap_or_default()
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Accepted upgrades are sent here (the new binary's path); without a
    /// receiver, upgrades are refused.
    pub fn on_upgrade(&mut self, tx: mpsc::UnboundedSender<PathBuf>) {
        self.upgrades = Some(tx);
    }
}

/// A sampler reading every `interval`; none without one, or when its
/// thread cannot be started (which is said: listings then show no usage).
fn start_sampler(interval: Option<Duration>) -> Option<Sampler> {
    Sampler::start(interval?).map_err(|e| tracing::warn!("no CPU and memory readings: {e}")).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::actor::BATCH;
    use super::*;
    use crate::proto::Status;

    /// More requests waiting at once than the actor takes in one batch:
    /// every one is still answered, once.
    #[tokio::test]
    async fn every_waiting_request_is_answered_across_batches() {
        let config = Config::parse("", std::path::Path::new("/nonexistent/corral.toml")).expect("an empty config");
        let supervisor = Supervisor::new(config, None, Notifier::none(), Output::start(1 << 20));
        let handle = supervisor.handle();
        let (replies, mut queue) = Replies::channel();
        let asked = 2 * BATCH as u64 + 1;
        for id in 1..=asked {
            handle.request(Request::Status, Reply::new(id, id, replies.clone()));
        }
        let run = tokio::spawn(supervisor.run());
        let mut answered = std::collections::BTreeSet::new();
        while (answered.len() as u64) < asked {
            let out = tokio::time::timeout(Duration::from_secs(10), queue.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {asked} requests never answered", asked - answered.len() as u64))
                .expect("the queue stays open");
            assert_eq!(out.response.status(), Status::Ok, "{:?}", out.response);
            assert!(answered.insert(out.response.id), "{} answered twice", out.response.id);
        }
        run.abort();
    }
}
