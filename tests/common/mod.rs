//! Shared harness for the integration tests: runs a real corrald on a
//! private socket and config in a temporary directory, and talks to it with
//! the same client library corralctl uses.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral::ctl::Client;
use corral::proto::{self, request::Command as Cmd, response::Content};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

pub const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");
pub const CORRALCTL: &str = env!("CARGO_BIN_EXE_corralctl");
pub const DEMO: &str = env!("CARGO_BIN_EXE_corral-demo-worker");

/// How long any wait in a test may take before the test fails. Generous:
/// these are bounds on broken behaviour, not timing claims.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Corrald {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
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
        let c = Corrald { dir, config, socket, log, child: None, env: Vec::new(), wrapper: Vec::new() };
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

    /// Starts corrald and returns once its socket answers a status request.
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
            .stderr(Stdio::from(std::fs::File::create(self.dir.path().join("corrald.stderr")).unwrap()))
            .spawn()
            .expect("spawn corrald");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("corrald exited at start with {status}: {}", self.stderr());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "corrald did not open its socket: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("corrald.stderr")).unwrap_or_default()
    }

    /// The end of corrald's log, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
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

    /// Polls status until `ready` workers of `group` are ready.
    pub async fn wait_ready(&self, group: &str, ready: u32) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.status().await;
            let g = s.groups.iter().find(|g| g.name == group).expect("group in status");
            if g.ready >= ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{group}: only {} of {ready} ready: {g:?}\ncorrald's log ends:\n{}",
                g.ready,
                self.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `pred` holds of the worker list.
    pub async fn wait_workers(
        &self,
        what: &str,
        pred: impl Fn(&[proto::WorkerInfo]) -> bool,
    ) -> Vec<proto::WorkerInfo> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let w = self.workers().await;
            if pred(&w) {
                return w;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {w:?}\ncorrald's log ends:\n{}",
                self.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        let mut child = self.child.take()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("corrald did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn work_log(&self) -> WorkLog {
        WorkLog::parse(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Corrald {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A test that failed half-way must not leave workers behind.
            let _ = Command::new("pkill").arg("-KILL").arg("-f").arg(self.log.display().to_string()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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

pub fn pid_alive(pid: u32) -> bool {
    // A reaped pid is gone; a zombie would still answer kill(0), so check /proc state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn stop(target: &str, hard: bool) -> Cmd {
    Cmd::Stop(proto::Stop { target: target.into(), hard })
}

pub fn final_failures(resp: &proto::Response) -> Vec<proto::WorkerFailure> {
    match &resp.content {
        Some(Content::Outcome(o)) => o.failures.clone(),
        _ => Vec::new(),
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The uid and gid of the outside caller in tests of who may do what:
/// nobody and nogroup on Debian.
pub const OUTSIDER: (u32, u32) = (65534, 65534);

/// Tests that act as another user need root to become one; CI runs as root.
pub fn require_root(why: &str) {
    assert!(nix::unistd::geteuid().is_root(), "this test must run as root: {why} (CI runs the tests as root)");
}

impl Corrald {
    /// The config line that grants the outsider's group the socket; the
    /// test's directory is opened for traversal so the outsider can reach it.
    pub fn share_with_outsider(&self) -> String {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod test dir");
        "command_socket_group = \"nogroup\"\n".to_string()
    }

    /// Runs corralctl on this corrald's socket as `uid`/`gid` with no
    /// supplementary groups: whether it exited 0, and its output.
    pub fn ctl_as(&self, (uid, gid): (u32, u32), args: &[&str]) -> (bool, String) {
        require_root("running corralctl as another user");
        let (uid, gid) = (uid.to_string(), gid.to_string());
        let mut all = vec!["--reuid", &uid, "--regid", &gid, "--clear-groups", CORRALCTL, "--socket"];
        let socket = path_str(&self.socket);
        all.push(&socket);
        all.extend_from_slice(args);
        run("setpriv", &all)
    }
}

/// Runs a command to its end: whether it succeeded, and its stdout then stderr.
pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `systemctl show -p PROP --value UNIT`
pub fn show(unit: &str, prop: &str) -> String {
    let (_, text) = run("systemctl", &["show", "-p", prop, "--value", unit]);
    text.trim().to_string()
}

/// The pids `systemctl status` lists in the unit's cgroup tree.
pub fn status_pids(unit: &str) -> Vec<u32> {
    let (_, text) = run("systemctl", &["status", "--no-pager", "-l", unit]);
    let mut pids: Vec<u32> = text
        .lines()
        .filter_map(|l| {
            let tree = l.trim_start().trim_start_matches(['├', '└', '─', '│', ' ']);
            (tree.len() < l.trim_start().len()).then(|| tree.split_whitespace().next()?.parse().ok()).flatten()
        })
        .collect();
    pids.sort();
    pids
}

// ---------------------------------------------------------------------------
// Raw frames on the command socket, for clients that misbehave
// ---------------------------------------------------------------------------

/// Reads one length-prefixed frame; `Ok(None)` on a clean EOF before any
/// byte of a frame.
pub async fn read_frame_raw(s: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = s.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside a length prefix"));
        }
        got += n;
    }
    let n = u32::from_be_bytes(len) as usize;
    assert!(n <= 16 * 1024 * 1024, "corrald sent a frame of {n} bytes");
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Reads one frame within the test's patience.
pub async fn read_frame(s: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    tokio::time::timeout(PATIENCE, read_frame_raw(s))
        .await
        .expect("corrald sent nothing and did not close the connection in time")
}

pub async fn read_response(s: &mut tokio::net::UnixStream, what: &str) -> proto::Response {
    let body = read_frame(s)
        .await
        .unwrap_or_else(|e| panic!("{what}: reading a response failed: {e}"))
        .unwrap_or_else(|| panic!("{what}: EOF instead of a response"));
    proto::Response::decode(body.as_slice()).unwrap_or_else(|e| panic!("{what}: undecodable response: {e}"))
}

/// Asserts that corrald closed the connection: a clean EOF and no further frame.
pub async fn expect_eof(s: &mut tokio::net::UnixStream, what: &str) {
    match read_frame(s).await {
        Ok(None) => {}
        Ok(Some(body)) => {
            panic!("{what}: expected EOF, got another frame: {:?}", proto::Response::decode(body.as_slice()))
        }
        Err(e) => panic!("{what}: expected a clean EOF, got {e}"),
    }
}

pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------
// Child processes, bounded
// ---------------------------------------------------------------------------

/// Kills a stray process if a test fails while it runs.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits, bounded, for a process to exit; kills it and fails on timeout.
pub fn wait_child(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command to completion within the test's patience.
pub fn run_bounded(cmd: &mut Command) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read the pipes on threads so a chatty child never blocks on a full pipe.
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut stdout, &mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut stderr, &mut v).map(|_| v)
    });
    let status = wait_child(&mut child, &format!("{cmd:?}"));
    Output { status, stdout: out.join().unwrap().unwrap(), stderr: err.join().unwrap().unwrap() }
}
