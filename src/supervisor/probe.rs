//! A worker's liveness and readiness probes, run by a task of their own
//! (never by the actor): one probe in flight per worker, the next due
//! `interval` after the last one started, or when it ends if it ran
//! longer. Each result goes to the actor, whose fleet judges it.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::TlsConnector;

use super::fleet::{CheckKind, CheckResult};
use crate::config::{Check, GroupConfig, Identity, ProbeConfig, Trust};

/// The first bytes of an HTTP answer read: the status line is in them.
const HTTP_HEAD: usize = 1024;

/// What a worker's probes need to run.
#[derive(Clone)]
pub struct Probes {
    liveness: Option<ProbeConfig>,
    readiness: Option<ProbeConfig>,
    identity: Option<Identity>,
    environment: Vec<(String, String)>,
    working_directory: Option<std::path::PathBuf>,
    /// Exec probes join the worker's cgroup: it is in a scope of its own
    /// or a sub-cgroup of its group's.
    scoped: bool,
}

impl Probes {
    /// A group's probes; `None` when it has none.
    pub fn of(cfg: &GroupConfig, worker_id: &str, scoped: bool) -> Option<Probes> {
        if cfg.health.liveness.is_none() && cfg.health.readiness.is_none() {
            return None;
        }
        let mut environment: Vec<(String, String)> =
            cfg.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        environment.push(("PATH".into(), cfg.search_path().into()));
        environment.push((crate::worker::ENV_GROUP.into(), cfg.name.clone()));
        environment.push((crate::worker::ENV_WORKER_ID.into(), worker_id.into()));
        Some(Probes {
            liveness: cfg.health.liveness.clone(),
            readiness: cfg.health.readiness.clone(),
            identity: cfg.host.as_ref().and_then(|h| h.identity.clone()),
            environment,
            working_directory: cfg.working_directory.clone(),
            scoped,
        })
    }

    pub fn has_readiness(&self) -> bool {
        self.readiness.is_some()
    }

    /// Probes worker `pid` until dropped (with the task that runs this),
    /// reporting each result. A readiness probe ends at its first pass.
    pub async fn run(self, pid: u32, report: impl Fn(CheckKind, CheckResult)) {
        let now = Instant::now();
        let mut due: Vec<(Instant, CheckKind, &ProbeConfig)> =
            [(CheckKind::Liveness, &self.liveness), (CheckKind::Readiness, &self.readiness)]
                .into_iter()
                .filter_map(|(kind, probe)| probe.as_ref().map(|p| (now + p.initial_delay, kind, p)))
                .collect();
        while let Some(next) = due.iter().enumerate().min_by_key(|(_, (at, _, _))| *at).map(|(i, _)| i) {
            let (at, kind, probe) = due[next];
            sleep_until(at).await;
            let started = Instant::now();
            let result = self.probe(probe, pid).await;
            let passed = result == CheckResult::Pass;
            report(kind, result);
            if kind == CheckKind::Readiness && passed {
                due.remove(next);
            } else {
                due[next].0 = (started + probe.interval).max(Instant::now());
            }
        }
    }

    async fn probe(&self, probe: &ProbeConfig, pid: u32) -> CheckResult {
        let Some(check) = &probe.check else { return CheckResult::Fail("the probe was never checked".into()) };
        let limit = probe.timeout;
        let timed_out = || CheckResult::Fail(format!("timed out after {}", humantime::format_duration(limit)));
        match check {
            Check::Exec(argv) => self.exec(argv, pid, limit).await,
            Check::Tcp { host, port } => match timeout(limit, TcpStream::connect((host.as_str(), *port))).await {
                Ok(Ok(_)) => CheckResult::Pass,
                Ok(Err(e)) => CheckResult::Fail(format!("connect: {e}")),
                Err(_) => timed_out(),
            },
            Check::Http { tls, host, port, path } => {
                match timeout(limit, http_get(tls.as_ref(), host, *port, path)).await {
                    Ok(result) => result,
                    Err(_) => timed_out(),
                }
            }
        }
    }

    /// Runs an exec probe in its own process group, killed whole at the
    /// timeout: in the worker's cgroup when it has one, as its user.
    async fn exec(&self, argv: &[String], pid: u32, limit: Duration) -> CheckResult {
        let procs = match self.scoped.then(|| cgroup_procs(pid)).transpose() {
            Ok(procs) => procs.unwrap_or_default(),
            Err(why) => return CheckResult::Fail(why),
        };
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.working_directory {
            command.current_dir(dir);
        }
        let identity = self.identity.clone();
        // SAFETY: between fork and exec the closure only makes system
        // calls (open, write, setgroups, setgid, setuid) on values prepared
        // before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || join_and_become(&procs, identity.as_ref()));
        }
        let mut child = match command.spawn() {
            Ok(child) => ProbeChild(child),
            Err(e) => return CheckResult::Fail(format!("cannot run {}: {e}", argv[0])),
        };
        let child = &mut child.0;
        match timeout(limit, child.wait()).await {
            Ok(Ok(status)) if status.success() => CheckResult::Pass,
            Ok(Ok(status)) => CheckResult::Fail(match status.code() {
                Some(code) => format!("exited {code}"),
                None => format!("ended by {status}"),
            }),
            Ok(Err(e)) => CheckResult::Fail(format!("cannot wait for {}: {e}", argv[0])),
            Err(_) => {
                kill_group(child);
                let _ = child.wait().await;
                CheckResult::Fail(format!("timed out after {}; killed", humantime::format_duration(limit)))
            }
        }
    }
}

