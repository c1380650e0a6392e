//! A worker that simulates in-flight work, for testing corral.
//!
//! Each unit of work is a sleep bracketed by `start` and `done` lines in a
//! shared log, so a test can prove that a soft stop drained everything (every
//! `start` has its `done`, then `exit`) and that a hard stop did not.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corral::proto::{worker_request::Command, Status, WorkerRequest};
use corral::worker::{WorkerChannel, WorkerChannelError, WorkerRequests, WorkerResponder, ENV_WORKER_ID};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

/// A corral worker that simulates units of work.
#[derive(Parser, Debug)]
#[command(name = "corral-demo-worker")]
struct Args {
    /// Total units of work, 0 for unlimited. Once all are done the worker idles.
    #[arg(long, default_value_t = 0)]
    units: u64,
    /// Units in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// How long each unit takes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    unit_ms: u64,
    /// File to append event lines to (default: $CORRAL_DEMO_LOG, else none).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Wait this long before reporting ready, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ready_delay_ms: u64,
    /// Acknowledge stops (and ignore SIGTERM/SIGINT) but never finish them.
    #[arg(long)]
    ignore_stop: bool,
    /// Exit with --exit-code after this long, in milliseconds, as if crashing.
    #[arg(long)]
    exit_after_ms: Option<u64>,
    /// The exit code for --exit-after-ms.
    #[arg(long, default_value_t = 1, requires = "exit_after_ms")]
    exit_code: u8,
    /// Print "unit N done" to stdout as each unit N completes.
    #[arg(long)]
    print_units: bool,
    /// At start, print "line 1" to "line N" to stdout as fast as possible.
    #[arg(long, default_value_t = 0)]
    burst_lines: u64,
    /// At start, print this line to stdout (repeatable).
    #[arg(long, value_name = "TEXT")]
    say: Vec<String>,
    /// At start, print this line to stderr (repeatable).
    #[arg(long, value_name = "TEXT")]
    complain: Vec<String>,
    /// Stop reading the worker channel after this long, in milliseconds, as
    /// a worker stuck elsewhere would: pings go unanswered.
    #[arg(long)]
    hang_after_ms: Option<u64>,
    /// Listen on this TCP address and answer every connection with an HTTP
    /// 200, for health probes.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Serve the --listen port over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Start listening this long after the start, in milliseconds.
    #[arg(long, default_value_t = 0, requires = "listen")]
    listen_delay_ms: u64,
    /// Close the listener this long after the start, in milliseconds.
    #[arg(long, requires = "listen")]
    stop_listening_after_ms: Option<u64>,
    /// At start, take this many MiB of memory and keep it, every page
    /// written, until the worker exits (for resource usage tests).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    hold_memory: usize,
    /// Keep this share of one CPU busy, in percent, on a thread of its own
    /// (for resource usage tests).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    burn_cpu: Option<u32>,
}

fn main() -> ExitCode {
    // Usage errors follow the same rule as every other error here: one line on
    // stderr and exit 1, so a test only has to tell success from failure.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let first_paragraph: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            return fail(&first_paragraph.join(" "));
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(msg) => fail(&msg),
    }
}

fn fail(msg: &str) -> ExitCode {
    note(msg);
    ExitCode::FAILURE
}

/// Writes to stderr without eprintln!, which would panic if stderr is a
/// closed pipe.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "corral-demo-worker: {msg}");
}

