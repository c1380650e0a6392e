//! Client requests: each is answered at once from the fleet, or turned
//! into an orchestration task that answers as the workers report.

use std::path::{Path, PathBuf};

use super::actor::Orchestration;
use super::fleet::ScalePlan;
use super::{orchestrate, state, Reply, Supervisor};
use crate::proto::{self, request::Command, response::Content};
use crate::systemd;
use crate::target::{SlotKey, Target};

/// How many workers one listing response carries at most: a few dozen KiB.
const WORKERS_PER_RESPONSE: usize = 256;

/// The requests the supervisor serves: every command of the protocol but
/// those the command socket serves itself, so the actor has no branch for
/// a command that never reaches it.
#[derive(Debug)]
pub enum Request {
    Status,
    Metrics,
    ListWorkers(proto::ListWorkers),
    Stop(proto::Stop),
    Start(proto::Start),
    Restart(proto::Restart),
    Scale(proto::Scale),
    ReloadConfig,
    SaveState(proto::SaveState),
    LoadState(proto::LoadState),
    Shutdown,
    Limit(proto::Limit),
    Upgrade(proto::Upgrade),
}

/// The commands the command socket serves without the supervisor.
#[derive(Debug)]
pub enum SocketCommand {
    /// The audit trail belongs to the socket layer.
    AuditReopen,
    /// A subscription is a stream the socket layer feeds from the events
    /// broadcaster; the actor only emits into it.
    Subscribe(proto::Subscribe),
}

impl Request {
    /// Sorts a command: the supervisor's, or the socket's own.
    pub fn from_command(command: Command) -> Result<Request, SocketCommand> {
        Ok(match command {
            Command::Status(_) => Request::Status,
            Command::Metrics(_) => Request::Metrics,
            Command::ListWorkers(r) => Request::ListWorkers(r),
            Command::Stop(r) => Request::Stop(r),
            Command::Start(r) => Request::Start(r),
            Command::Restart(r) => Request::Restart(r),
            Command::Scale(r) => Request::Scale(r),
            Command::ReloadConfig(_) => Request::ReloadConfig,
            Command::SaveState(r) => Request::SaveState(r),
            Command::LoadState(r) => Request::LoadState(r),
            Command::Shutdown(_) => Request::Shutdown,
            Command::Limit(r) => Request::Limit(r),
            Command::Upgrade(r) => Request::Upgrade(r),
            Command::AuditReopen(_) => return Err(SocketCommand::AuditReopen),
            Command::Subscribe(r) => return Err(SocketCommand::Subscribe(r)),
        })
    }

    /// Only reads the supervisor's state.
    pub fn read_only(&self) -> bool {
        matches!(self, Request::Status | Request::Metrics | Request::ListWorkers(_))
    }
}

impl Supervisor {
    pub(super) fn on_request(&mut self, request: Request, reply: Reply) {
        if self.fleet.shutting_down()
            && !matches!(request, Request::Status | Request::Metrics | Request::ListWorkers(_) | Request::Stop(_))
        {
            reply.failure("corrald is shutting down".into(), None);
            return;
        }
        match request {
            Request::Status => reply.ok(String::new(), Some(Content::SupervisorStatus(self.status()))),
            Request::Metrics => {
                let text = self.metrics();
                reply.ok(String::new(), Some(Content::Metrics(proto::MetricsText { text })))
            }
            Request::ListWorkers(req) => self.list_workers(&req.group, reply),
            Request::Stop(req) => {
                let Some((target, keys)) = self.resolve(&req.target, &reply) else { return };
                let layers = if target == Target::All { self.fleet.stop_layers(keys) } else { vec![keys] };
                let timeout = self.fleet.stop_timeout(&layers);
                let what = if target == Target::All { "all workers".to_string() } else { target.to_string() };
                orchestrate::stop(self.handle(), reply, layers, req.hard, timeout, what);
            }
            Request::Start(req) => {
                let Some((_, keys)) = self.resolve(&req.target, &reply) else { return };
                let down = |k: &SlotKey| self.fleet.slot(k).is_some_and(|s| !s.state.is_running());
                let keys: Vec<SlotKey> = keys.into_iter().filter(down).collect();
                let timeout = self.fleet.ready_timeout(&keys);
                orchestrate::start(self.handle(), reply, keys, timeout);
            }
            Request::Restart(req) => {
                let Some((_, keys)) = self.resolve(&req.target, &reply) else { return };
                let batch = match (req.rolling, req.max_unavailable) {
                    (true, 0) => {
                        keys.first().and_then(|k| self.fleet.group(&k.group)).map_or(1, |g| g.config.max_unavailable)
                    }
                    (true, n) => n,
                    (false, _) => keys.len().max(1) as u32,
                };
                let stop_timeout = self.fleet.stop_timeout(std::slice::from_ref(&keys));
                let ready_timeout = self.fleet.ready_timeout(&keys);
                orchestrate::restart(self.handle(), reply, keys, batch as usize, stop_timeout, ready_timeout);
            }
            Request::Scale(req) => self.scale(&req.group, req.count, reply),
            Request::ReloadConfig => self.reload(reply),
            Request::SaveState(req) => self.save_state(&req.path, reply),
            Request::LoadState(req) => self.load_state(&req.path, reply),
            Request::Shutdown => self.shutdown(reply),
            Request::Limit(req) => self.limit(&req.target, &req.properties, reply),
            Request::Upgrade(req) => self.upgrade(&req.binary, reply),
        }
    }

