//! systemd over D-Bus: one long-lived connection to the service manager,
//! transient scopes for workers, live resource limits, and the scopes'
//! `RequestStop` signal.
//!
//! Traps this module exists to handle: `StartTransientUnit` returns when the
//! job is queued, not done, so every placement waits for its `JobRemoved`
//! (whose match is installed at connect time, before any call); the signal
//! stream is drained by one task so a full queue can never stall the
//! connection; a scope left from an earlier run (`UnitExists`) is resolved,
//! not ignored; a dropped connection is re-established on the next use; and
//! a group scope is one unit for systemd (one `Controller` match rule on its
//! bus connection, of the 512 dbus-daemon allows it) with a leaf sub-cgroup
//! per worker that corrald itself creates and removes.
//!
//! A scope's `Controller` is fixed when the scope is created: systemd 252
//! answers `SetUnitProperties(Controller=...)` on a live scope with
//! `PropertyReadOnly`. So the controller corrald names is the well-known
//! name [`BUS_NAME`], not its connection's unique name, which dies with
//! the connection: after `systemctl restart dbus.service` corrald connects
//! again at once, owns the name again, and the bus routes every scope's
//! `RequestStop` to it. systemd keeps the Controller of its scopes across a
//! restart of the bus (its watch on the name went with the old bus).

pub mod notify;
pub mod properties;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use zbus::fdo::{RequestNameFlags, RequestNameReply};
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, MessageStream, OwnedVariant, Variant};
use zbus_systemd::systemd1::{JobProxy, ManagerProxy, UnitProxy};

use crate::procfs;
use crate::target::Target;

pub use properties::Property;

/// How long one D-Bus call, or one job, may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The name corrald owns on the bus and names as its scopes' `Controller`
/// (see the module's notes). On the system bus a policy must let root own
/// it: packaging/org.corral.Corrald.conf, installed by packaging/install.
pub const BUS_NAME: &str = "org.corral.Corrald";

/// `RequestStop` signals from a sender other than systemd's last known
/// name that may wait to be checked against the bus; more are dropped.
/// systemd's own signals wait here only just after its name changed (a
/// re-exec, a bus restart), one per scope being stopped.
const UNVERIFIED_STOPS: usize = 256;

/// The longest pause between two tries at reconnecting to a bus that went
/// away (restarted, or systemd re-executing).
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Which bus to find the service manager on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    System,
    User,
}

/// What the service manager asks of corrald.
#[derive(Debug)]
pub enum Event {
    /// `systemctl stop` of one of our scopes: drain its workers. `sender`
    /// is the service manager's unique name on the bus, which sent it.
    RequestStop { unit: String, sender: String },
}

/// What the bus says of a connection (`GetConnectionCredentials`): a field
/// it did not give is `None`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub uid: Option<u32>,
    /// The first of the bus's `UnixGroupIDs`: dbus-daemon lists the groups
    /// of the uid's user database entry, its primary group first.
    pub gid: Option<u32>,
    pub pid: Option<u32>,
}

/// The scope a worker is placed in.
#[derive(Debug, Clone)]
pub struct Placement {
    pub unit: String,
    pub description: String,
    pub slice: String,
    /// For a unit the group's workers share: the sub-cgroup of it that is
    /// this worker's own (named for the worker), so that each worker keeps
    /// its own accounting while systemd tracks one unit for the group.
    pub leaf: Option<String>,
    pub properties: Vec<Property>,
}

/// Results of jobs, by job object path. A `JobRemoved` can arrive before the
/// caller has read its job path from the method reply, so results nobody
/// waits for yet are kept (bounded) until claimed.
struct Jobs {
    waiting: HashMap<String, oneshot::Sender<String>>,
    unclaimed: lru::LruCache<String, String>,
}

struct Link {
    conn: Connection,
    manager: ManagerProxy<'static>,
    jobs: Arc<Mutex<Jobs>>,
    /// The name scopes made on this link name as their `Controller`.
    controller: String,
    /// Set when its `RequestStop` stream has ended, which can be before
    /// the connection counts as closed: a link that no longer hears stop
    /// requests is replaced as one whose connection closed is.
    ended: Arc<AtomicBool>,
    systemd: SystemdName,
}