async fn run(args: Args) -> Result<ExitCode, String> {
    // Take the channel before anything else runs: it removes
    // CORRAL_WORKER_FD from the environment, which races with any concurrent
    // reader of the environment.
    let channel = WorkerChannel::from_env().map_err(|e| e.to_string())?;
    let log_path =
        args.log.clone().or_else(|| std::env::var_os("CORRAL_DEMO_LOG").filter(|v| !v.is_empty()).map(PathBuf::from));
    let log = Log::open(log_path)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let (mut requests, mut corrald) = match channel {
        Some(channel) => {
            let (requests, responder) = channel.split();
            (Some(requests), Corrald(Some(responder)))
        }
        None => (None, Corrald(None)),
    };

    for line in &args.say {
        writeln!(std::io::stdout(), "{line}").map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    for line in &args.complain {
        writeln!(std::io::stderr(), "{line}").map_err(|e| format!("cannot write to stderr: {e}"))?;
    }
    burst(args.burst_lines)?;
    let _held = hold_memory(args.hold_memory);
    if let Some(percent) = args.burn_cpu {
        std::thread::Builder::new()
            .name("burn".into())
            .spawn(move || burn(percent))
            .map_err(|e| format!("cannot start the burning thread: {e}"))?;
    }

    let started = Instant::now();
    let crash_at = args.exit_after_ms.map(|ms| started + Duration::from_millis(ms));
    let mut ready_at = Some(started + Duration::from_millis(args.ready_delay_ms));
    let unit_time = Duration::from_millis(args.unit_ms);
    let mut in_flight: JoinSet<u64> = JoinSet::new();
    let mut units_started: u64 = 0;
    // Set once a stop is accepted; holds the ids of the SoftStop requests to
    // answer OK when the drain is over (empty for a signal).
    let mut stopping: Option<Vec<u64>> = None;
    let hang_at = args.hang_after_ms.map(|ms| started + Duration::from_millis(ms));
    let mut hung = false;
    if let Some(addr) = args.listen {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let from = started + Duration::from_millis(args.listen_delay_ms);
        let close_at = args.stop_listening_after_ms.map(|ms| started + Duration::from_millis(ms));
        tokio::spawn(serve_http(addr, tls, from, close_at));
    }

    loop {
        if let Some(stop_ids) = &stopping {
            if in_flight.is_empty() {
                log.event("exit", None)?;
                for id in stop_ids {
                    corrald.reply(*id, Status::Ok, "").await;
                }
                return Ok(ExitCode::SUCCESS);
            }
        } else if ready_at.is_none() {
            while in_flight.len() < args.concurrency as usize && (args.units == 0 || units_started < args.units) {
                units_started += 1;
                let unit = units_started;
                log.event("start", Some(unit))?;
                in_flight.spawn(async move {
                    sleep(unit_time).await;
                    unit
                });
            }
        }

        tokio::select! {
            () = until(crash_at) => return Ok(ExitCode::from(args.exit_code)),
            () = until(hang_at), if !hung => {
                hung = true;
                note("no longer reading the worker channel (--hang-after-ms)");
            }
            () = until(ready_at), if stopping.is_none() => {
                ready_at = None;
                log.event("ready", None)?;
                corrald.ready().await;
            }
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                let unit = joined.map_err(|e| format!("unit task failed: {e}"))?;
                log.event("done", Some(unit))?;
                if args.print_units {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "unit {unit} done")
                        .and_then(|()| out.flush())
                        .map_err(|e| format!("cannot write to stdout: {e}"))?;
                }
            }
            request = next_request(&mut requests), if !hung => match request {
                Ok(Some(request)) => {
                    handle_request(request, &mut corrald, &mut stopping, args.ignore_stop).await;
                }
                Ok(None) => {
                    note("worker channel closed by the supervisor; carrying on without it");
                    requests = None;
                }
                Err(e) => return Err(e.to_string()),
            },
            _ = sigterm.recv() => on_signal("SIGTERM", &mut stopping, args.ignore_stop),
            _ = sigint.recv() => on_signal("SIGINT", &mut stopping, args.ignore_stop),
        }
    }
}

async fn handle_request(
    request: WorkerRequest,
    corrald: &mut Corrald,
    stopping: &mut Option<Vec<u64>>,
    ignore_stop: bool,
) {
    let id = request.id;
    match request.command {
        Some(Command::SoftStop(_)) => {
            corrald.reply(id, Status::Processing, "").await;
            if !ignore_stop {
                stopping.get_or_insert_with(Vec::new).push(id);
            }
        }
        // A newer corrald may send commands this worker predates; refusing
        // them keeps corrald from waiting for an answer that never comes.
        _ => corrald.reply(id, Status::Failure, "unsupported request").await,
    }
}

