//! Audited no-op mutations per second: the same corrald binary, the same
//! load, with the audit off, to files, to files with `audit_sync`, and (where
//! journald listens) to files and the journal, each mode repeated, in one
//! run. Prints min/median/max per mode and the ratios to the audit-off run.
//!
//! The mutation is `start` of a worker that is already running: privileged,
//! so it passes the whole audited path (an `accepted` record before it runs,
//! an `ok` record before its answer goes out), while the supervisor does
//! next to nothing for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::frame;
use corral::proto::{self, request::Command as Cmd, Status};
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

struct Options {
    corrald: PathBuf,
    /// Another corrald (e.g. the last release) measured in the same run.
    baseline: Option<PathBuf>,
    dir: PathBuf,
    clients: usize,
    depth: usize,
    seconds: f64,
    warmup: f64,
    repeats: usize,
    modes: Vec<Mode>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Off,
    Files,
    Sync,
    Journal,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Files => "files",
            Mode::Sync => "sync",
            Mode::Journal => "journal",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Off => "audit off (no files, audit_journal = false)",
            Mode::Files => "text + JSON files, audit_sync = false",
            Mode::Sync => "text + JSON files, audit_sync = true",
            Mode::Journal => "text + JSON files and the journal, audit_sync = false",
        }
    }

    fn parse(name: &str) -> Result<Mode, String> {
        [Mode::Off, Mode::Files, Mode::Sync, Mode::Journal]
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| format!("unknown mode {name:?} (off, files, sync, journal)"))
    }

    fn config(self, dir: &Path) -> String {
        let files = format!(
            "audit_logs_target = {:?}\naudit_logs_json_target = {:?}\n",
            dir.join("audit.log"),
            dir.join("audit.jsonl")
        );
        match self {
            Mode::Off => "audit_journal = false\n".into(),
            Mode::Files => format!("{files}audit_journal = false\n"),
            Mode::Sync => format!("{files}audit_journal = false\naudit_sync = true\n"),
            Mode::Journal => format!("{files}audit_journal = true\n"),
        }
    }
}

const USAGE: &str =
    "usage: corral-bench-audit --corrald PATH [--baseline PATH] [--dir DIR] [--clients 32] [--depth 4] \
                     [--seconds 3] [--warmup 0.5] [--repeats 3] [--modes off,files,sync[,journal]]";

fn options() -> Result<Options, String> {
    let mut o = Options {
        corrald: PathBuf::new(),
        baseline: None,
        dir: std::env::temp_dir(),
        clients: 32,
        depth: 4,
        seconds: 3.0,
        warmup: 0.5,
        repeats: 3,
        modes: vec![Mode::Off, Mode::Files, Mode::Sync],
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        let number = |v: String| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--corrald" => o.corrald = value()?.into(),
            "--baseline" => o.baseline = Some(value()?.into()),
            "--dir" => o.dir = value()?.into(),
            "--clients" => o.clients = number(value()?)? as usize,
            "--depth" => o.depth = number(value()?)? as usize,
            "--seconds" => o.seconds = number(value()?)?,
            "--warmup" => o.warmup = number(value()?)?,
            "--repeats" => o.repeats = number(value()?)? as usize,
            "--modes" => o.modes = value()?.split(',').map(Mode::parse).collect::<Result<_, _>>()?,
            _ => return Err(USAGE.into()),
        }
    }
    if o.corrald.as_os_str().is_empty() || o.clients == 0 || o.depth == 0 || o.repeats == 0 {
        return Err(USAGE.into());
    }
    Ok(o)
}