impl Link {
    fn alive(&self) -> bool {
        !self.conn.is_closed() && !self.ended.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
pub struct Systemd {
    bus: Bus,
    link: Arc<tokio::sync::RwLock<Option<Arc<Link>>>>,
    /// Serialises placements into one shared unit, so the first creates it
    /// and the rest attach.
    unit_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    events: mpsc::UnboundedSender<Event>,
    /// Told when a link's connection closes, so that corrald reconnects at
    /// once rather than on its next call: `RequestStop` reaches only a
    /// connected corrald.
    dropped: Arc<Notify>,
    /// The cgroup path (below each hierarchy's root) of the shared units
    /// placed into, so that a worker's leaf can be removed once it exits.
    /// One entry per group scope; bounded for groups that come and go.
    scope_paths: Arc<Mutex<lru::LruCache<String, String>>>,
    version: String,
    /// Placements and property changes in flight at once: the bus caps the
    /// replies one connection may wait for (128 on Debian's system bus),
    /// and beyond a few systemd is no faster.
    window: Arc<tokio::sync::Semaphore>,
}

/// How long a placement whose exchange the bus or a re-executing manager
/// cut short is tried again (a `daemon-reexec` of a manager with thousands
/// of units takes seconds), and the first and longest pause between tries.
const RETRY_FOR: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Why a worker could not be placed.
#[derive(Debug, Clone)]
pub struct PlaceError {
    pub error: String,
    /// The exchange with the manager was cut short for as long as corrald
    /// tried (a re-exec, a bus restart), not refused: systemd's plight,
    /// not the worker's.
    pub lost: bool,
}

/// Starts the error of a job that systemd ran and that failed.
const JOB_FAILED: &str = "the start job of";

/// Whether a failed call is worth trying again after a pause: the bus was
/// busy (LimitsExceeded) or the answer was lost (NoReply, a dropped
/// connection, systemd re-executing and off the bus meanwhile), not a
/// refusal of the call itself.
fn transient(e: &zbus::Error) -> bool {
    match error_name(e).as_deref() {
        Some(name) => matches!(
            name,
            "org.freedesktop.DBus.Error.LimitsExceeded"
                | "org.freedesktop.DBus.Error.NoReply"
                | "org.freedesktop.DBus.Error.Disconnected"
                | "org.freedesktop.DBus.Error.Timeout"
                | "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
        ),
        // A job that ran and failed is systemd's answer, not a lost one.
        None => match e {
            zbus::Error::InputOutput(_) => true,
            zbus::Error::Failure(m) => !m.starts_with(JOB_FAILED),
            _ => false,
        },
    }
}

fn call_err(unit: &str, what: &str, e: impl std::fmt::Display) -> String {
    format!("{unit}: {what} failed: {e}")
}

/// The D-Bus error name of a method error, if it is one. zbus reports the
/// bus's own errors (`org.freedesktop.DBus.Error.*`: NoReply, ...) as
/// `FDO`, every other name as `MethodError`.
fn error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => Some(zbus::DBusError::name(fdo.as_ref()).to_string()),
        _ => None,
    }
}

async fn timed<T>(what: &str, fut: impl std::future::Future<Output = zbus::Result<T>>) -> Result<T, zbus::Error> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(zbus::Error::Failure(format!("{what}: no answer from systemd within {CALL_TIMEOUT:?}"))),
    }
}

