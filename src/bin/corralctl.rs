//! corralctl: the command-line client of corrald's command socket.
//!
//! Each invocation sends one request and waits for its final answer. The exit
//! status tells scripts what happened without parsing output: 0 for a final
//! OK, 1 for a final FAILURE, 2 for a usage error, 3 when no final answer
//! came (corrald unreachable, connection lost, protocol error) or it could
//! not be written out.

use std::cell::Cell;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use clap_complete::CompleteEnv;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use corral::cli::corralctl::{socket_path, AuditCmd, Cli, Cmd, COMPLETE_ENV, EXIT_FAILURE, EXIT_NO_ANSWER, EXIT_USAGE};
use corral::ctl::units::{age, bytes, percent};
use corral::ctl::{self, Client};
use corral::proto::{self, request, response, Response, Status};
use corral::sanitise::neutralise;
use corral::target::Target;

fn main() -> ExitCode {
    // The shell asking for completions: answered, and the process exits.
    // A normal run pays one environment lookup for it.
    if std::env::var_os(COMPLETE_ENV).is_some() {
        CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).var(COMPLETE_ENV).complete();
    }
    let cli = Cli::parse();
    if let Cmd::Audit(AuditCmd::Verify { file }) = &cli.command {
        return verify(file);
    }
    let socket = socket_path(cli.socket);
    if let Cmd::Top { once, interval } = cli.command {
        return match ctl::top::run(ctl::top::Options { socket, interval, once }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => fail(EXIT_NO_ANSWER, &msg),
        };
    }
    let command = match to_request(cli.command) {
        Ok(command) => command,
        Err(msg) => return fail(EXIT_USAGE, &msg),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(EXIT_NO_ANSWER, &format!("cannot start the runtime: {err}")),
    };
    let timeout = cli.timeout.unwrap_or_else(|| first_answer_timeout(&command));
    // Ctrl-C is how a stream of events is meant to end: exit 0, as after
    // corrald's final OK.
    let interruptible = matches!(command, request::Command::Subscribe(_));
    let mut out = Output::new(cli.json);
    let answered = Cell::new(false);
    let result = runtime.block_on(async {
        let call = async {
            let mut client = Client::connect(&socket).await?;
            client
                .call(command, |resp| {
                    answered.set(true);
                    out.progress(resp)
                })
                .await
        };
        // Only the wait for the first answer is bounded: a drain may then
        // take as long as its workers do, reporting as it goes.
        let unanswered = async {
            tokio::time::sleep(timeout).await;
            if answered.get() {
                std::future::pending::<()>().await;
            }
        };
        let interrupted = async {
            if !interruptible || tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = call => result.map(Some).map_err(|err| err.to_string()),
            () = interrupted => Ok(None),
            () = unanswered => Err(format!(
                "no answer from corrald on {} within {}: it may be starting or restarting \
                 (`systemctl status corrald` says which); --timeout waits longer",
                socket.display(),
                humantime::format_duration(timeout)
            )),
        }
    });
    let response = match result {
        Ok(Some(response)) => response,
        Ok(None) => return ExitCode::SUCCESS,
        Err(err) => {
            out.clear_progress();
            return fail(EXIT_NO_ANSWER, &err);
        }
    };
    out.finish(&response);
    if let Some(err) = out.error {
        return fail(EXIT_NO_ANSWER, &format!("cannot write output: {err}"));
    }
    match response.status() {
        Status::Ok => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_FAILURE),
    }
}

/// How long to wait for corrald's first answer: a status is quick when
/// corrald runs, so a client waiting longer is better told why; other
/// requests may first wait on the audit trail or on an upgrade's checks.
fn first_answer_timeout(command: &request::Command) -> Duration {
    match command {
        // A subscription is answered "subscribed" at once.
        request::Command::Status(_)
        | request::Command::Metrics(_)
        | request::Command::ListWorkers(_)
        | request::Command::Subscribe(_) => Duration::from_secs(5),
        _ => Duration::from_secs(30),
    }
}

