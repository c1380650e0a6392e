//! A real corrald on a private socket and config in a temporary directory,
//! talked to with the client library corralctl uses, and the demo workers'
//! config and work log.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use corral::ctl::Client;
use corral::proto::{self, request::Command as Cmd, response::Content};

use super::poll::{holding, log_tail, poll, poll_blocking, WithLog};
use super::{children_of, wait_child, KillOnDrop, CORRALD, DEMO, PATIENCE};

pub struct Corrald {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The demo workers' shared work log (`{log}` in a config).
    pub log: PathBuf,
    /// Where corrald's stderr, its own log, goes.
    pub stderr_file: PathBuf,
    pub child: Option<Child>,
    /// Extra environment for corrald.
    pub env: Vec<(String, String)>,
    /// A command that runs corrald (e.g. in another namespace), if any.
    pub wrapper: Vec<String>,
}

impl Corrald {
    /// Writes `groups` (TOML group tables, may use `{demo}` and `{log}`)
    /// under a config with a private socket and state directory.
    pub fn new(groups: &str) -> Corrald {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("corrald.sock");
        let log = dir.path().join("work.log");
        let config = dir.path().join("corral.toml");
        let stderr_file = dir.path().join("corrald.stderr");
        let c = Corrald { dir, config, socket, log, stderr_file, child: None, env: Vec::new(), wrapper: Vec::new() };
        c.write_config(groups);
        c
    }

    pub fn write_config(&self, groups: &str) {
        let text = format!(
            "socket = {:?}\nstate_directory = {:?}\n{}",
            self.socket.display().to_string(),
            self.dir.path().join("state").display().to_string(),
            groups.replace("{demo}", DEMO).replace("{log}", &self.log.display().to_string())
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Starts corrald and returns once its socket accepts a connection.
    pub fn start(&mut self) {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(CORRALD);
                c
            }
            None => Command::new(CORRALD),
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .env("CORRAL_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&self.stderr_file).unwrap()))
            .spawn()
            .expect("spawn corrald");
        let child = self.child.insert(child);
        let (socket, log) = (&self.socket, &self.stderr_file);
        poll_blocking("corrald to open its socket", PATIENCE, || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("corrald exited at start with {status}: {}", std::fs::read_to_string(log).unwrap_or_default());
            }
            std::os::unix::net::UnixStream::connect(socket).map(drop).map_err(|seen| WithLog { seen, log })
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("corrald was started").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
    }

    /// The end of corrald's log, for failure messages.
    pub fn stderr_tail(&self) -> String {
        log_tail(&self.stderr_file)
    }

    /// Fails the test if corrald has exited.
    pub fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("corrald was started");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("corrald exited with {status}:\n{}", self.stderr_tail());
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.expect("connect")
    }

    /// Sends one command and collects every response up to the final one.
    pub async fn call(&self, cmd: Cmd) -> (Vec<proto::Response>, proto::Response) {
        let mut client = self.client().await;
        let mut progress = Vec::new();
        let last = tokio::time::timeout(PATIENCE, client.call(cmd, |r| progress.push(r.clone())))
            .await
            .expect("no final answer in time")
            .expect("call");
        (progress, last)
    }

    pub async fn status(&self) -> proto::SupervisorStatus {
        match self.call(Cmd::Status(proto::StatusRequest {})).await.1.content {
            Some(Content::SupervisorStatus(s)) => s,
            other => panic!("status returned {other:?}"),
        }
    }

    /// Every worker, also when the listing came in parts (over 256 workers).
    pub async fn workers(&self) -> Vec<proto::WorkerInfo> {
        let (parts, last) = self.call(Cmd::ListWorkers(proto::ListWorkers { group: String::new() })).await;
        let mut all = Vec::new();
        for part in parts.into_iter().chain([last]) {
            match part.content {
                Some(Content::Workers(w)) => all.extend(w.workers),
                other => panic!("list workers returned {other:?}"),
            }
        }
        all
    }

    pub async fn pids(&self, group: &str) -> BTreeMap<String, u32> {
        self.workers().await.into_iter().filter(|w| w.group == group && w.pid != 0).map(|w| (w.id, w.pid)).collect()
    }

    /// [`poll`] within the test's patience, showing the end of corrald's
    /// log if it times out.
    pub async fn poll<T, E: Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        mut check: impl FnMut() -> F,
    ) -> T {
        let log = self.stderr_file.as_path();
        poll(what, PATIENCE, || {
            let attempt = check();
            async move { attempt.await.map_err(|seen| WithLog { seen, log }) }
        })
        .await
    }