impl Systemd {
    /// Connects and checks that a service manager answers on the bus.
    pub async fn connect(bus: Bus, calls: usize) -> Result<(Systemd, mpsc::UnboundedReceiver<Event>), String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let dropped = Arc::new(Notify::new());
        let link = Self::open(bus, tx.clone(), dropped.clone()).await?;
        let version = link.manager.version().await.unwrap_or_default();
        let sd = Systemd {
            bus,
            link: Arc::new(tokio::sync::RwLock::new(Some(Arc::new(link)))),
            unit_locks: Arc::default(),
            events: tx,
            dropped,
            scope_paths: Arc::new(Mutex::new(lru::LruCache::new(NonZeroUsize::new(4096).expect("non-zero")))),
            version,
            window: Arc::new(tokio::sync::Semaphore::new(calls.max(1))),
        };
        tokio::spawn(sd.clone().keep_connected());
        Ok((sd, rx))
    }

    /// Reconnects as soon as the connection drops, trying again (with a
    /// growing pause) while the bus or systemd is not back yet.
    async fn keep_connected(self) {
        loop {
            self.dropped.notified().await;
            // Test builds only: corrald stays off the bus a while, so a test
            // can ask systemd for a stop while no one owns corrald's name.
            #[cfg(feature = "fault-injection")]
            if let Some(ms) = std::env::var("CORRAL_FAULT_RECONNECT_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut pause = RETRY_PAUSE;
            loop {
                match self.link().await {
                    Ok(link) => {
                        tracing::info!(
                            "reconnected to systemd on the {} bus; scopes' stop requests go to {}",
                            bus_name(self.bus),
                            link.controller
                        );
                        self.stops_missed(&link).await;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!("reconnecting to systemd: {e}; trying again in {pause:?}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                    }
                }
            }
        }
    }

    /// Stops systemd asked for while corrald was off the bus: their
    /// `RequestStop` went to a name nobody owned, and systemd waits for the
    /// scope to empty. Each stop job of a corral scope is taken as the
    /// signal it sent (a stop corrald already drains is not started twice).
    async fn stops_missed(&self, link: &Link) {
        let jobs = match timed("ListJobs", link.manager.list_jobs()).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!("cannot list systemd's jobs for stops of scopes asked for while off the bus: {e}");
                return;
            }
        };
        let Some(sender) = link.systemd.owner().await else { return };
        for (_, unit, kind, ..) in jobs {
            if kind == "stop" && target_of_scope(&unit).is_some() {
                tracing::info!(%unit, "systemd is stopping the scope, asked while corrald was off the bus");
                let _ = self.events.send(Event::RequestStop { unit, sender: sender.clone() });
            }
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    async fn open(bus: Bus, events: mpsc::UnboundedSender<Event>, dropped: Arc<Notify>) -> Result<Link, String> {
        let conn = match bus {
            Bus::System => Connection::system().await,
            Bus::User => Connection::session().await,
        }
        .map_err(|e| format!("cannot connect to the {} bus: {e}", bus_name(bus)))?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| format!("cannot reach systemd on the {} bus: {e}", bus_name(bus)))?;
        // Installing the JobRemoved match before any call is what makes it
        // safe to wait for a job whose path the call has not returned yet.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| format!("cannot subscribe to systemd's JobRemoved: {e}"))?;
        // Proves a service manager is there, not just a bus.
        timed("Version", manager.version())
            .await
            .map_err(|e| format!("no systemd service manager on the {} bus: {e}", bus_name(bus)))?;

        let jobs = Arc::new(Mutex::new(Jobs {
            waiting: HashMap::new(),
            unclaimed: lru::LruCache::new(NonZeroUsize::new(4096).expect("non-zero")),
        }));
        let sink = jobs.clone();
        tokio::spawn(async move {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                let path = args.job.to_string();
                let result = args.result.to_string();
                let mut jobs = sink.lock().expect("jobs lock");
                match jobs.waiting.remove(&path) {
                    Some(waiter) => {
                        let _ = waiter.send(result);
                    }
                    None => {
                        jobs.unclaimed.put(path, result);
                    }
                }
            }
            // The stream ends when the connection does: fail every waiter
            // now rather than at its timeout.
            sink.lock().expect("jobs lock").waiting.clear();
        });

        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.systemd1.Scope")
            .member("RequestStop")
            .build()
            .map_err(|e| format!("cannot build the RequestStop match: {e}"))?;
        let mut stops = MessageStream::for_match_rule(rule, &conn, NonZeroUsize::new(64))
            .await
            .map_err(|e| format!("cannot subscribe to RequestStop: {e}"))?;
        let systemd_name = SystemdName {
            bus_daemon: zbus::fdo::DBusProxy::new(&conn)
                .await
                .map_err(|e| format!("cannot reach the bus itself: {e}"))?,
            last_seen: Arc::default(),
        };
        systemd_name.owner().await;
        let ended = Arc::new(AtomicBool::new(false));
        let end = ended.clone();
        let systemd = systemd_name.clone();
        // A signal from a sender other than the one systemd last had is
        // checked against the bus by one task, off the reader (which must
        // keep draining the stream so the connection never waits on it),
        // through a bounded queue: any client may send signals, and a
        // flood of them must not grow tasks or calls in flight.
        let (to_check, mut checks) = mpsc::channel::<(String, String)>(UNVERIFIED_STOPS);
        let (checker, checked) = (systemd_name.clone(), events.clone());
        tokio::spawn(async move {
            while let Some((unit, sender)) = checks.recv().await {
                if checker.owner().await.as_deref() == Some(sender.as_str()) {
                    let _ = checked.send(Event::RequestStop { unit, sender });
                } else {
                    tracing::warn!(%unit, "ignored a RequestStop sent by {sender}, which is not systemd");
                }
            }
        });
        tokio::spawn(async move {
            // The stream ends with the connection; an error is one message.
            while let Some(msg) = stops.next().await {
                let Ok(msg) = msg else { continue };
                let header = msg.header();
                let Some(unit) = header.path().and_then(|path| unit_from_path(path.as_str())) else { continue };
                let Some(sender) = header.sender().map(|s| s.to_string()) else { continue };
                if systemd.was(&sender) {
                    let _ = events.send(Event::RequestStop { unit, sender });
                } else if to_check.try_send((unit, sender)).is_err() {
                    tracing::debug!("a RequestStop from an unchecked sender dropped: too many wait to be checked");
                }
            }
            end.store(true, Ordering::Release);
            dropped.notify_one();
        });
        let controller = Self::own_name(&conn, bus).await;
        Ok(Link { conn, manager, jobs, controller, ended, systemd: systemd_name })
    }

    /// Asks for [`BUS_NAME`] and returns the name scopes are to name as
    /// their controller: it, or when the bus refuses (no policy for it,
    /// another corrald has it) this connection's unique name.
    async fn own_name(conn: &Connection, bus: Bus) -> String {
        let unique = conn.unique_name().map(|n| n.to_string()).unwrap_or_default();
        let why = match conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE).await {
            Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => return BUS_NAME.to_string(),
            Ok(reply) => format!("the bus answered {reply:?}"),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            "cannot own the name {BUS_NAME} on the {} bus ({why}); scopes started now name {unique} as their \
             controller, and once the bus restarts `systemctl stop` of them no longer reaches corrald \
             (systemd waits TimeoutStopSec, then kills their workers). packaging/install installs the \
             bus policy that lets root own the name",
            bus_name(bus)
        );
        unique
    }

    /// What the bus says of the connection that has `name`.
    pub async fn credentials(&self, name: &str) -> Result<Credentials, String> {
        let link = self.link().await?;
        let dbus = zbus::fdo::DBusProxy::new(&link.conn).await.map_err(|e| format!("the bus: {e}"))?;
        let bus_name = zbus::names::BusName::try_from(name).map_err(|e| format!("{name}: {e}"))?;
        let creds = timed("GetConnectionCredentials", async {
            dbus.get_connection_credentials(bus_name).await.map_err(zbus::Error::from)
        })
        .await
        .map_err(|e| format!("GetConnectionCredentials({name}): {e}"))?;
        Ok(Credentials {
            uid: creds.unix_user_id(),
            gid: creds.unix_group_ids().and_then(|groups| groups.first().copied()),
            pid: creds.process_id(),
        })
    }

    /// The live link, reconnecting when the last one dropped (systemd
    /// re-executed, the bus restarted).
    async fn link(&self) -> Result<Arc<Link>, String> {
        if let Some(link) = self.link.read().await.as_ref() {
            if link.alive() {
                return Ok(link.clone());
            }
        }
        let mut slot = self.link.write().await;
        if let Some(link) = slot.as_ref() {
            if link.alive() {
                return Ok(link.clone());
            }
            tracing::warn!("the D-Bus connection to systemd dropped; reconnecting");
        }
        let link = Arc::new(Self::open(self.bus, self.events.clone(), self.dropped.clone()).await?);
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Puts `pid` into its scope and confirms it is there. Returns a note
    /// when an existing scope was joined rather than created, or the
    /// placement was confirmed after its exchange was cut short.
    pub async fn place(&self, pid: u32, placement: &Placement) -> Result<Option<String>, PlaceError> {
        // A group scope whose cgroup is there is live: its next workers
        // join it with one call each, as many at once as the window
        // allows. Should the scope be on its way out after all, the join
        // fails and the careful path below, one placement at a time,
        // decides.
        if let Some(leaf) = placement.leaf.as_deref() {
            if self.cached_scope_exists(&placement.unit) && self.join_live(pid, &placement.unit, leaf).await {
                return Ok(None);
            }
        }
        let lock = if placement.leaf.is_some() {
            let mut locks = self.unit_locks.lock().expect("unit locks");
            Some(locks.entry(placement.unit.clone()).or_default().clone())
        } else {
            None
        };
        let _guard = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let unit = &placement.unit;
        let _permit =
            self.window.acquire().await.map_err(|e| PlaceError { error: format!("{unit}: {e}"), lost: false })?;
        let leaf = placement.leaf.as_deref();
        let since = tokio::time::Instant::now();
        let mut pause = RETRY_PAUSE;
        loop {
            let (error, again) = match self.place_once(pid, placement).await {
                Ok(note) => return Ok(note),
                Err(failed) => failed,
            };
            // The kernel says whether the exchange that was cut short
            // placed the process after all.
            if again && confirm_in_unit(pid, unit, leaf).is_ok() {
                return Ok(Some(format!(
                    "{unit}: placement confirmed from /proc after the D-Bus exchange failed: {error}"
                )));
            }
            if !again || since.elapsed() >= RETRY_FOR {
                // A worker stopped while it was being placed leaves the
                // leaf made for it; the group's lock is still held, so no
                // other placement is using that leaf meanwhile.
                if let Some(leaf) = leaf {
                    self.release_leaf(unit, leaf);
                }
                return Err(PlaceError { error, lost: again });
            }
            tracing::info!("placing pid {pid}: {error}; trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }

    /// One try at [`Self::place`]; an error says whether another try may
    /// succeed.
    async fn place_once(&self, pid: u32, placement: &Placement) -> Result<Option<String>, (String, bool)> {
        let link = self.link().await.map_err(|e| (e, true))?;
        let unit = &placement.unit;
        let leaf = placement.leaf.as_deref();
        let mut note = None;
        let joined = match leaf {
            Some(leaf) if self.is_active(&link, unit).await => {
                self.join_leaf(&link, unit, leaf, pid).await.map_err(|e| (e, false))?;
                true
            }
            _ => false,
        };
        if !joined {
            match self.start_scope(&link, pid, placement).await {
                Ok(()) => {}
                Err(e) if error_name(&e).as_deref() == Some("org.freedesktop.systemd1.UnitExists") => {
                    // Made by an earlier try whose reply was lost (its start
                    // job may still be queued, say across a re-exec: its
                    // end is awaited first), or left from an earlier run. A
                    // live one is joined (its limits still apply); a dead
                    // one is reset and created anew.
                    if let Some(job) = self.pending_job(&link, unit).await {
                        self.job_result(&link, job).await.map_err(|e| {
                            let again = transient(&e);
                            (call_err(unit, "the start job of an earlier try", e), again)
                        })?;
                    }
                    if self.is_active(&link, unit).await {
                        self.attach(&link, unit, None, pid).await.map_err(|e| (e, false))?;
                        note = Some(format!("{unit} existed from an earlier run and was joined"));
                    } else {
                        let _ = timed("ResetFailedUnit", link.manager.reset_failed_unit(unit.clone())).await;
                        self.start_scope(&link, pid, placement).await.map_err(|e| {
                            let again = transient(&e);
                            (call_err(unit, "StartTransientUnit (after reset-failed)", e), again)
                        })?;
                        note = Some(format!("{unit} was left failed by an earlier run; reset and created anew"));
                    }
                }
                // The call or its job was lost (systemd re-executed, the
                // bus restarted, a timeout): the kernel says whether the
                // scope took the process after all.
                Err(e) if confirm_in_unit(pid, unit, None).is_ok() => {
                    note = Some(format!("{unit}: placement confirmed from /proc after the D-Bus exchange failed: {e}"));
                }
                Err(e) => {
                    let again = transient(&e);
                    return Err((call_err(unit, "StartTransientUnit", e), again));
                }
            }
        }
        let Some(leaf) = leaf else {
            confirm_in_unit(pid, unit, None).map_err(|e| (e, false))?;
            return Ok(note);
        };
        if !joined {
            // A scope takes its first process into its own cgroup: the
            // worker moves on to its leaf, which leaves the scope's root
            // empty, as cgroup v2 wants of a cgroup whose children get
            // controllers.
            let scope_path = confirm_in_unit(pid, unit, None).map_err(|e| (e, false))?;
            self.scope_paths.lock().expect("scope paths").put(unit.clone(), scope_path.clone());
            self.join_leaf(&link, unit, leaf, pid).await.map_err(|e| (e, false))?;
            if let Err(e) = enable_leaf_controllers(&scope_path) {
                tracing::warn!("{unit}: per-worker memory/cpu/pids/io accounting is off: {e}");
            }
        }
        confirm_in_unit(pid, unit, Some(leaf)).map_err(|e| (e, false))?;
        Ok(note)
    }

    /// Moves `pid` into its leaf of a live group scope. systemd 252 attaches
    /// to a sub-cgroup of a delegated unit but does not create it: the
    /// subtree is the delegate's, so corrald makes the leaf first.
    async fn join_leaf(&self, link: &Link, unit: &str, leaf: &str, pid: u32) -> Result<(), String> {
        let cached = self.scope_paths.lock().expect("scope paths").get(unit).cloned();
        let scope_path = match cached {
            Some(path) => path,
            None => {
                let path = self.control_group(link, unit).await?;
                self.scope_paths.lock().expect("scope paths").put(unit.to_string(), path.clone());
                path
            }
        };
        make_leaf(&scope_path, leaf).map_err(|e| format!("{unit}: {e}"))?;
        self.attach(link, unit, Some(leaf), pid).await
    }

    /// One try at joining a live group scope's leaf, without its lock.
    async fn join_live(&self, pid: u32, unit: &str, leaf: &str) -> bool {
        let Ok(_permit) = self.window.acquire().await else { return false };
        let Ok(link) = self.link().await else { return false };
        self.join_leaf(&link, unit, leaf, pid).await.is_ok() && confirm_in_unit(pid, unit, Some(leaf)).is_ok()
    }

    /// Whether a group scope placed into before still has its cgroup.
    fn cached_scope_exists(&self, unit: &str) -> bool {
        let Some(scope_path) = self.scope_paths.lock().expect("scope paths").get(unit).cloned() else { return false };
        let live = cgroup_dirs(&scope_path).any(|dir| std::path::Path::new(&dir).is_dir());
        live
    }

    /// The unit's cgroup path, as systemd shows it (`ControlGroup`).
    async fn control_group(&self, link: &Link, unit: &str) -> Result<String, String> {
        let path = timed("GetUnit", link.manager.get_unit(unit.to_string()))
            .await
            .map_err(|e| call_err(unit, "GetUnit", e))?;
        let proxy = zbus::Proxy::new(&link.conn, "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Scope")
            .await
            .map_err(|e| call_err(unit, "reading ControlGroup", e))?;
        let group: String = timed("Get", proxy.get_property("ControlGroup"))
            .await
            .map_err(|e| call_err(unit, "reading ControlGroup", e))?;
        if group.is_empty() {
            return Err(format!("{unit}: systemd shows no cgroup for it"));
        }
        Ok(group)
    }

    /// Removes a worker's leaf of its group scope once the worker is gone.
    /// A leaf still holding a process (a child that outlived the worker)
    /// stays, and goes with the scope when systemd stops it; the slot's next
    /// worker joins it meanwhile.
    pub fn release_leaf(&self, unit: &str, leaf: &str) {
        let Some(scope_path) = self.scope_paths.lock().expect("scope paths").get(unit).cloned() else { return };
        for scope_dir in cgroup_dirs(&scope_path) {
            let dir = format!("{scope_dir}/{leaf}");
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    tracing::info!(
                        "{dir} still holds a process that outlived its worker; it stays until the scope stops"
                    );
                }
                // Not there (a hierarchy systemd did not place it in, or the
                // scope already stopped) or read-only: nothing to remove.
                Err(_) => {}
            }
        }
    }

    async fn start_scope(&self, link: &Link, pid: u32, p: &Placement) -> Result<(), zbus::Error> {
        let mut props: Vec<(String, OwnedVariant)> = vec![
            ("Description".into(), OwnedVariant::from(zbus::Str::from(p.description.clone()))),
            ("Slice".into(), OwnedVariant::from(zbus::Str::from(p.slice.clone()))),
            ("CollectMode".into(), OwnedVariant::from(zbus::Str::from("inactive-or-failed"))),
            ("Controller".into(), OwnedVariant::from(zbus::Str::from(link.controller.clone()))),
            ("PIDs".into(), OwnedVariant::try_from(Variant::from(vec![pid]))?),
            // systemd moves processes into a live scope (a group's later
            // workers, a scope joined after a restart) only if it is delegated.
            ("Delegate".into(), OwnedVariant::from(true)),
        ];
        props.extend(p.properties.iter().map(|prop| (prop.dbus_name.to_string(), prop.to_variant())));
        let job = timed(
            "StartTransientUnit",
            link.manager.start_transient_unit(p.unit.clone(), "fail".into(), props, Vec::new()),
        )
        .await?;
        let result = self.job_result(link, job.to_string()).await?;
        if result != "done" {
            return Err(zbus::Error::Failure(format!("{JOB_FAILED} {} finished with result {result:?}", p.unit)));
        }
        Ok(())
    }

    async fn job_result(&self, link: &Link, path: String) -> Result<String, zbus::Error> {
        let rx = {
            let mut jobs = link.jobs.lock().expect("jobs lock");
            if let Some(result) = jobs.unclaimed.pop(&path) {
                return Ok(result);
            }
            let (tx, rx) = oneshot::channel();
            jobs.waiting.insert(path.clone(), tx);
            rx
        };
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(zbus::Error::Failure(format!("the connection to systemd dropped while job {path} ran"))),
            Err(_) => {
                link.jobs.lock().expect("jobs lock").waiting.remove(&path);
                Err(zbus::Error::Failure(format!("job {path} did not finish within {CALL_TIMEOUT:?}")))
            }
        }
    }

    /// The size of the descriptor store of corrald's own unit
    /// (`FileDescriptorStoreMax=`); none when there is no service unit to
    /// ask about or no answer.
    pub async fn descriptor_store_max(&self) -> Option<u64> {
        let link = self.link().await.ok()?;
        let unit = timed("GetUnitByPID", link.manager.get_unit_by_pid(std::process::id())).await.ok()?;
        let proxy = zbus::Proxy::new(&link.conn, "org.freedesktop.systemd1", unit, "org.freedesktop.systemd1.Service")
            .await
            .ok()?;
        let max: u32 = timed("Get", proxy.get_property("FileDescriptorStoreMax")).await.ok()?;
        Some(u64::from(max))
    }

    /// Whether the job systemd runs on corrald's own unit is a restart: a
    /// SIGTERM then asks for a handover to the next corrald, not for the
    /// workers to stop. Any doubt (no unit, no job, no answer) is a no.
    pub async fn restart_pending(&self) -> bool {
        let Ok(link) = self.link().await else { return false };
        let Ok(unit) = timed("GetUnitByPID", link.manager.get_unit_by_pid(std::process::id())).await else {
            return false;
        };
        let Ok(proxy) = UnitProxy::builder(&link.conn).path(unit).cache_properties(CacheProperties::No).build().await
        else {
            return false;
        };
        let Ok((id, job)) = timed("Job", proxy.job()).await else { return false };
        if id == 0 {
            return false;
        }
        let Ok(job) = JobProxy::builder(&link.conn).path(job).cache_properties(CacheProperties::No).build().await
        else {
            return false;
        };
        matches!(timed("JobType", job.job_type()).await, Ok(kind) if kind == "restart")
    }

    /// Moves `pid` into a live delegated unit: its root, or its sub-cgroup
    /// `leaf`, which must exist (see [`Self::join_leaf`]).
    async fn attach(&self, link: &Link, unit: &str, leaf: Option<&str>, pid: u32) -> Result<(), String> {
        let subcgroup = leaf.map(|l| format!("/{l}")).unwrap_or_default();
        timed("AttachProcessesToUnit", link.manager.attach_processes_to_unit(unit.to_string(), subcgroup, vec![pid]))
            .await
            .map_err(|e| call_err(unit, "AttachProcessesToUnit", e))
    }

    /// The job systemd has queued or running for `unit`, if any.
    async fn pending_job(&self, link: &Link, unit: &str) -> Option<String> {
        let path = timed("GetUnit", link.manager.get_unit(unit.to_string())).await.ok()?;
        let proxy =
            UnitProxy::builder(&link.conn).path(path).cache_properties(CacheProperties::No).build().await.ok()?;
        let (id, job) = timed("Job", proxy.job()).await.ok()?;
        (id != 0).then(|| job.to_string())
    }

    async fn is_active(&self, link: &Link, unit: &str) -> bool {
        let Ok(Ok(path)) = tokio::time::timeout(CALL_TIMEOUT, link.manager.get_unit(unit.to_string())).await else {
            return false;
        };
        let Ok(proxy) = UnitProxy::builder(&link.conn).path(path).cache_properties(CacheProperties::No).build().await
        else {
            return false;
        };
        matches!(
            tokio::time::timeout(CALL_TIMEOUT, proxy.active_state()).await,
            Ok(Ok(state)) if state == "active" || state == "activating"
        )
    }

    /// Applies properties to a live unit (runtime only, as `systemctl
    /// set-property --runtime`) and returns what systemd now shows for each.
    pub async fn set_properties(&self, unit: &str, props: &[Property]) -> Result<Vec<(String, String)>, String> {
        let _permit = self.window.acquire().await.map_err(|e| format!("{unit}: {e}"))?;
        let link = self.link().await?;
        let wire: Vec<(String, OwnedVariant)> =
            props.iter().map(|p| (p.dbus_name.to_string(), p.to_variant())).collect();
        timed("SetUnitProperties", link.manager.set_unit_properties(unit.to_string(), true, wire))
            .await
            .map_err(|e| call_err(unit, "SetUnitProperties", e))?;
        let path = timed("GetUnit", link.manager.get_unit(unit.to_string()))
            .await
            .map_err(|e| call_err(unit, "GetUnit", e))?;
        let proxy = zbus::Proxy::new(&link.conn, "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Scope")
            .await
            .map_err(|e| call_err(unit, "reading properties", e))?;
        let mut shown = Vec::new();
        for p in props {
            let value: OwnedVariant = timed("Get", proxy.get_property(p.dbus_name))
                .await
                .map_err(|e| call_err(unit, &format!("reading {}", p.dbus_name), e))?;
            shown.push((p.dbus_name.to_string(), properties::render(&value)));
        }
        Ok(shown)
    }
}