/// Exit 0 when the chain is whole, 1 naming the first broken record.
fn verify(file: &Path) -> ExitCode {
    match corral::audit::chain::verify(file) {
        Ok(records) => {
            let _ = writeln!(io::stdout(), "{}: intact, {records} records", file.display());
            ExitCode::SUCCESS
        }
        Err(why) => fail(EXIT_FAILURE, &format!("{}: {why}", file.display())),
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    // eprintln! would panic if stderr is gone; nothing is left to report to then.
    let _ = writeln!(io::stderr(), "corralctl: {msg}");
    ExitCode::from(code)
}

/// A target in its wire form: "all", like none, is everything, the empty
/// target. One that is none of the forms [`Target::parse`] reads goes as
/// typed, for corrald to refuse: the refusal is then answered like any
/// other (an escaped FAILURE, exit 1) and is on the audit trail.
fn target(target: Option<String>) -> String {
    let text = target.unwrap_or_default();
    Target::parse(&text).map_or(text, |t| t.wire())
}

/// corrald resolves paths against its own working directory, which is not
/// the user's, so relative paths are made absolute here.
fn wire_path(path: &Path) -> Result<String, String> {
    let absolute =
        std::path::absolute(path).map_err(|err| format!("cannot make {} absolute: {err}", path.display()))?;
    absolute.into_os_string().into_string().map_err(|p| format!("{} is not valid UTF-8", Path::new(&p).display()))
}

/// A state file is a plain name (corrald keeps it in its state directory)
/// or a path, which is sent absolute.
fn state_name(path: &Path) -> Result<String, String> {
    match path.to_str() {
        Some(name) if !name.contains('/') => Ok(name.to_string()),
        _ => wire_path(path),
    }
}

fn to_request(cmd: Cmd) -> Result<request::Command, String> {
    Ok(match cmd {
        Cmd::Status => request::Command::Status(proto::StatusRequest {}),
        Cmd::Metrics => request::Command::Metrics(proto::Metrics {}),
        Cmd::Workers { group } => {
            request::Command::ListWorkers(proto::ListWorkers { group: group.unwrap_or_default() })
        }
        Cmd::Stop { target: t, hard } => request::Command::Stop(proto::Stop { target: target(t), hard }),
        Cmd::Start { target: t } => request::Command::Start(proto::Start { target: target(Some(t)) }),
        Cmd::Restart { target: t, rolling, max_unavailable } => request::Command::Restart(proto::Restart {
            target: target(Some(t)),
            rolling,
            max_unavailable: max_unavailable.unwrap_or(0),
        }),
        Cmd::Scale { group, count } => request::Command::Scale(proto::Scale { group, count }),
        Cmd::Limit { target, properties } => request::Command::Limit(proto::Limit { target, properties }),
        Cmd::Reload => request::Command::ReloadConfig(proto::ReloadConfig {}),
        Cmd::SaveState { path } => request::Command::SaveState(proto::SaveState { path: state_name(&path)? }),
        Cmd::LoadState { path } => request::Command::LoadState(proto::LoadState { path: state_name(&path)? }),
        Cmd::Shutdown => request::Command::Shutdown(proto::Shutdown {}),
        Cmd::Audit(AuditCmd::Reopen) => request::Command::AuditReopen(proto::AuditReopen {}),
        Cmd::Events { target: t, replay } => {
            request::Command::Subscribe(proto::Subscribe { target: target(t), replay })
        }
        Cmd::Upgrade { binary } => request::Command::Upgrade(proto::Upgrade {
            binary: binary.map(|b| wire_path(&b)).transpose()?.unwrap_or_default(),
        }),
        Cmd::Audit(AuditCmd::Verify { .. }) => return Err("audit verify runs locally".into()),
        Cmd::Top { .. } => return Err("top sends its own requests".into()),
    })
}

/// Everything corralctl prints on stdout.
///
/// Write errors are remembered rather than propagated: the request is already
/// on its way, so corralctl keeps waiting for the final answer (leaving early
/// would close the connection under a running request) and reports the write
/// error afterwards. A closed pipe (`corralctl workers | head`) is the
/// reader's choice and not reported at all.
struct Output {
    json: bool,
    /// Parts of a worker listing that came before its final answer.
    workers: Vec<proto::WorkerInfo>,
    /// A live bar replaces the plain progress lines only on a terminal, where
    /// it can redraw in place; logs and pipes get one line per response.
    tty: bool,
    bar: Option<ProgressBar>,
    /// Set after the first failed write: later output would be garbled.
    closed: bool,
    error: Option<io::Error>,
}

impl Output {
    fn new(json: bool) -> Output {
        Output { json, workers: Vec::new(), tty: io::stdout().is_terminal(), bar: None, closed: false, error: None }
    }

    fn write(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let mut stdout = io::stdout().lock();
        if let Err(err) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            self.closed = true;
            if err.kind() != io::ErrorKind::BrokenPipe {
                self.error = Some(err);
            }
        }
    }

    fn progress(&mut self, resp: &Response) {
        // A long listing comes in parts; it is shown (or printed as JSON)
        // whole, with the final answer.
        if let Some(response::Content::Workers(list)) = &resp.content {
            self.workers.extend(list.workers.iter().cloned());
            return;
        }
        if self.json {
            self.write_json(resp);
            return;
        }
        if let Some(response::Content::Event(event)) = &resp.content {
            self.write(&format!("{}\n", shown(&ctl::event_line(event))));
            return;
        }
        let Some(response::Content::Progress(p)) = &resp.content else {
            if !resp.message.is_empty() {
                match &self.bar {
                    Some(bar) => bar.set_message(shown(&resp.message)),
                    None => self.write(&format!("{}\n", shown(&resp.message))),
                }
            }
            return;
        };
        let event = match (p.worker.is_empty(), p.event.is_empty()) {
            (false, false) => format!("{}: {}", shown(&p.worker), shown(&p.event)),
            (false, true) => shown(&p.worker),
            (true, _) => shown(&p.event),
        };
        if !self.tty {
            let line = format!(
                "{event} (acked {}/{}, finished {}/{}, failed {})\n",
                p.acknowledged, p.total, p.finished, p.total, p.failed
            );
            self.write(&line);
            return;
        }
        let bar = self.bar.get_or_insert_with(new_bar);
        bar.set_length(u64::from(p.total));
        bar.set_position(u64::from(p.finished));
        bar.set_message(format!("acked {}/{}, failed {} | {event}", p.acknowledged, p.total, p.failed));
    }

    /// Takes the bar off the screen before an error line goes to stderr, so
    /// the two do not share a terminal line.
    fn clear_progress(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn finish(&mut self, resp: &Response) {
        let mut whole;
        let resp = match &resp.content {
            Some(response::Content::Workers(last)) if !self.workers.is_empty() => {
                whole = resp.clone();
                let mut workers = std::mem::take(&mut self.workers);
                workers.extend(last.workers.iter().cloned());
                whole.content = Some(response::Content::Workers(proto::WorkerList { workers }));
                &whole
            }
            _ => resp,
        };
        if self.json {
            self.write_json(resp);
            return;
        }
        // The bar stays visible above the outcome with the counts corrald
        // last reported; `finish` would fill it even when workers failed.
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
        let mut text = String::new();
        let is_table = match &resp.content {
            Some(response::Content::SupervisorStatus(status)) => {
                text.push_str(&status_text(status));
                true
            }
            Some(response::Content::Workers(list)) => {
                text.push_str(&workers_text(list));
                true
            }
            // Printed as corrald wrote it, for a parser: its only text from
            // outside is group and worker names, which the config allows
            // no control characters in, and which it escapes as the format
            // wants.
            Some(response::Content::Metrics(metrics)) => {
                text.push_str(&metrics.text);
                true
            }
            _ => false,
        };
        let status = ctl::status_name(resp.status);
        // A table is the answer; an "OK" line after it would only be noise.
        if resp.status() != Status::Ok || !is_table || !resp.message.is_empty() {
            if resp.message.is_empty() {
                text.push_str(&format!("{status}\n"));
            } else {
                text.push_str(&format!("{status}: {}\n", shown(&resp.message)));
            }
        }
        if let Some(response::Content::Outcome(outcome)) = &resp.content {
            for f in &outcome.failures {
                let kind = f.kind().name();
                if f.detail.is_empty() {
                    text.push_str(&format!("  {}: {kind}\n", shown(&f.worker)));
                } else {
                    text.push_str(&format!("  {}: {kind} ({})\n", shown(&f.worker), shown(&f.detail)));
                }
            }
        }
        self.write(&text);
    }

    fn write_json(&mut self, resp: &Response) {
        let line = format!("{}\n", json_safe(&ctl::response_to_json(resp).to_string()));
        self.write(&line);
    }
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
    // The template is a constant known to parse; falling back keeps a bar
    // rather than unwrapping.
    let style = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} finished  {wide_msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    // Ticks keep the spinner and elapsed time moving while workers drain
    // quietly, so a long soft stop does not look like a hang.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn status_text(s: &proto::SupervisorStatus) -> String {
    let version = if s.version.is_empty() { String::new() } else { format!(" {}", shown(&s.version)) };
    let mut text = format!(
        "corrald{version}, pid {}, up {}\nsocket: {}\nconfig: {}\nscopes: {}\noutput: {}, {} lines dropped\naudit: {} records missed by the journal\n\n",
        s.pid,
        age(Duration::from_millis(s.uptime_ms)),
        shown(&s.socket_path),
        shown(&s.config_path),
        if s.scopes_active { "active" } else { "inactive" },
        dash_if(s.output_sink.is_empty(), || shown(&s.output_sink)),
        s.output_dropped,
        s.audit_journal_missed,
    );
    let rows = s
        .groups
        .iter()
        .map(|g| {
            vec![
                shown(&g.name),
                shown(&g.state),
                g.desired.to_string(),
                g.running.to_string(),
                g.ready.to_string(),
                g.stopped.to_string(),
                g.failed.to_string(),
                usage_cell(g.usage.as_ref(), |u| u.cpu_percent.map(percent)),
                usage_cell(g.usage.as_ref(), |u| Some(bytes(u.memory_bytes))),
                usage_cell(g.usage.as_ref(), |u| u.tasks.map(|n| n.to_string())),
                shown(&g.reason),
            ]
        })
        .collect();
    let headers =
        ["GROUP", "STATE", "DESIRED", "RUNNING", "READY", "STOPPED", "FAILED", "CPU", "MEM", "TASKS", "REASON"];
    text.push_str(&table(&headers, rows));
    text
}

fn workers_text(list: &proto::WorkerList) -> String {
    let now = SystemTime::now();
    let rows = list
        .workers
        .iter()
        .map(|w| {
            vec![
                shown(&w.id),
                shown(&w.group),
                dash_if(w.pid == 0, || w.pid.to_string()),
                shown(&w.state),
                dash_if(w.started_at_ms == 0, || {
                    let started = UNIX_EPOCH + Duration::from_millis(w.started_at_ms);
                    // A start time in the future (clocks of corrald and
                    // corralctl disagree) reads as just started.
                    format!("{} ago", age(now.duration_since(started).unwrap_or_default()))
                }),
                w.restarts.to_string(),
                w.output_dropped.to_string(),
                usage_cell(w.usage.as_ref(), |u| u.cpu_percent.map(percent)),
                usage_cell(w.usage.as_ref(), |u| Some(cpu_time(u.cpu_time_us))),
                usage_cell(w.usage.as_ref(), |u| Some(bytes(u.memory_bytes))),
                usage_cell(w.usage.as_ref(), |u| u.memory_peak_bytes.map(bytes)),
                usage_cell(w.usage.as_ref(), |u| u.tasks.map(|n| n.to_string())),
                usage_cell(w.usage.as_ref(), |u| Some(shown(&u.source))),
                dash_if(w.last_exit.is_empty(), || shown(&w.last_exit)),
                dash_if(w.health.is_empty(), || health_text(&w.health, now)),
            ]
        })
        .collect();
    let headers = [
        "ID",
        "GROUP",
        "PID",
        "STATE",
        "STARTED",
        "RESTARTS",
        "DROPPED",
        "CPU",
        "CPU TIME",
        "MEM",
        "PEAK",
        "TASKS",
        "SOURCE",
        "LAST EXIT",
        "HEALTH",
    ];
    table(&headers, rows)
}

/// Each check's last result and when, with the failures in a row while it
/// fails: `ping ok 2s ago`, `liveness failed 2x 1s ago: connect: ...`.
fn health_text(checks: &[proto::HealthCheck], now: SystemTime) -> String {
    let when = |ms: u64| {
        let at = UNIX_EPOCH + Duration::from_millis(ms);
        format!("{} ago", age(now.duration_since(at).unwrap_or_default()))
    };
    checks
        .iter()
        .map(|c| match c.consecutive_failures {
            0 => format!("{} ok {}", shown(&c.kind), when(c.last_at_ms)),
            n => format!("{} failed {n}x {}: {}", shown(&c.kind), when(c.last_at_ms), shown(&c.last_result)),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A figure of a reading, or `-` when there is no reading or it lacks it.
fn usage_cell(
    usage: Option<&proto::ResourceUsage>,
    figure: impl FnOnce(&proto::ResourceUsage) -> Option<String>,
) -> String {
    usage.and_then(figure).unwrap_or_else(|| "-".to_owned())
}

/// Seconds to a tenth below a minute ("3.2s"), then as an age ("5m 12s").
fn cpu_time(us: u64) -> String {
    if us < 60_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else {
        age(Duration::from_micros(us))
    }
}

/// Text from corrald as it may reach a terminal: corrald escapes what it
/// echoes, but whatever answers on the socket is not trusted to have done
/// so. Each line is neutralised on its own, so multi-line answers keep
/// their lines, and corrald's own escapes show as they are.
fn shown(text: &str) -> String {
    text.split('\n').map(neutralise).collect::<Vec<_>>().join("\n")
}

/// JSON with every character the sanitiser would escape written as a
/// `\u` escape: the same JSON to a parser, nothing a terminal acts on.
fn json_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut units = [0u16; 2];
    for c in json.chars() {
        let hidden = if c.is_ascii() { c == '\u{7f}' } else { neutralise(c.encode_utf8(&mut [0; 4])) != c.to_string() };
        if hidden {
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn dash_if(empty: bool, value: impl FnOnce() -> String) -> String {
    if empty {
        "-".to_owned()
    } else {
        value()
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded so
/// lines carry no trailing blanks.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = headers.iter().map(|h| h.to_string()).collect();
    let mut text = String::new();
    for row in std::iter::once(header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}