fn on_signal(name: &str, stopping: &mut Option<Vec<u64>>, ignore_stop: bool) {
    if ignore_stop {
        note(&format!("{name} received; ignoring it (--ignore-stop)"));
    } else {
        stopping.get_or_insert_with(Vec::new);
    }
}

/// The sending side of the channel to corrald, while there is one that works.
/// A failed send means corrald is gone; like EOF on the channel, that is no
/// reason to stop working, so the channel is dropped and the worker carries on.
struct Corrald(Option<WorkerResponder>);

impl Corrald {
    async fn ready(&mut self) {
        if let Some(r) = &self.0 {
            let result = r.ready().await;
            self.check(result);
        }
    }

    async fn reply(&mut self, id: u64, status: Status, message: &str) {
        if let Some(r) = &self.0 {
            let result = r.reply(id, status, message).await;
            self.check(result);
        }
    }

    fn check(&mut self, result: Result<(), WorkerChannelError>) {
        if let Err(e) = result {
            note(&format!("{e}; carrying on without the channel"));
            self.0 = None;
        }
    }
}

async fn next_request(requests: &mut Option<WorkerRequests>) -> Result<Option<WorkerRequest>, WorkerChannelError> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

/// A TLS server config from a PEM certificate chain and key.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificates of {}: {e:?}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key of {}: {e:?}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("cannot serve TLS with {}: {e}", cert.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Answers every connection with a 200 between `from` and `until`, over TLS
/// when given an acceptor (a failed handshake is a note); a listener that
/// cannot be bound is a note, and the probes then fail.
async fn serve_http(
    addr: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    from: Instant,
    close_at: Option<Instant>,
) {
    sleep_until(from).await;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => return note(&format!("cannot listen on {addr}: {e}")),
    };
    let serve = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer_ok(stream).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => answer_ok(stream).await,
                        Err(e) => note(&format!("TLS handshake on {addr} failed: {e}")),
                    },
                }
            });
        }
    };
    tokio::select! {
        () = serve => {}
        () = until(close_at) => note(&format!("closed the listener on {addr} (--stop-listening-after-ms)")),
    }
}

async fn answer_ok(mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request).await;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n").await;
    let _ = stream.shutdown().await;
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn burst(lines: u64) -> Result<(), String> {
    if lines == 0 {
        return Ok(());
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    (1..=lines)
        .try_for_each(|i| writeln!(out, "line {i}"))
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// The event log. Each line goes out in one write(2) on an O_APPEND file, so
/// lines from many workers sharing the file never interleave.
struct Log {
    file: Option<File>,
    worker_id: String,
    pid: u32,
}

impl Log {
    fn open(path: Option<PathBuf>) -> Result<Self, String> {
        let file = match path {
            Some(path) => Some(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open log {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let worker_id = std::env::var(ENV_WORKER_ID).unwrap_or_else(|_| "-".to_owned());
        Ok(Self { file, worker_id, pid: std::process::id() })
    }

    /// A lost line would make a test draw the wrong conclusion, so a failed or
    /// short write is fatal rather than skipped.
    fn event(&self, what: &str, unit: Option<u64>) -> Result<(), String> {
        let Some(mut file) = self.file.as_ref() else {
            return Ok(());
        };
        let line = match unit {
            Some(unit) => format!("{what} {} {} {unit}\n", self.worker_id, self.pid),
            None => format!("{what} {} {}\n", self.worker_id, self.pid),
        };
        match file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => Err(format!("short write to the log ({n} of {} bytes)", line.len())),
            Err(e) => Err(format!("cannot write to the log: {e}")),
        }
    }
}

/// `mib` MiB with every page written, so they are resident, not merely
/// reserved.
fn hold_memory(mib: usize) -> Vec<u8> {
    std::hint::black_box(vec![1u8; mib << 20])
}

/// Spins for `percent` of every 20 ms and sleeps the rest, for good.
fn burn(percent: u32) {
    let period = Duration::from_millis(20);
    let busy = period * percent / 100;
    loop {
        let start = std::time::Instant::now();
        let mut n = 0u64;
        while start.elapsed() < busy {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        std::thread::sleep(period.saturating_sub(start.elapsed()));
    }
}