/// Who the service manager is on the bus: any client of the bus may send a
/// signal that looks like systemd's (the bus policy allows signals to
/// anyone), so a `RequestStop` counts only from the owner of
/// `org.freedesktop.systemd1`. Its unique name changes when systemd
/// re-executes, so a sender that is not the one last seen is asked about.
#[derive(Clone)]
struct SystemdName {
    bus_daemon: zbus::fdo::DBusProxy<'static>,
    last_seen: Arc<Mutex<Option<String>>>,
}

impl SystemdName {
    fn was(&self, sender: &str) -> bool {
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).as_deref() == Some(sender)
    }

    /// The name's owner now, as the bus says; none if it does not answer.
    async fn owner(&self) -> Option<String> {
        let name = zbus::names::BusName::from_static_str("org.freedesktop.systemd1").ok()?;
        let owner = match tokio::time::timeout(CALL_TIMEOUT, self.bus_daemon.get_name_owner(name)).await {
            Ok(Ok(owner)) => owner.to_string(),
            _ => return None,
        };
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(owner.clone());
        Some(owner)
    }
}

fn bus_name(bus: Bus) -> &'static str {
    match bus {
        Bus::System => "system",
        Bus::User => "user",
    }
}

/// After systemd says `done`, the kernel is the judge: some hierarchy must
/// show the pid at the unit's root, or in its `leaf` (by
/// [`procfs::unit_places`]). Returns the unit's cgroup path.
fn confirm_in_unit(pid: u32, unit: &str, leaf: Option<&str>) -> Result<String, String> {
    let cgroups = procfs::cgroups(pid)
        .map_err(|e| format!("{unit}: cannot read /proc/{pid}/cgroup to confirm the placement: {e}"))?;
    let below = leaf.unwrap_or_default();
    let found = procfs::unit_places(&cgroups, unit).find(|p| p.below == below).map(|p| p.unit_path.to_string());
    found.ok_or_else(|| {
        let place = leaf.map_or_else(|| "it".to_string(), |l| format!("its sub-cgroup {l}"));
        format!("{unit}: systemd reported the placement done, but pid {pid} is not in {place}: {}", cgroups.trim())
    })
}