/// An exec probe's process, whose whole process group is killed if the
/// probe is dropped before it ends (its worker exited meanwhile).
struct ProbeChild(tokio::process::Child);

impl Drop for ProbeChild {
    fn drop(&mut self) {
        kill_group(&self.0);
    }
}

/// Kills a probe's process group, unless the probe has been reaped (its
/// pid may then be another's).
fn kill_group(child: &tokio::process::Child) {
    if let Some(id) = child.id() {
        let _ = killpg(Pid::from_raw(id as i32), Signal::SIGKILL);
    }
}

/// The `cgroup.procs` files that put a probe where worker `pid` is.
fn cgroup_procs(pid: u32) -> Result<Vec<CString>, String> {
    let files = crate::systemd::cgroup_procs_of(pid).map_err(|e| format!("cannot join the worker's cgroup: {e}"))?;
    files
        .iter()
        .map(|f| CString::new(f.as_os_str().as_bytes()).map_err(|_| "a cgroup path has a NUL byte".to_string()))
        .collect()
}

/// In the probe's child, before exec: into the worker's cgroup (while
/// still root), then the worker's identity.
fn join_and_become(procs: &[CString], identity: Option<&Identity>) -> std::io::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    for procs in procs {
        let raw = open(procs.as_c_str(), OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        // SAFETY: open just returned this descriptor, owned by nobody else;
        // it is closed here, before the exec, whatever the write does.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        nix::unistd::write(&fd, b"0")?;
    }
    if let Some(id) = identity {
        nix::unistd::setgroups(&id.groups)?;
        nix::unistd::setgid(id.gid)?;
        nix::unistd::setuid(id.uid)?;
    }
    Ok(())
}

/// GET over HTTP/1.1, over TLS when `tls` is given; 2xx and 3xx pass.
async fn http_get(tls: Option<&Trust>, host: &str, port: u16, path: &str) -> CheckResult {
    let stream = match TcpStream::connect((host, port)).await {
        Ok(stream) => stream,
        Err(e) => return CheckResult::Fail(format!("connect: {e}")),
    };
    let Some(trust) = tls else { return exchange(stream, host, port, path).await };
    let name = match ServerName::try_from(host.to_string()) {
        Ok(name) => name,
        Err(e) => return CheckResult::Fail(format!("tls: {host:?} is not a server name: {e}")),
    };
    let config = match trust {
        Trust::System => system_tls(),
        Trust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().cloned());
            tls_config(roots)
        }
    };
    match TlsConnector::from(config).connect(name, stream).await {
        Ok(stream) => exchange(stream, host, port, path).await,
        Err(e) => CheckResult::Fail(format!("tls: {e}")),
    }
}

/// A client config trusting `roots`, with rustls's safe protocol versions
/// and the process's provider: ring, the only one built in.
fn tls_config(roots: RootCertStore) -> Arc<ClientConfig> {
    Arc::new(ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// The client config trusting the host's CA store, read once, at the first
/// https probe that trusts it (a corrald restart reads it anew). A store
/// that cannot be read, in whole or part, is logged: the probes it leaves
/// unable to verify fail with an unknown issuer.
fn system_tls() -> Arc<ClientConfig> {
    static SYSTEM: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("https probes: reading the system CA store: {e}");
            }
            let mut roots = RootCertStore::empty();
            let (_, unusable) = roots.add_parsable_certificates(found.certs);
            if unusable > 0 {
                tracing::warn!("https probes: {unusable} certificates of the system CA store are unusable, skipped");
            }
            if roots.is_empty() {
                tracing::warn!("https probes: the system CA store has no certificate; set ca_file for each probe");
            }
            tls_config(roots)
        })
        .clone()
}

/// Sends the GET on a connected stream and judges the answer.
async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, host: &str, port: u16, path: &str) -> CheckResult {
    let authority = crate::config::health::join_host_port(host, port);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: corral-probe\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return CheckResult::Fail(format!("send: {e}"));
    }
    let mut head = Vec::with_capacity(HTTP_HEAD);
    let mut buf = [0u8; HTTP_HEAD];
    while !head.contains(&b'\n') && head.len() < HTTP_HEAD {
        match stream.read(&mut buf[..HTTP_HEAD - head.len()]).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return CheckResult::Fail(format!("receive: {e}")),
        }
    }
    http_verdict(&head)
}

/// Judges an answer by its status line.
fn http_verdict(head: &[u8]) -> CheckResult {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let status = match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    };
    match status {
        Some(200..=399) => CheckResult::Pass,
        Some(code) => CheckResult::Fail(format!("HTTP status {code}")),
        None => CheckResult::Fail("no HTTP/1 status line in the answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_pass_on_2xx_and_3xx_only() {
        assert_eq!(http_verdict(b"HTTP/1.1 200 OK\r\n"), CheckResult::Pass);
        assert_eq!(http_verdict(b"HTTP/1.0 302 Found\r\nLocation: /"), CheckResult::Pass);
        assert_eq!(http_verdict(b"HTTP/1.1 503 Busy\r\n"), CheckResult::Fail("HTTP status 503".into()));
        assert!(matches!(http_verdict(b"SSH-2.0-OpenSSH\r\n"), CheckResult::Fail(_)));
        assert!(matches!(http_verdict(b""), CheckResult::Fail(_)));
    }
}