    /// Polls status until `pred` holds of the named group.
    pub async fn wait_group(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&proto::GroupStatus) -> bool,
    ) -> proto::GroupStatus {
        let pred = &pred;
        self.poll(&format!("group {name} to be {what}"), || async move {
            let s = self.status().await;
            match s.groups.iter().find(|g| g.name == name) {
                Some(g) if pred(g) => Ok(g.clone()),
                _ => Err(format!("{:?}", s.groups)),
            }
        })
        .await
    }

    /// Polls status until `ready` workers of `group` are ready.
    pub async fn wait_ready(&self, group: &str, ready: u32) {
        self.wait_group(group, &format!("{ready} ready"), |g| g.ready >= ready).await;
    }

    /// Polls until `pred` holds of the worker list.
    pub async fn wait_workers(
        &self,
        what: &str,
        pred: impl Fn(&[proto::WorkerInfo]) -> bool,
    ) -> Vec<proto::WorkerInfo> {
        let pred = &pred;
        self.poll(what, || async move { holding(self.workers().await, |w| pred(w)) }).await
    }

    /// Polls the demo workers' work log until `pred` holds of it.
    pub async fn wait_work(&self, what: &str, pred: impl Fn(&WorkLog) -> bool) -> WorkLog {
        let pred = &pred;
        self.poll(what, || async move { holding(self.work_log(), pred) }).await
    }

    /// Polls corrald's own log until `pred` holds of it; the failure shows
    /// the log's end.
    pub async fn wait_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let pred = &pred;
        self.poll(what, || async move {
            if pred(&self.stderr()) {
                Ok(())
            } else {
                Err("not in corrald's log")
            }
        })
        .await
    }

    /// Asks for a soft shutdown and asserts it drained cleanly: a final OK,
    /// then corrald exiting 0.
    pub async fn shutdown_ok(&mut self) {
        let (_, last) = self.call(Cmd::Shutdown(proto::Shutdown {})).await;
        assert_eq!(last.status(), proto::Status::Ok, "{last:?}\n{}", self.stderr_tail());
        assert_eq!(self.wait_exit(), Some(0), "{}", self.stderr_tail());
    }

    /// Waits for corrald to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = KillOnDrop(self.child.take()?);
        wait_child(&mut child, "corrald").code()
    }

    pub fn work_log(&self) -> WorkLog {
        WorkLog::read(&self.log)
    }
}

impl Drop for Corrald {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // A test that failed half-way must not leave workers behind: those
        // still corrald's children are found while it lives and killed once
        // it can no longer restart them; demo workers are also found by
        // their work log, wherever they were reparented.
        let workers = children_of(child.id());
        let _ = Command::new("pkill").arg("-KILL").arg("-f").arg(self.log.display().to_string()).status();
        let _ = child.kill();
        let _ = child.wait();
        for pid in workers {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A group of `count` demo workers in protocol mode, run with `args` and
/// logging their units to the shared work log; `extra` is TOML for the
/// rest of the group's table.
pub fn demo_group(name: &str, count: u32, args: &[&str], extra: &str) -> String {
    let args: String = args.iter().map(|a| format!("{a:?}, ")).collect();
    format!(
        "[groups.{name}]\ncommand = \"{{demo}}\"\nargs = [{args}\"--log\", \"{{log}}\"]\ncount = {count}\n\
         stop_mode = \"protocol\"\n{extra}"
    )
}

/// The named group in a status, which must have it.
pub fn group<'a>(s: &'a proto::SupervisorStatus, name: &str) -> &'a proto::GroupStatus {
    s.groups.iter().find(|g| g.name == name).unwrap_or_else(|| panic!("no group {name} in {s:?}"))
}

/// The named worker in a listing, which must have it.
pub fn worker<'a>(w: &'a [proto::WorkerInfo], id: &str) -> &'a proto::WorkerInfo {
    w.iter().find(|w| w.id == id).unwrap_or_else(|| panic!("no worker {id} in {w:?}"))
}

/// The demo workers' shared log: which units started and finished.
#[derive(Debug, Default)]
pub struct WorkLog {
    pub started: Vec<(String, u32, u64)>,
    pub done: Vec<(String, u32, u64)>,
    pub exits: Vec<(String, u32)>,
}

impl WorkLog {
    pub fn read(path: &Path) -> WorkLog {
        WorkLog::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    fn parse(text: &str) -> WorkLog {
        let mut log = WorkLog::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["start", w, pid, unit] => {
                    log.started.push((w.to_string(), pid.parse().unwrap(), unit.parse().unwrap()))
                }
                ["done", w, pid, unit] => log.done.push((w.to_string(), pid.parse().unwrap(), unit.parse().unwrap())),
                ["exit", w, pid] => log.exits.push((w.to_string(), pid.parse().unwrap())),
                _ => {}
            }
        }
        log
    }

    /// Units that started and never completed, as (worker, pid, unit).
    pub fn unfinished(&self) -> Vec<(String, u32, u64)> {
        self.started.iter().filter(|s| !self.done.iter().any(|d| d.1 == s.1 && d.2 == s.2)).cloned().collect()
    }
}