/// Every mounted cgroup hierarchy: its mount point and the cgroup path it
/// shows as its root (from /proc/self/mountinfo). Read once: corrald's own
/// mounts do not change under it, and workers' exits ask for them.
fn cgroup_mounts() -> &'static [(String, String)] {
    static MOUNTS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
        info.lines()
            .filter_map(|line| {
                let (mount, fs) = line.split_once(" - ")?;
                let fstype = fs.split(' ').next()?;
                if fstype != "cgroup" && fstype != "cgroup2" {
                    return None;
                }
                let mut fields = mount.split(' ');
                let root = fields.nth(3)?;
                let mount_point = fields.next()?;
                Some((unescape_mount(mount_point), unescape_mount(root)))
            })
            .collect()
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// `path` as seen below a hierarchy mounted with `root` ("" for the root
/// itself), or `None` when the mount does not reach it.
fn below_root<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Where a cgroup path is in each mounted hierarchy that holds it.
fn cgroup_dirs(path: &str) -> impl Iterator<Item = String> + '_ {
    cgroup_mounts()
        .iter()
        .filter_map(move |(mount_point, root)| below_root(path, root).map(|below| format!("{mount_point}{below}")))
}

/// The `cgroup.procs` files that would put a process in `pid`'s cgroup of
/// the unified hierarchy, where its resources are counted, wherever that
/// is mounted (on a hybrid host systemd's own v1 hierarchy, read-only in a
/// container, is left alone).
pub fn cgroup_procs_of(pid: u32) -> Result<Vec<std::path::PathBuf>, String> {
    let text = procfs::cgroups(pid).map_err(|e| format!("cannot read /proc/{pid}/cgroup: {e}"))?;
    let mut files = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if id != "0" || !controllers.is_empty() {
            continue;
        }
        for dir in cgroup_dirs(path) {
            let procs = std::path::Path::new(&dir).join("cgroup.procs");
            if procs.exists() && !files.contains(&procs) {
                files.push(procs);
            }
        }
    }
    if files.is_empty() {
        return Err(format!("no mounted cgroup hierarchy shows where pid {pid} is: {}", text.trim()));
    }
    Ok(files)
}