/// A corrald for one measurement, in its own directory.
struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    fn start(o: &Options, corrald: &Path, mode: Mode, run: usize) -> Result<Daemon, String> {
        let dir = o.dir.join(format!("corral-bench-audit-{}-{}-{run}", std::process::id(), mode.name()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("corrald.sock");
        let config = dir.join("corral.toml");
        let text = format!(
            "socket = {socket:?}\nstate_directory = {:?}\nscopes = \"off\"\n{}\n\
             [groups.bench]\ncommand = \"/bin/sleep\"\nargs = [\"infinity\"]\ncount = 1\n",
            dir.join("state"),
            mode.config(&dir)
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let child = Command::new(corrald)
            .arg("--config")
            .arg(&config)
            .env("CORRAL_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("corrald.stderr")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("{}: {e}", corrald.display()))?;
        Ok(Daemon { child, socket, dir })
    }

    async fn status(&self) -> Result<proto::SupervisorStatus, String> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| e.to_string())?;
        let mut framed = Framed::new(stream, frame::codec(16 << 20));
        let status = proto::Request { id: 1, command: Some(Cmd::Status(proto::StatusRequest {})) };
        framed.send(frame::encode(&status)).await.map_err(|e| e.to_string())?;
        let bytes = framed.next().await.ok_or("no answer")?.map_err(|e| e.to_string())?;
        match proto::Response::decode(bytes).map_err(|e| e.to_string())?.content {
            Some(proto::response::Content::SupervisorStatus(s)) => Ok(s),
            other => Err(format!("not a status: {other:?}")),
        }
    }

    /// Waits until the worker runs, so every `start` is a no-op.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                let log = std::fs::read_to_string(self.dir.join("corrald.stderr")).unwrap_or_default();
                return Err(format!("corrald exited with {status}: {log}"));
            }
            if Instant::now() > deadline {
                return Err("corrald did not come up within 30 s".into());
            }
            if let Ok(s) = self.status().await {
                if s.groups.iter().all(|g| g.running == g.desired) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Counts of final answers, as the load runs.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One connection: `depth` requests in flight, a new one sent as each
/// final answer comes (corrald takes a connection's requests one after
/// another, so depth only hides the round trip).
async fn client(daemon_socket: PathBuf, depth: usize, counts: Arc<Counts>) {
    let stream = UnixStream::connect(&daemon_socket).await.expect("connect");
    let mut framed = Framed::new(stream, frame::codec(16 << 20));
    let mut next_id = 1u64;
    let start = |id: u64| {
        frame::encode(&proto::Request { id, command: Some(Cmd::Start(proto::Start { target: "bench-1".into() })) })
    };
    for _ in 0..depth {
        framed.feed(start(next_id)).await.expect("send");
        next_id += 1;
    }
    SinkExt::<prost::bytes::Bytes>::flush(&mut framed).await.expect("send");
    while let Some(Ok(bytes)) = framed.next().await {
        let response = proto::Response::decode(bytes).expect("response");
        match response.status() {
            Status::Processing => continue,
            Status::Ok => counts.ok.fetch_add(1, Ordering::Relaxed),
            _ => counts.failed.fetch_add(1, Ordering::Relaxed),
        };
        if framed.send(start(next_id)).await.is_err() {
            return;
        }
        next_id += 1;
    }
}

/// CPU time corrald has used (all its threads), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// What one run saw.
struct Measured {
    rate: f64,
    /// corrald's CPU time per answered mutation.
    cpu_per_op: Duration,
    failed: u64,
    journal_missed: u64,
}

/// Final answers per second over `seconds`, after `warmup`.
async fn measure(o: &Options, corrald: &Path, mode: Mode, run: usize) -> Result<Measured, String> {
    let mut daemon = Daemon::start(o, corrald, mode, run)?;
    let result = async {
        daemon.ready().await?;
        let counts = Arc::new(Counts::default());
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..o.clients {
            clients.spawn(client(daemon.socket.clone(), o.depth, counts.clone()));
        }
        tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
        let pid = daemon.child.id();
        let (from, at, cpu) = (counts.ok.load(Ordering::Relaxed), Instant::now(), cpu_time(pid));
        tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
        let (to, took, cpu) = (counts.ok.load(Ordering::Relaxed), at.elapsed(), cpu_time(pid) - cpu);
        clients.abort_all();
        while clients.join_next().await.is_some() {}
        let failed = counts.failed.load(Ordering::Relaxed);
        let journal_missed = daemon.status().await?.audit_journal_missed;
        let cpu_per_op = cpu / (to - from).max(1) as u32;
        Ok(Measured { rate: (to - from) as f64 / took.as_secs_f64(), cpu_per_op, failed, journal_missed })
    }
    .await;
    daemon.stop();
    result
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "corrald {} (baseline {}); {} connections x {} in flight; {} s per run after {} s warm-up; {} repeats; \
         audit files in {}",
        o.corrald.display(),
        o.baseline.as_ref().map_or("none".into(), |b| b.display().to_string()),
        o.clients,
        o.depth,
        o.seconds,
        o.warmup,
        o.repeats,
        o.dir.display()
    );
    println!("load average before: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let mut binaries = vec![("new", o.corrald.clone())];
    if let Some(baseline) = &o.baseline {
        binaries.push(("baseline", baseline.clone()));
    }
    let cases: Vec<(&str, &Path, Mode)> =
        binaries.iter().flat_map(|(label, path)| o.modes.iter().map(move |m| (*label, path.as_path(), *m))).collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut missed = vec![0u64; cases.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    // Cases interleave within each repeat, so drift in the machine's load
    // touches every one alike.
    for run in 1..=o.repeats {
        for (i, (label, corrald, mode)) in cases.iter().enumerate() {
            match measure(&o, corrald, *mode, run).await {
                Ok(m) => {
                    eprintln!(
                        "run {run} {label:<8} {:<8} {:>9.0}/s  corrald CPU {:>5.1} us/op  failed {}  journal missed {}",
                        mode.name(),
                        m.rate,
                        m.cpu_per_op.as_secs_f64() * 1e6,
                        m.failed,
                        m.journal_missed
                    );
                    rates[i].push(m.rate);
                    cpu[i].push(m.cpu_per_op.as_secs_f64() * 1e6);
                    missed[i] = missed[i].max(m.journal_missed);
                }
                Err(e) => {
                    eprintln!("{label} {}: {e}", mode.name());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!();
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|r| {
            r.sort_by(f64::total_cmp);
            median(r)
        })
        .collect();
    let find = |label: &str, mode: Mode| cases.iter().position(|(l, _, m)| *l == label && *m == mode);
    println!(
        "| corrald | mode | mutations/s min | median | max | median / same corrald's off | median / baseline's same mode | \
         corrald CPU us/op (median) | journal missed (most in a run) | what |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, (label, _, mode)) in cases.iter().enumerate() {
        let r = &rates[i];
        let ratio = |j: Option<usize>| j.map_or("-".to_string(), |j| format!("{:.2}", medians[i] / medians[j]));
        let baseline = if *label == "baseline" { None } else { find("baseline", *mode) };
        cpu[i].sort_by(f64::total_cmp);
        println!(
            "| {label} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {:.1} | {} | {} |",
            mode.name(),
            r[0],
            medians[i],
            r[r.len() - 1],
            ratio(find(label, Mode::Off)),
            ratio(baseline),
            median(&cpu[i]),
            if *mode == Mode::Journal { missed[i].to_string() } else { "-".into() },
            mode.describe()
        );
    }
    std::process::ExitCode::SUCCESS
}
