//! The command socket: binding it safely, framing, the caller's identity,
//! authorisation and audit, then handing each request to the supervisor.
//!
//! Every connection is its own task with its own writer, so one client that
//! sends garbage, stops reading, or waits on a slow user-name lookup never
//! delays another. A request passes, in this order: the allow-list (refused
//! and audited as `denied`), the audit record (a privileged request runs only
//! once its record is written), the supervisor. Its final answer passes the
//! audit again on the way out (`ok` or `failed`).

pub mod authorise;
pub mod peer;
pub mod validate;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use nix::fcntl::{Flock, FlockArg};
use prost::Message;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::codec::{Decoder, FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::audit::{self, Actor, ActorKind, Auditor, Record, RecordResult};
use crate::config::Limits;
use crate::events::{Events, Holder, Subscription};
use crate::frame;
use crate::proto::{self, event, request::Command, response::Content, Status};
use crate::sanitise::sanitise;
use crate::supervisor::{self, Handle, Outgoing, Replies, Reply, ReplyQueue, SocketCommand};
use authorise::{Described, Policy, Tier};
use peer::{Peer, UserNames};

/// What every connection checks before a request reaches the supervisor.
pub struct Access {
    pub policy: Policy,
    pub auditor: Option<Arc<Auditor>>,
    pub names: UserNames,
    pub limits: Limits,
    /// Where the outcome of each request that changes state is told, and
    /// what subscriptions read.
    pub events: Events,
}

/// Why the socket could not be bound. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another corrald is serving on {0} (its lock {1} is held); refusing to take over its socket")]
    Locked(PathBuf, PathBuf),
    #[error("another process is serving on {0}; refusing to replace a live socket")]
    Live(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("socket directory: {0}")]
    Directory(String),
    #[error("cannot serve the socket passed by the service manager: {0}")]
    Activation(String),
    #[error("cannot bind {path}: {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: io::Error },
}

/// A bound command socket. The lock file beside it is held for the life of
/// the listener, so a second corrald on the same path fails at once instead
/// of unlinking a socket that is in use.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    /// Identifies the socket file we created, so we only ever unlink our own;
    /// none for a socket the service manager handed us, which is its to keep.
    inode: Option<u64>,
    _lock: Option<Flock<File>>,
}