/// Creates `leaf` under the scope's cgroup in every hierarchy that has the
/// scope (the unified one, and on a hybrid host systemd's own v1 one).
fn make_leaf(scope_path: &str, leaf: &str) -> Result<(), String> {
    let mut made = false;
    let mut failures = Vec::new();
    for scope_dir in cgroup_dirs(scope_path) {
        if !std::path::Path::new(&scope_dir).is_dir() {
            continue;
        }
        match std::fs::create_dir(format!("{scope_dir}/{leaf}")) {
            Ok(()) => made = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => made = true,
            Err(e) => failures.push(format!("cannot create {scope_dir}/{leaf}: {e}")),
        }
    }
    if made || failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The controllers whose files make per-worker accounting: what the leaves
/// of a group scope get when the scope's cgroup offers them.
const LEAF_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// Enables the accounting controllers for the leaves of a group scope on
/// the unified (v2) hierarchy. The scope is delegated, so its own
/// `cgroup.subtree_control` is corrald's to write, and systemd leaves it be.
/// A host whose controllers sit on v1 hierarchies offers none here.
fn enable_leaf_controllers(scope_path: &str) -> Result<(), String> {
    let Some((mount_point, root)) =
        cgroup_mounts().iter().find(|(m, _)| std::fs::metadata(format!("{m}/cgroup.subtree_control")).is_ok())
    else {
        return Ok(());
    };
    let Some(below) = below_root(scope_path, root) else { return Ok(()) };
    let dir = format!("{mount_point}{below}");
    let offered = std::fs::read_to_string(format!("{dir}/cgroup.controllers"))
        .map_err(|e| format!("cannot read {dir}/cgroup.controllers: {e}"))?;
    let enabled = std::fs::read_to_string(format!("{dir}/cgroup.subtree_control")).unwrap_or_default();
    let wanted: Vec<String> = LEAF_CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c) && !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    std::fs::write(format!("{dir}/cgroup.subtree_control"), wanted.join(" "))
        .map_err(|e| format!("cannot write {} to {dir}/cgroup.subtree_control: {e}", wanted.join(" ")))
}