    /// The slots a request's target names; `None` once the failure is
    /// answered.
    fn resolve(&self, text: &str, reply: &Reply) -> Option<(Target, Vec<SlotKey>)> {
        let resolved = Target::parse(text)
            .map_err(|why| format!("invalid target: {why}"))
            .and_then(|target| Ok((target.clone(), self.fleet.resolve(&target)?)));
        match resolved {
            Ok(found) => Some(found),
            Err(why) => {
                reply.failure(why, None);
                None
            }
        }
    }

    /// A big fleet's listing comes in parts, so no one answer outgrows what
    /// a client must accept; the final one carries the last part.
    fn list_workers(&self, group: &str, reply: Reply) {
        let mut workers = match self.fleet.workers(group, &self.usage()) {
            Ok(workers) => workers,
            Err(e) => return reply.failure(e, None),
        };
        while workers.len() > WORKERS_PER_RESPONSE {
            let rest = workers.split_off(WORKERS_PER_RESPONSE);
            let part = std::mem::replace(&mut workers, rest);
            reply.processing(String::new(), Some(Content::Workers(proto::WorkerList { workers: part })));
        }
        reply.ok(String::new(), Some(Content::Workers(proto::WorkerList { workers })))
    }

    fn scale(&mut self, name: &str, count: u32, reply: Reply) {
        let scopes = self.systemd.is_some();
        match self.fleet.scale(name, count, &self.config.limits, scopes) {
            Err(why) => reply.failure(why, None),
            Ok(ScalePlan::Waits) => {
                reply.ok(format!("{name} scaled to {count}; it waits for the groups it starts after"), None)
            }
            Ok(ScalePlan::Start { keys, ready_timeout }) => {
                orchestrate::start(self.handle(), reply, keys, ready_timeout)
            }
            Ok(ScalePlan::Stop { keys, stop_timeout }) => {
                let what = format!("{name} scaled down");
                orchestrate::stop(self.handle(), reply, vec![keys], false, stop_timeout, what);
            }
        }
    }

    /// Begins the soft shutdown: no more starts or restarts, every worker
    /// drained in reverse start order, then the run loop ends.
    fn shutdown(&mut self, reply: Reply) {
        if !self.fleet.begin_shutdown() {
            reply.failure("a shutdown is already in progress".into(), None);
            return;
        }
        self.notifier.stopping();
        tracing::info!("soft shutdown: draining every worker");
        self.tell_corrald("shutting_down");
        let keys = self.fleet.resolve(&Target::All).unwrap_or_default();
        let layers = self.fleet.stop_layers(keys);
        let timeout = self.fleet.stop_timeout(&layers);
        orchestrate::shutdown(self.handle(), reply, layers, timeout, self.fleet.running());
    }