impl Listener {
    /// Binds `path` with mode 0600 from the first moment it exists: the
    /// socket is created inside a private 0700 directory, restricted, then
    /// renamed into place. The parent directory is created 0750 if missing.
    /// With `group`, that group is granted the socket (0660) and, if we
    /// create it, the directory.
    pub fn bind(path: &Path, group: Option<nix::unistd::Gid>) -> Result<Listener, BindError> {
        let io_err = |what: &'static str| move |source| BindError::Io { path: path.to_path_buf(), what, source };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)
                .map_err(io_err("create parent directory"))?;
            if group.is_some() {
                nix::unistd::chown(parent, None, group)
                    .map_err(|e| io_err("give the parent directory to command_socket_group")(e.into()))?;
            }
        }
        // Whoever may write to the directory could swap in a socket of
        // their own between our runs (and clients would talk to it), or
        // plant the lock: refuse it, as one another user made for us.
        crate::files::check_private_dir(parent).map_err(BindError::Directory)?;
        let lock = lock(path)?;

        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(BindError::Live(path.to_path_buf()));
                }
                tracing::info!(path = %path.display(), "replacing a stale socket nobody listens on");
            }
            Ok(_) => return Err(BindError::NotSocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect existing path")(e)),
        }

        let private = parent.join(format!(".corrald-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(io_err("create private directory"))?;
        let staged = private.join("sock");
        let result = (|| {
            let std_listener = std::os::unix::net::UnixListener::bind(&staged).map_err(io_err("bind"))?;
            let mode = match group {
                Some(gid) => {
                    nix::unistd::chown(&staged, None, Some(gid))
                        .map_err(|e| io_err("give the socket to command_socket_group")(e.into()))?;
                    0o660
                }
                None => 0o600,
            };
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).map_err(io_err("chmod"))?;
            std::fs::rename(&staged, path).map_err(io_err("move into place"))?;
            Ok(std_listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let std_listener = result?;
        let inode = std::fs::symlink_metadata(path).map_err(io_err("inspect bound socket"))?.ino();
        std_listener.set_nonblocking(true).map_err(io_err("set non-blocking"))?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err("register"))?;
        Ok(Listener { listener, path: path.to_path_buf(), inode: Some(inode), _lock: Some(lock) })
    }

    /// Serves the socket this corrald bound before an upgrade exec'd the
    /// new binary in its place (same process). It sits at `configured`,
    /// where it was renamed into place: the kernel still names it by the
    /// private path it was bound under, so that name is not asked. The
    /// lock, closed by the exec, is taken again, and the socket file stays
    /// this corrald's to remove.
    pub fn from_predecessor(fd: OwnedFd, configured: &Path) -> Result<Listener, BindError> {
        let lock = lock(configured)?;
        let inode = std::fs::symlink_metadata(configured)
            .map_err(|source| BindError::Io { path: configured.to_path_buf(), what: "inspect the socket", source })?
            .ino();
        let listener = listening(fd, configured)?;
        Ok(Listener { listener, path: configured.to_path_buf(), inode: Some(inode), _lock: Some(lock) })
    }

    /// Whether the socket file is this corrald's (it bound it), not the
    /// service manager's.
    pub fn owns_file(&self) -> bool {
        self.inode.is_some()
    }

    /// Serves the socket the service manager passed (socket activation):
    /// it must be a listening unix stream socket. Nothing is created, locked
    /// or unlinked; the socket unit owns the file.
    pub fn from_activation(fd: OwnedFd, configured: &Path) -> Result<Listener, BindError> {
        use nix::sys::socket::{getsockname, UnixAddr};
        let bad = |what: String| BindError::Activation(what);
        let addr: UnixAddr = getsockname(fd.as_raw_fd()).map_err(|e| bad(format!("not a unix socket: {e}")))?;
        let path = addr.path().map(Path::to_path_buf).ok_or_else(|| bad("it has no file system path".into()))?;
        if path != configured {
            tracing::warn!(
                passed = %path.display(),
                configured = %configured.display(),
                "serving the socket systemd passed, not the configured path; corralctl needs --socket"
            );
        }
        let listener = listening(fd, &path)?;
        Ok(Listener { listener, path, inode: None, _lock: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket itself, to pass to a new corrald across exec;
    /// the file is not unlinked.
    pub fn into_handover(mut self) -> io::Result<OwnedFd> {
        self.inode = None;
        self.listener.as_fd().try_clone_to_owned()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some(inode) = self.inode else { return };
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn reopen_audit(auditor: &Option<Arc<Auditor>>, reply: Reply) {
    let Some(auditor) = auditor else {
        reply.ok("no audit log files are configured".into(), None);
        return;
    };
    match auditor.reopen().await {
        Ok(()) => reply.ok("audit log files reopened".into(), None),
        Err(e) => reply.failure(e, None),
    }
}

/// Takes the lock file beside `path`, or says who holds it.
fn lock(path: &Path) -> Result<Flock<File>, BindError> {
    let lock_path = lock_path(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|source| BindError::Io { path: path.to_path_buf(), what: "open lock file", source })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| BindError::Locked(path.to_path_buf(), lock_path))
}

/// A passed descriptor as the listener it must be: a listening unix
/// stream socket, registered with the runtime.
fn listening(fd: OwnedFd, path: &Path) -> Result<UnixListener, BindError> {
    use nix::sys::socket::{getsockopt, sockopt, SockType};
    let bad = |what: String| BindError::Activation(what);
    let kind = getsockopt(&fd, sockopt::SockType).map_err(|e| bad(format!("not a socket: {e}")))?;
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| bad(format!("not a socket: {e}")))?;
    if kind != SockType::Stream || !listening {
        return Err(bad("it is not a listening stream socket (the socket unit needs ListenStream=)".into()));
    }
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    let io_err = |what: &'static str, source| BindError::Io { path: path.to_path_buf(), what, source };
    std_listener.set_nonblocking(true).map_err(|e| io_err("set non-blocking", e))?;
    UnixListener::from_std(std_listener).map_err(|e| io_err("register", e))
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Serves the socket until `stop` turns true, then gives every connection a
/// moment to finish what it was sent and write out its answers. New
/// connections meanwhile wait in the socket's backlog. Returns the
/// listener, still open, for an upgrade to pass on.
pub async fn serve(
    listener: Listener,
    handle: Handle,
    max_frame: usize,
    access: Arc<Access>,
    mut stop: watch::Receiver<bool>,
) -> Listener {
    let socket = listener.path().display().to_string();
    let mut connections = JoinSet::new();
    let seats = Arc::new(Mutex::new(Seats::default()));
    let mut next_session = 1u64;
    let mut accept_errors = Throttle::new("accept on the command socket failed");
    let mut refusals = Throttle::new("connection refused");
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    let session = next_session;
                    next_session += 1;
                    let peer = match peer::identify(&stream) {
                        Ok(peer) => peer,
                        Err(e) => {
                            tracing::warn!(session, "cannot read the peer's credentials ({e}); closing the connection");
                            continue;
                        }
                    };
                    let admin = access.policy.tier(&peer) == Ok(Tier::Admin);
                    let seat = match Seats::take(&seats, peer.uid, admin, &access.limits) {
                        Ok(seat) => seat,
                        Err(why) => {
                            refusals.warn(&format!("uid {}: {why}", peer.uid));
                            refuse(&stream, why);
                            continue;
                        }
                    };
                    let ctx = Session { id: session, peer, socket: socket.clone(), access: access.clone(), user: None };
                    connections.spawn(connection(stream, ctx, handle.clone(), max_frame, stop.clone(), seat));
                }
                Err(e) => {
                    // EMFILE and friends: the clients we have go on; new
                    // ones wait in the backlog while we back off, and the
                    // log gets one line per period, not one per attempt.
                    accept_errors.warn(&e.to_string());
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::time::sleep(backoff).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drain).await.is_err() {
        tracing::warn!("some clients did not take their last responses in time");
    }
    listener
}

/// Logs a recurring problem once, then at most once per period with how
/// many times it happened meanwhile, so a flood cannot flood the log.
struct Throttle {
    what: &'static str,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    const PERIOD: Duration = Duration::from_secs(10);

    fn new(what: &'static str) -> Throttle {
        Throttle { what, last: None, suppressed: 0 }
    }

    fn warn(&mut self, detail: &str) {
        if self.last.is_some_and(|t| t.elapsed() < Self::PERIOD) {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last = Some(std::time::Instant::now());
        if suppressed > 0 {
            tracing::warn!(
                "{}: {detail} (and {suppressed} more times in the last {}s)",
                self.what,
                Self::PERIOD.as_secs()
            );
        } else {
            tracing::warn!("{}: {detail}", self.what);
        }
    }
}

/// Connections in use, in all and by uid.
#[derive(Default)]
struct Seats {
    total: u32,
    by_uid: HashMap<u32, u32>,
}

/// One connection's place, given back when the connection ends.
struct Seat {
    seats: Arc<Mutex<Seats>>,
    uid: u32,
}

impl Seats {
    /// The last `admin_connection_reserve` places are kept for admins, so
    /// root can always get in to repair things while others flood the
    /// socket; no one uid may hold more than its share.
    fn take(seats: &Arc<Mutex<Seats>>, uid: u32, admin: bool, limits: &Limits) -> Result<Seat, String> {
        let mut s = seats.lock().unwrap_or_else(|e| e.into_inner());
        let max = limits.max_connections;
        if s.total >= max {
            return Err(format!("corrald serves at most {max} connections at once (limits.max_connections)"));
        }
        if !admin {
            let open = max.saturating_sub(limits.admin_connection_reserve);
            if s.total >= open {
                return Err(format!(
                    "{} of {max} connections are in use; the rest are reserved for admins (limits.admin_connection_reserve)",
                    s.total
                ));
            }
            let mine = s.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= limits.max_connections_per_uid {
                return Err(format!("uid {uid} already has {mine} connections open (limits.max_connections_per_uid)"));
            }
        }
        s.total += 1;
        *s.by_uid.entry(uid).or_default() += 1;
        Ok(Seat { seats: seats.clone(), uid })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut s = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                s.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Tells a refused client why, if its socket takes the few bytes at once;
/// a refusal never waits on the client.
fn refuse(stream: &UnixStream, why: String) {
    let response = failure(0, format!("connection refused: {why}"));
    let body = response.encode_to_vec();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let _ = stream.try_write(&frame);
}

fn failure(id: u64, message: String) -> proto::Response {
    proto::Response { id, status: Status::Failure as i32, message, content: None }
}

/// One connection's caller and what it may do.
struct Session {
    id: u64,
    peer: Peer,
    socket: String,
    access: Arc<Access>,
    /// The caller's user name, once looked up: Some(None) when it has none
    /// or the lookup did not answer.
    user: Option<Option<String>>,
}

/// Requests that change state still running, by the connection's
/// sequence number for them (not the client's id, which the client
/// chooses), waiting for their final answer to be recorded and told.
type Pending = Arc<Mutex<HashMap<u64, Started>>>;

/// A request that changes state, as its outcome is audited and told.
struct Started {
    /// Its audit record, when audit is configured.
    record: Option<Record>,
    /// Its event, the outcome still to fill in.
    event: proto::RequestDone,
    group: String,
    worker: String,
}

impl Session {
    async fn actor(&mut self) -> Actor {
        if self.user.is_none() {
            self.user = Some(self.access.names.name(self.peer.uid).await);
        }
        Actor {
            kind: ActorKind::Client,
            uid: Some(self.peer.uid),
            gid: Some(self.peer.gid),
            pid: self.peer.pid,
            user: self.user.clone().flatten(),
            comm: self.peer.comm.clone(),
            bus_name: None,
        }
    }

    async fn record(&mut self, request_id: u64, d: &Described, result: RecordResult, reason: String) -> Record {
        Record {
            session: self.id,
            request_id,
            group: d.group.clone(),
            worker: d.worker.clone(),
            command: d.command.to_string(),
            arguments: d.arguments.clone(),
            actor: self.actor().await,
            socket: self.socket.clone(),
            result,
            reason,
        }
    }

    /// Lets a request through, or says why not (and audits the refusal). A
    /// privileged one is audited before it is let through, and its record is kept under
    /// `seq` for its final answer to be audited too.
    async fn admit(&mut self, seq: u64, id: u64, command: &Command, pending: &Pending) -> Result<&'static str, String> {
        let described = authorise::describe(command);
        let name = described.command;
        let checked = validate::check(command, &self.access.limits)
            .map_err(|why| ("refused", why))
            .and_then(|()| self.access.policy.check(&self.peer, &described).map(drop).map_err(|why| ("denied", why)));
        if let Err((kind, why)) = checked {
            crate::metrics::count_request(name, kind, None);
            tracing::warn!(session = self.id, uid = self.peer.uid, "request {kind}: {}", sanitise(&why));
            if let Some(auditor) = self.access.auditor.clone() {
                let record = self.record(id, &described, RecordResult::Denied, why.clone()).await;
                if let Err(e) = auditor.write(record).await {
                    tracing::error!("the refusal could not be audited: {e}");
                }
            }
            return Err(format!("{kind}: {why}"));
        }
        if !described.privileged {
            return Ok(name);
        }
        let mut record = None;
        if let Some(auditor) = self.access.auditor.clone() {
            let accepted = self.record(id, &described, RecordResult::Accepted, String::new()).await;
            if let Err(e) = auditor.write(accepted.clone()).await {
                let why = audit::refusal(&e);
                crate::metrics::count_request(name, "failed", None);
                tracing::warn!(session = self.id, uid = self.peer.uid, "request {}: {why}", described.command);
                return Err(why);
            }
            record = Some(accepted);
        }
        let event = proto::RequestDone {
            command: described.command.to_string(),
            arguments: described.arguments,
            uid: self.peer.uid,
            ..Default::default()
        };
        let (group, worker) = (described.group.unwrap_or_default(), described.worker.unwrap_or_default());
        pending.lock().unwrap_or_else(|e| e.into_inner()).insert(seq, Started { record, event, group, worker });
        Ok(name)
    }
}

/// Records the outcome of a request that changed state as its final answer
/// goes out, then tells subscribers. The request has run, so an outcome
/// that cannot be recorded changes nothing of the answer but its message,
/// which says so.
async fn audit_final(
    auditor: &Option<Arc<Auditor>>,
    events: &Events,
    pending: &Pending,
    seq: u64,
    response: &mut proto::Response,
) {
    let Some(started) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&seq) else { return };
    let result = if response.status() == Status::Ok { RecordResult::Ok } else { RecordResult::Failed };
    if let (Some(auditor), Some(mut record)) = (auditor, started.record) {
        record.result = result;
        record.reason = response.message.clone();
        if let Err(e) = auditor.write(record).await {
            tracing::error!("the outcome of request {} could not be audited: {e}", response.id);
            let note = format!("the audit record of this outcome could not be written: {e}");
            response.message = if response.message.is_empty() { note } else { format!("{}; {note}", response.message) };
        }
    }
    let outcome = if result == RecordResult::Ok { "ok" } else { "failed" };
    let event = proto::RequestDone { outcome: outcome.into(), message: response.message.clone(), ..started.event };
    events.emit(&started.group, &started.worker, event::Kind::Request(event));
}

/// The ids of one connection's requests that have no final answer yet,
/// and wake-ups for the reader and the subscriptions when answers have
/// gone out.
#[derive(Default)]
struct Flow {
    /// Each with when it arrived and its command, for the metrics.
    in_flight: Mutex<HashMap<u64, (Instant, &'static str)>>,
    wake: Notify,
    sent: Notify,
}

impl Flow {
    fn in_flight(&self) -> MutexGuard<'_, HashMap<u64, (Instant, &'static str)>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A frame codec that remembers when the frame it is still waiting for
/// began, so a client that sends half a frame and stalls can be cut off.
struct Timed {
    codec: LengthDelimitedCodec,
    started: Option<Instant>,
}

impl Decoder for Timed {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let frame = self.codec.decode(src)?;
        if src.is_empty() {
            self.started = None;
        } else if frame.is_some() || self.started.is_none() {
            self.started = Some(Instant::now());
        }
        Ok(frame)
    }
}

/// A response the client can take: one over the size limit is replaced by
/// a short one saying so (a final answer stays final, as a FAILURE).
fn fit(response: proto::Response, len: usize, max: usize) -> proto::Response {
    if len <= max {
        return response;
    }
    let status = if response.status() == Status::Processing { Status::Processing } else { Status::Failure };
    let message = format!(
        "the response ({len} bytes) is over the response size limit ({max} bytes, limits.max_response_size) and was \
         left out; the request itself was carried out"
    );
    proto::Response { id: response.id, status: status as i32, message, content: None }
}

/// Sends the answers of one connection in order, auditing each final
/// answer before it goes out. Returns the most bytes that waited at once.
async fn write_responses(
    mut queue: ReplyQueue,
    mut writer: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    flow: Arc<Flow>,
    access: Arc<Access>,
    pending: Pending,
) -> usize {
    let (auditor, max_response) = (&access.auditor, access.limits.max_response_size);
    let mut connected = true;
    let mut peak = 0;
    while let Some(Outgoing { seq, response, len }) = queue.recv().await {
        peak = peak.max(queue.queued() + len);
        let mut response = fit(response, len, max_response);
        if response.status() != Status::Processing && seq != 0 {
            audit_final(auditor, &access.events, &pending, seq, &mut response).await;
            if let Some((arrived, command)) = flow.in_flight().remove(&response.id) {
                let result = if response.status() == Status::Ok { "ok" } else { "failed" };
                crate::metrics::count_request(command, result, Some(arrived.elapsed()));
            }
        }
        if let (Some(Content::SupervisorStatus(status)), Some(auditor)) = (&mut response.content, auditor) {
            status.audit_journal_missed = auditor.journal_missed();
        }
        // A client that hangs up does not end the work it asked for, nor
        // its audit: outcomes are still recorded after the connection is gone.
        if connected && writer.send(frame::encode(&response)).await.is_err() {
            connected = false;
        }
        flow.wake.notify_one();
        flow.sent.notify_waiters();
    }
    peak
}

/// The end of a subscription whose client stopped sending: like every
/// request it gets its final answer, which a client that closed never reads.
fn hung_up(reply: Reply) {
    reply.ok("the connection is closing: the event stream ends".into(), None);
}

/// Bytes of answers a subscription lets wait for the client before it
/// takes its next event: past them, events wait in the subscription's
/// bounded queue, where a client that does not read costs nothing more.
const EVENT_BYTES_AHEAD: usize = 64 << 10;

/// Starts a subscription: "subscribed" at once (nothing emitted after it
/// is missed), then its events, until corrald closes the broadcaster or
/// the connection stops reading requests (`hangup`); either way a final OK.
fn subscribe(
    request: proto::Subscribe,
    reply: Reply,
    replies: Replies,
    flow: Arc<Flow>,
    events: &Events,
    holder: Holder,
) -> Option<oneshot::Sender<()>> {
    let filter = match crate::target::Target::parse(&request.target) {
        Ok(filter) => filter,
        Err(why) => {
            reply.failure(format!("invalid target: {why}"), None);
            return None;
        }
    };
    let subscription = match events.subscribe(filter, holder, request.replay as usize) {
        Ok(subscription) => subscription,
        Err(why) => {
            reply.failure(why, None);
            return None;
        }
    };
    reply.processing("subscribed".into(), None);
    let (hangup_tx, hangup) = oneshot::channel();
    tokio::spawn(forward(subscription, reply, replies, flow, hangup));
    Some(hangup_tx)
}

async fn forward(
    mut subscription: Subscription,
    reply: Reply,
    replies: Replies,
    flow: Arc<Flow>,
    mut hangup: oneshot::Receiver<()>,
) {
    loop {
        loop {
            let sent = flow.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            if replies.queued() < EVENT_BYTES_AHEAD {
                break;
            }
            tokio::select! {
                _ = sent => {}
                _ = &mut hangup => return hung_up(reply),
            }
        }
        tokio::select! {
            event = subscription.next() => match event {
                Some(event) => reply.processing(String::new(), Some(Content::Event(event))),
                None => {
                    reply.ok("corrald is stopping: the event stream ends".into(), None);
                    return;
                }
            },
            _ = &mut hangup => return hung_up(reply),
        }
    }
}

async fn connection(
    stream: UnixStream,
    mut session: Session,
    handle: Handle,
    max_frame: usize,
    mut stop: watch::Receiver<bool>,
    _seat: Seat,
) {
    let limits = session.access.limits.clone();
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, Timed { codec: frame::codec(max_frame), started: None });
    let writer = FramedWrite::new(write, frame::codec(limits.max_response_size));
    let (tx, queue) = Replies::channel();
    let pending: Pending = Arc::default();
    let flow = Arc::new(Flow::default());
    let writer_task =
        tokio::spawn(write_responses(queue, writer, flow.clone(), session.access.clone(), pending.clone()));
    // One per subscription: dropped when the connection ends, which ends
    // the subscription.
    let mut hangups = Vec::new();
    let session_id = session.id;
    let mut next_seq = 1u64;
    let max_in_flight = limits.max_requests_in_flight as usize;
    // One timer for the connection's life, moved only when it fires: a
    // stalled frame is cut off within twice frame_timeout, and a busy
    // connection pays nothing per request for the check.
    let check = tokio::time::sleep(limits.frame_timeout);
    tokio::pin!(check);
    loop {
        // Backpressure: a client whose answers are not taken is not read
        // from, so what it can make corrald hold is bounded.
        while flow.in_flight().len() >= max_in_flight || tx.queued() >= limits.max_queued_response_bytes {
            tokio::select! {
                _ = flow.wake.notified() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
        // Once stopping, a request the client already sent is still served;
        // a connection quiet for a moment is closed.
        let frame = if *stop.borrow() {
            match tokio::time::timeout(Duration::from_millis(200), reader.next()).await {
                Ok(frame) => frame,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                frame = reader.next() => frame,
                _ = stop.changed() => continue,
                _ = &mut check => {
                    let started = reader.decoder().started;
                    let next = started.unwrap_or_else(Instant::now) + limits.frame_timeout;
                    check.as_mut().reset(next.into());
                    if started.is_some_and(|s| s.elapsed() >= limits.frame_timeout) {
                        let why = format!(
                            "a frame was left unfinished for {} (limits.frame_timeout); closing the connection",
                            humantime::format_duration(limits.frame_timeout)
                        );
                        tracing::debug!(session = session_id, "{why}");
                        tx.send(0, failure(0, why));
                        break;
                    }
                    continue;
                }
            }
        };
        let request = match frame {
            None => break,
            Some(Ok(bytes)) => match proto::Request::decode(bytes) {
                Ok(request) => request,
                Err(e) => {
                    tx.send(0, failure(0, format!("undecodable request: {e}; closing the connection")));
                    break;
                }
            },
            Some(Err(e)) => {
                // The codec fails in two ways: a length over the maximum
                // (InvalidData), or the stream ending inside a frame.
                let what = if e.kind() == io::ErrorKind::InvalidData {
                    format!("bad frame: {e} (the maximum is {max_frame} bytes)")
                } else {
                    "truncated frame (the connection ended inside it)".to_string()
                };
                tracing::debug!(session = session_id, "{what}");
                tx.send(0, failure(0, format!("{what}; closing the connection")));
                break;
            }
        };
        let id = request.id;
        if id == 0 {
            let why = "request id 0 is reserved for errors of the connection itself; closing the connection";
            tx.send(0, failure(0, why.into()));
            break;
        }
        let Some(command) = request.command else {
            tx.send(0, failure(id, "unknown or missing command".into()));
            continue;
        };
        if flow.in_flight().contains_key(&id) {
            let why = format!("request id {id} is already in flight on this connection; refused, nothing was done");
            tx.send(0, failure(id, why));
            continue;
        }
        tracing::trace!(session = session_id, id, "request");
        let seq = next_seq;
        next_seq += 1;
        let arrived = Instant::now();
        let name = match session.admit(seq, id, &command, &pending).await {
            Ok(name) => name,
            Err(why) => {
                tx.send(0, failure(id, why));
                continue;
            }
        };
        flow.in_flight().insert(id, (arrived, name));
        let reply = Reply::new(id, seq, tx.clone());
        match supervisor::Request::from_command(command) {
            Ok(request) => handle.request(request, reply),
            Err(SocketCommand::AuditReopen) => reopen_audit(&session.access.auditor, reply).await,
            Err(SocketCommand::Subscribe(request)) => {
                let admin = session.access.policy.tier(&session.peer) == Ok(Tier::Admin);
                let holder = Holder { uid: session.peer.uid, admin };
                hangups.extend(subscribe(request, reply, tx.clone(), flow.clone(), &session.access.events, holder));
            }
        }
    }
    drop(hangups);
    // Responses to requests still in flight keep flowing until the
    // supervisor drops its senders; then the writer ends and the socket closes.
    drop(tx);
    let peak = writer_task.await.unwrap_or(0);
    // A client that made answers pile up leaves freed memory behind in the
    // allocator's arenas; give it back rather than keep the peak for good.
    if peak > RETURN_MEMORY_AFTER {
        let _ = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory of the allocator.
            unsafe { nix::libc::malloc_trim(0) }
        })
        .await;
    }
}

/// Queued answers past which a closing connection's memory is handed back.
const RETURN_MEMORY_AFTER: usize = 1 << 20;