/// `/org/freedesktop/systemd1/unit/corral_2dweb_2escope` -> `corral-web.scope`.
fn unit_from_path(path: &str) -> Option<String> {
    let escaped = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The scope name of a group (`corral-web.scope`) or of one worker
/// (`corral-web-3.scope`).
pub fn scope_name(group: &str, index: Option<u32>) -> String {
    match index {
        Some(i) => format!("corral-{group}-{i}.scope"),
        None => format!("corral-{group}.scope"),
    }
}

/// The command target a scope stands for: `corral-web.scope` -> group
/// `web`, `corral-web-3.scope` -> worker `web-3`. A scope never stands for
/// every worker.
pub fn target_of_scope(unit: &str) -> Option<Target> {
    let name = unit.strip_prefix("corral-")?.strip_suffix(".scope")?;
    Target::parse(name).ok().filter(|t| *t != Target::All)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::SlotKey;

    #[test]
    fn unit_paths_unescape() {
        assert_eq!(
            unit_from_path("/org/freedesktop/systemd1/unit/corral_2dweb_2d3_2escope").as_deref(),
            Some("corral-web-3.scope")
        );
        assert_eq!(target_of_scope("corral-web-3.scope"), Some(Target::Worker(SlotKey::new("web", 3))));
        assert_eq!(target_of_scope("corral-web.scope"), Some(Target::Group("web".into())));
        assert_eq!(target_of_scope("other.scope"), None);
        assert_eq!(target_of_scope("corral-.scope"), None, "not everything");
        assert_eq!(target_of_scope("corral-all.scope"), None, "not everything");
    }

    /// zbus hands the bus's own errors over as `FDO`, systemd's as
    /// `MethodError`: a reply lost to a re-exec is worth another try either
    /// way, a refusal or a job that ran and failed is not.
    #[test]
    fn lost_replies_are_tried_again_and_refusals_are_not() {
        let fdo = |e: zbus::fdo::Error| zbus::Error::FDO(Box::new(e));
        let lost = fdo(zbus::fdo::Error::NoReply("Message recipient disconnected from message bus".into()));
        assert_eq!(error_name(&lost).as_deref(), Some("org.freedesktop.DBus.Error.NoReply"));
        assert!(transient(&lost));
        assert!(transient(&fdo(zbus::fdo::Error::ServiceUnknown("re-executing".into()))));
        assert!(transient(&fdo(zbus::fdo::Error::LimitsExceeded("busy".into()))));
        assert!(!transient(&fdo(zbus::fdo::Error::AccessDenied("no".into()))));
        assert!(transient(&zbus::Error::Failure("job /org/freedesktop/systemd1/job/7 did not finish".into())));
        assert!(!transient(&zbus::Error::Failure(format!(
            "{JOB_FAILED} corral-w.scope finished with result \"failed\""
        ))));
    }

    #[test]
    fn scope_paths_map_into_mounts_that_reach_them() {
        assert_eq!(below_root("/corral.slice/corral-web.scope", "/"), Some("/corral.slice/corral-web.scope"));
        assert_eq!(below_root("/corral.slice/corral-web.scope", "/corral.slice"), Some("/corral-web.scope"));
        assert_eq!(below_root("/corral.slice/corral-web.scope", "/corral.sl"), None);
        assert_eq!(below_root("/corral.slice/corral-web.scope", "/system.slice"), None);
        assert_eq!(unescape_mount("/sys/fs/cgroup/a\\040b"), "/sys/fs/cgroup/a b");
    }
}