    /// Changes resource properties of live scopes at runtime and reports
    /// what systemd shows afterwards. Later scopes of the group get them too.
    fn limit(&mut self, target: &str, assignments: &[String], reply: Reply) {
        let Some(sd) = self.systemd.clone() else {
            reply.failure("scopes are not active (no systemd service manager): there is nothing to limit".into(), None);
            return;
        };
        let mut props = Vec::new();
        for a in assignments {
            let parsed = a
                .split_once('=')
                .ok_or_else(|| format!("{a:?} is not KEY=VALUE"))
                .and_then(|(k, v)| systemd::properties::parse(k.trim(), v));
            match parsed {
                Ok(p) => props.push(p),
                Err(e) => return reply.failure(e, None),
            }
        }
        if props.is_empty() {
            return reply.failure("name at least one KEY=VALUE".into(), None);
        }
        // The empty target, everything on the wire, is refused here as too
        // broad a default; `all` says it on purpose.
        if target.is_empty() {
            return reply.failure("name a group or a worker to limit".into(), None);
        }
        let Some((_, keys)) = self.resolve(target, &reply) else { return };
        let mut units: Vec<String> = Vec::new();
        for key in &keys {
            let Some(group) = self.fleet.group_mut(&key.group) else { continue };
            for p in &props {
                group.limits.retain(|l| l.dbus_name != p.dbus_name);
                group.limits.push(p.clone());
            }
            let unit = group.scope_unit(key.index);
            let running = group.slots.get(&key.index).is_some_and(|s| s.state.is_running());
            if running && !units.contains(&unit) {
                units.push(unit);
            }
        }
        tokio::spawn(async move {
            let mut lines = Vec::new();
            for unit in &units {
                match sd.set_properties(unit, &props).await {
                    Ok(shown) => {
                        let values: Vec<String> = shown.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        lines.push(format!("{unit}: {}", values.join(" ")));
                    }
                    Err(e) => return reply.failure(e, None),
                }
            }
            if lines.is_empty() {
                reply.ok("no live scope to change; the limits apply to scopes created from now on".into(), None);
            } else {
                reply.ok(lines.join("\n"), None);
            }
        });
    }

    /// Where a state file named in a request lives: a plain name in the
    /// `saved` directory under the state directory (the only form below
    /// the admin tier), a path as given. The directory is made and checked
    /// by [`StateFile::prepare`], off the actor.
    fn state_file(&self, name: &str) -> Result<StateFile, String> {
        if name.contains('/') {
            let path = PathBuf::from(name);
            if !path.is_absolute() {
                return Err("a state path must be absolute".into());
            }
            return Ok(StateFile { path, private_dir: None });
        }
        let dir = self.config.state_directory.join("saved");
        Ok(StateFile { path: dir.join(name), private_dir: Some(dir) })
    }

    /// Writes the scales and stopped workers, off the actor.
    fn save_state(&self, name: &str, reply: Reply) {
        let saved = self.fleet.saved_state();
        let file = match self.state_file(name) {
            Ok(file) => file,
            Err(e) => return reply.failure(e, None),
        };
        tokio::spawn(async move {
            let shown = crate::files::shown(&file.path);
            match tokio::task::spawn_blocking(move || state::save(file.prepare()?, &saved)).await {
                Ok(Ok(())) => reply.ok(format!("state saved to {shown}"), None),
                Ok(Err(e)) => reply.failure(e, None),
                Err(e) => reply.failure(format!("saving state failed: {e}"), None),
            }
        });
    }

    /// Reads a state file off the actor (it may be slow or large), then
    /// applies it on the actor.
    fn load_state(&self, name: &str, reply: Reply) {
        let file = match self.state_file(name) {
            Ok(file) => file,
            Err(e) => return reply.failure(e, None),
        };
        let (handle, max) = (self.handle(), self.config.limits.max_state_file_size);
        tokio::spawn(async move {
            let path = file.path.clone();
            let read = tokio::task::spawn_blocking(move || state::load(file.prepare()?, max)).await;
            match read {
                Ok(Ok(saved)) => handle.orchestrate(Orchestration::ApplyState { saved, path, reply }),
                Ok(Err(e)) => reply.failure(e, None),
                Err(e) => reply.failure(format!("loading state failed: {e}"), None),
            }
        });
    }
}

/// A state file, and the private directory it must be in, if any.
struct StateFile {
    path: PathBuf,
    private_dir: Option<PathBuf>,
}

impl StateFile {
    /// Makes sure the directory exists and no one else can write it.
    fn prepare(&self) -> Result<&Path, String> {
        if let Some(dir) = &self.private_dir {
            crate::files::private_dir(dir, 0o700)?;
        }
        Ok(&self.path)
    }
}
