//! `corralctl top`: the fleet live, full screen, with keys to act on it.
//!
//! What it shows comes from two connections of its own: a subscription to
//! corrald's events (the log at the bottom, and the cue to list again at
//! once) and a status plus worker listing every interval. Each key that
//! acts (stop, restart, scale) sends the same request `corralctl` would, on
//! a connection of its own, so corrald authorises and audits it like any
//! other; its final answer is shown on the status line. Without a terminal
//! on stdout, or with `--once`, it prints the same table as plain text.

use std::collections::VecDeque;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, HighlightSpacing, Paragraph, Row, Table, TableState};
use ratatui::{DefaultTerminal, Frame};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::units::{age, bytes, percent};
use super::{event_line, status_name, Client, CtlError};
use crate::proto::{self, request, response, Status};
use crate::sanitise::neutralise;

/// How `corralctl top` runs.
pub struct Options {
    pub socket: PathBuf,
    /// How often the listing is asked for, besides after each event.
    pub interval: Duration,
    /// Print the table once and exit.
    pub once: bool,
}

/// Runs `top` until the user quits (or, printing plain tables, until
/// corrald cannot be reached); the error is one line for the user.
pub fn run(options: Options) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the runtime: {err}"))?;
    runtime.block_on(async {
        if options.once || !io::stdout().is_terminal() {
            return plain(&options).await;
        }
        // A corrald that is not there is said before the screen is taken.
        let first = fetch(&options.socket).await.map_err(|err| err.to_string())?;
        live(options, first).await
    })
}

/// One reading of the fleet.
#[derive(Default)]
struct Fleet {
    status: proto::SupervisorStatus,
    workers: Vec<proto::WorkerInfo>,
}

async fn fetch(socket: &Path) -> Result<Fleet, CtlError> {
    let mut client = Client::connect(socket).await?;
    let answer = client.call(request::Command::Status(proto::StatusRequest {}), |_| {}).await?;
    let status = match answer.content {
        Some(response::Content::SupervisorStatus(status)) if answer.status() == Status::Ok => status,
        _ => return Err(refused("status", &answer)),
    };
    // A long listing comes in parts before its final answer.
    let mut workers = Vec::new();
    let answer = client
        .call(request::Command::ListWorkers(proto::ListWorkers { group: String::new() }), |part| {
            if let Some(response::Content::Workers(list)) = &part.content {
                workers.extend(list.workers.iter().cloned());
            }
        })
        .await?;
    match answer.content {
        Some(response::Content::Workers(list)) if answer.status() == Status::Ok => workers.extend(list.workers),
        _ => return Err(refused("workers", &answer)),
    }
    Ok(Fleet { status, workers })
}

fn refused(what: &str, answer: &proto::Response) -> CtlError {
    CtlError::Protocol(format!("{what}: {} {}", status_name(answer.status), answer.message))
}

/// The table's columns, shared by the screen and the plain text.
const HEADERS: [&str; 8] = ["NAME", "STATE", "PID", "CPU", "MEM", "RST", "LAST EXIT", "HEALTH"];

/// One row: a group (its ready workers over those it wants in the PID
/// column, what its workers use and their restarts added up) or one of its
/// workers below it.
struct Entry {
    /// What the action keys act on: the group or the worker id.
    target: String,
    group: String,
    is_worker: bool,
    cells: [String; 8],
}

fn entries(fleet: &Fleet) -> Vec<Entry> {
    let mut rows = Vec::new();
    let mut groups: Vec<&str> = fleet.status.groups.iter().map(|g| g.name.as_str()).collect();
    // A worker listed before its group's status caught up still shows.
    for w in &fleet.workers {
        if !groups.contains(&w.group.as_str()) {
            groups.push(&w.group);
        }
    }
    for name in groups {
        let workers: Vec<&proto::WorkerInfo> = fleet.workers.iter().filter(|w| w.group == name).collect();
        let restarts: u32 = workers.iter().map(|w| w.restarts).sum();
        let cells = match fleet.status.groups.iter().find(|g| g.name == name) {
            Some(g) => [
                shown(&g.name),
                shown(&g.state),
                format!("{}/{}", g.ready, g.desired),
                cpu(g.usage.as_ref()),
                memory(g.usage.as_ref()),
                restarts.to_string(),
                shown(&g.reason),
                String::new(),
            ],
            None => {
                let mut cells: [String; 8] = Default::default();
                cells[0] = shown(name);
                cells[5] = restarts.to_string();
                cells
            }
        };
        rows.push(Entry { target: name.to_string(), group: name.to_string(), is_worker: false, cells });
        for w in workers {
            rows.push(Entry {
                target: w.id.clone(),
                group: w.group.clone(),
                is_worker: true,
                cells: [
                    format!("  {}", shown(&w.id)),
                    shown(&w.state),
                    if w.pid == 0 { "-".to_string() } else { w.pid.to_string() },
                    cpu(w.usage.as_ref()),
                    memory(w.usage.as_ref()),
                    w.restarts.to_string(),
                    if w.last_exit.is_empty() { "-".to_string() } else { shown(&w.last_exit) },
                    health(&w.health),
                ],
            });
        }
    }
    rows
}

/// CPU over corrald's last interval of readings; `-` before its second
/// reading, or with readings off.
fn cpu(usage: Option<&proto::ResourceUsage>) -> String {
    usage.and_then(|u| u.cpu_percent).map_or_else(|| "-".to_string(), percent)
}

/// Memory in use in binary units with one decimal ("48.1M"), as
/// `corralctl workers` and systemctl show it.
fn memory(usage: Option<&proto::ResourceUsage>) -> String {
    usage.map_or_else(|| "-".to_string(), |u| bytes(u.memory_bytes))
}

/// Each check's last word, short: `ping ok`, `liveness 3x: refused`.
fn health(checks: &[proto::HealthCheck]) -> String {
    checks
        .iter()
        .map(|c| match c.consecutive_failures {
            0 => format!("{} ok", shown(&c.kind)),
            n => format!("{} {n}x: {}", shown(&c.kind), shown(&c.last_result)),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn summary(status: &proto::SupervisorStatus, workers: usize) -> String {
    let version = if status.version.is_empty() { String::new() } else { format!(" {}", shown(&status.version)) };
    format!(
        "corrald{version} pid {} up {}, {} groups, {workers} workers",
        status.pid,
        age(Duration::from_millis(status.uptime_ms)),
        status.groups.len()
    )
}

/// Text from the socket, with nothing a terminal would act on.
fn shown(text: &str) -> String {
    neutralise(&text.replace('\n', " "))
}

/// The plain table: the summary line, then left-aligned columns.
fn plain_text(fleet: &Fleet) -> String {
    let rows = entries(fleet);
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(&row.cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = format!("{}\n", summary(&fleet.status, fleet.workers.len()));
    let header = HEADERS.map(str::to_string);
    for cells in std::iter::once(&header).chain(rows.iter().map(|r| &r.cells)) {
        let line: String = cells.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}  ")).collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

async fn plain(options: &Options) -> Result<(), String> {
    let mut first = true;
    loop {
        let fleet = fetch(&options.socket).await.map_err(|err| err.to_string())?;
        let mut text = plain_text(&fleet);
        if !first {
            text.insert(0, '\n');
        }
        first = false;
        let mut stdout = io::stdout().lock();
        match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            // The reader went away (`corralctl top | head`): its choice.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(err) => return Err(format!("cannot write output: {err}")),
            Ok(()) => {}
        }
        drop(stdout);
        if options.once {
            return Ok(());
        }
        tokio::time::sleep(options.interval).await;
    }
}

/// What the screen's loop is told.
enum Msg {
    Key(KeyEvent),
    Redraw,
    Fleet(Result<Fleet, String>),
    Event(proto::Event),
    /// The subscription's state: "live", or why it is not.
    Stream(String),
    /// The final answer to an action, as the status line shows it.
    Answer(String),
    /// A journal line of the worker followed.
    Journal(String, String),
    Quit,
}

/// A request a key asks for, sent once confirmed when it takes workers down.
enum Action {
    Stop(String),
    Restart(String),
    Scale(String, u32),
}

impl Action {
    fn describe(&self) -> String {
        match self {
            Action::Stop(t) => format!("stop {}", shown(t)),
            Action::Restart(t) => format!("restart {}", shown(t)),
            Action::Scale(g, n) => format!("scale {} {n}", shown(g)),
        }
    }

    fn command(&self) -> request::Command {
        match self {
            Action::Stop(t) => request::Command::Stop(proto::Stop { target: t.clone(), hard: false }),
            Action::Restart(t) => {
                request::Command::Restart(proto::Restart { target: t.clone(), rolling: false, max_unavailable: 0 })
            }
            Action::Scale(g, n) => request::Command::Scale(proto::Scale { group: g.clone(), count: *n }),
        }
    }
}

/// How many events are kept for the log pane.
const KEPT_EVENTS: usize = 500;

struct Logged {
    group: String,
    worker: String,
    line: String,
}

struct View {
    socket: Arc<PathBuf>,
    fleet: Fleet,
    fleet_error: Option<String>,
    stream: String,
    log: VecDeque<Logged>,
    table: TableState,
    /// The row whose events (and journal lines, for a worker) are shown.
    follow: Option<(String, Option<JoinHandle<()>>)>,
    pending: Option<Action>,
    status_line: String,
    tx: mpsc::UnboundedSender<Msg>,
}

async fn live(options: Options, first: Fleet) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let socket = Arc::new(options.socket);
    let relist = Arc::new(Notify::new());
    tokio::spawn(lister(socket.clone(), options.interval, relist.clone(), tx.clone()));
    tokio::spawn(subscriber(socket.clone(), relist, tx.clone()));
    tokio::spawn(signals(tx.clone()));
    // crossterm's reads block: a thread of their own, left to end with
    // the process.
    let keys = tx.clone();
    std::thread::spawn(move || loop {
        let msg = match crossterm::event::read() {
            Ok(TermEvent::Key(key)) if key.kind == KeyEventKind::Press => Msg::Key(key),
            Ok(TermEvent::Resize(..)) => Msg::Redraw,
            Ok(_) => continue,
            Err(_) => Msg::Quit,
        };
        if keys.send(msg).is_err() {
            return;
        }
    });
    let mut view = View {
        socket,
        fleet: first,
        fleet_error: None,
        stream: "connecting".into(),
        log: VecDeque::new(),
        table: TableState::default().with_selected(Some(0)),
        follow: None,
        pending: None,
        status_line: String::new(),
        tx,
    };
    // try_init also hooks panics so that they leave raw mode and the
    // alternate screen before their message is printed.
    let mut terminal = ratatui::try_init().map_err(|err| format!("cannot set up the terminal: {err}"))?;
    let result = screen(&mut terminal, &mut view, &mut rx).await;
    drop(terminal);
    ratatui::restore();
    if let Some((_, Some(journal))) = view.follow.take() {
        journal.abort();
    }
    result
}

async fn screen(
    terminal: &mut DefaultTerminal,
    view: &mut View,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
) -> Result<(), String> {
    loop {
        terminal.draw(|frame| draw(frame, view)).map_err(|err| format!("cannot draw: {err}"))?;
        let Some(msg) = rx.recv().await else { return Ok(()) };
        match msg {
            Msg::Key(key) => {
                if !view.key(key) {
                    return Ok(());
                }
            }
            Msg::Quit => return Ok(()),
            Msg::Redraw => {}
            Msg::Fleet(Ok(fleet)) => {
                view.fleet = fleet;
                view.fleet_error = None;
            }
            Msg::Fleet(Err(err)) => view.fleet_error = Some(err),
            Msg::Event(event) => {
                view.log(Logged { group: event.group.clone(), worker: event.worker.clone(), line: short_line(&event) })
            }
            Msg::Stream(state) => view.stream = state,
            Msg::Answer(text) => view.status_line = text,
            Msg::Journal(worker, line) => {
                let line = format!("{} journal: {}", shown(&worker), shown(&line));
                view.log(Logged { group: String::new(), worker, line })
            }
        }
    }
}

/// An event's line with its time of day only: the date takes a quarter of
/// a narrow screen.
fn short_line(event: &proto::Event) -> String {
    let line = event_line(event);
    let line = match line.split_once(' ') {
        Some((at, rest)) => format!("{} {rest}", at.get(11..19).unwrap_or(at)),
        None => line,
    };
    shown(&line)
}

impl View {
    fn log(&mut self, entry: Logged) {
        if self.log.len() == KEPT_EVENTS {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    fn selected(&self) -> Option<Entry> {
        let mut rows = entries(&self.fleet);
        let at = self.table.selected()?.min(rows.len().checked_sub(1)?);
        Some(rows.swap_remove(at))
    }

    /// Handles a key; false when it quits.
    fn key(&mut self, key: KeyEvent) -> bool {
        let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl_c {
            return false;
        }
        // Test builds only: a key that panics, so a test can see the panic
        // hook give the terminal back.
        #[cfg(feature = "fault-injection")]
        if key.code == KeyCode::Char('!') && std::env::var_os("CORRAL_FAULT_TOP_PANIC").is_some() {
            panic!("injected fault: CORRAL_FAULT_TOP_PANIC");
        }
        if let Some(action) = self.pending.take() {
            self.status_line = if key.code == KeyCode::Char('y') {
                self.send(action)
            } else {
                format!("{}: not sent", action.describe())
            };
            return true;
        }
        let rows = entries(&self.fleet).len();
        match key.code {
            KeyCode::Char('q') => return false,
            KeyCode::Down | KeyCode::Char('j') => {
                let next = self.table.selected().map_or(0, |i| i + 1);
                self.table.select(Some(next.min(rows.saturating_sub(1))));
            }
            KeyCode::Up | KeyCode::Char('k') => {
                let next = self.table.selected().map_or(0, |i| i.saturating_sub(1));
                self.table.select(Some(next.min(rows.saturating_sub(1))));
            }
            KeyCode::Char('s') => self.confirm(self.selected().map(|e| Action::Stop(e.target))),
            KeyCode::Char('r') => self.confirm(self.selected().map(|e| Action::Restart(e.target))),
            KeyCode::Char('-') => self.confirm(self.scale(-1)),
            KeyCode::Char('+') => {
                if let Some(action) = self.scale(1) {
                    self.status_line = self.send(action);
                }
            }
            KeyCode::Char('f') | KeyCode::Enter => self.toggle_follow(),
            KeyCode::Esc => self.unfollow(),
            _ => {}
        }
        true
    }

    /// The group of the selected row scaled by `step`, from what it wants now.
    fn scale(&self, step: i64) -> Option<Action> {
        let entry = self.selected()?;
        let desired = self.fleet.status.groups.iter().find(|g| g.name == entry.group)?.desired;
        let count = u32::try_from((i64::from(desired) + step).max(0)).ok()?;
        Some(Action::Scale(entry.group, count))
    }

    /// Asks before an action that takes workers down.
    fn confirm(&mut self, action: Option<Action>) {
        if let Some(action) = action {
            self.status_line = format!("{}? y/n", action.describe());
            self.pending = Some(action);
        }
    }

    fn send(&self, action: Action) -> String {
        let (socket, tx, what) = (self.socket.clone(), self.tx.clone(), action.describe());
        let sent = format!("{what}: sent");
        tokio::spawn(async move {
            let answer = async {
                let mut client = Client::connect(&socket).await?;
                client.call(action.command(), |_| {}).await
            };
            let text = match answer.await {
                Ok(answer) => answer_text(&what, &answer),
                Err(err) => format!("{what}: {}", shown(&err.to_string())),
            };
            let _ = tx.send(Msg::Answer(text));
        });
        sent
    }

    fn toggle_follow(&mut self) {
        let Some(entry) = self.selected() else { return };
        let same = self.follow.as_ref().is_some_and(|(t, _)| *t == entry.target);
        self.unfollow();
        if same {
            return;
        }
        let journal = entry.is_worker.then(|| tokio::spawn(journal(entry.target.clone(), self.tx.clone())));
        self.follow = Some((entry.target, journal));
    }

    fn unfollow(&mut self) {
        if let Some((_, Some(journal))) = self.follow.take() {
            journal.abort();
        }
    }

    fn follows(&self, logged: &Logged) -> bool {
        match &self.follow {
            None => true,
            // A group's row takes in its workers' events too.
            Some((target, _)) => logged.worker == *target || logged.group == *target,
        }
    }
}

/// An action's final answer, with the first worker that failed.
fn answer_text(what: &str, answer: &proto::Response) -> String {
    let mut text = format!("{what}: {}", status_name(answer.status));
    if !answer.message.is_empty() {
        text.push_str(&format!(": {}", shown(&answer.message)));
    }
    if let Some(response::Content::Outcome(outcome)) = &answer.content {
        if let Some(f) = outcome.failures.first() {
            text.push_str(&format!(" ({} {})", shown(&f.worker), f.kind().text()));
        }
    }
    text
}

fn draw(frame: &mut Frame, view: &mut View) {
    let [head, table, log, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(7),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let head_text = match &view.fleet_error {
        Some(err) => format!("corrald unreachable: {}", shown(err)),
        None => format!("{}, events {}", summary(&view.fleet.status, view.fleet.workers.len()), view.stream),
    };
    frame.render_widget(Paragraph::new(head_text), head);

    let rows = entries(&view.fleet);
    let name_width = rows.iter().map(|r| r.cells[0].chars().count()).max().unwrap_or(0).clamp(6, 24);
    let widths = [
        Constraint::Length(name_width as u16),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(3),
        Constraint::Fill(1),
        Constraint::Fill(1),
    ];
    if let Some(selected) = view.table.selected() {
        view.table.select(Some(selected.min(rows.len().saturating_sub(1))));
    }
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let table_widget = Table::new(rows.into_iter().map(|r| Row::new(r.cells)), widths)
        .header(Row::new(HEADERS).style(bold))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ")
        .highlight_spacing(HighlightSpacing::Always);
    frame.render_stateful_widget(table_widget, table, &mut view.table);

    let title = match &view.follow {
        Some((target, _)) => format!(" following {} (Esc: all) ", shown(target)),
        None => " events ".to_string(),
    };
    let shown_lines = usize::from(log.height.saturating_sub(1));
    let mut lines: Vec<Line> = view
        .log
        .iter()
        .rev()
        .filter(|l| view.follows(l))
        .take(shown_lines)
        .map(|l| Line::raw(l.line.clone()))
        .collect();
    lines.reverse();
    frame.render_widget(Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(title)), log);

    frame.render_widget(Paragraph::new(view.status_line.clone()).style(bold), status);
    frame.render_widget(Paragraph::new("q quit  j/k move  s stop  r restart  +/- scale  f follow"), keys);
}

/// Lists the fleet every interval, and soon after each event.
async fn lister(socket: Arc<PathBuf>, interval: Duration, relist: Arc<Notify>, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        let fleet = fetch(&socket).await.map_err(|err| err.to_string());
        if tx.send(Msg::Fleet(fleet)).is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            // Events come in bursts (exited, restart scheduled, spawned):
            // one listing after a short pause covers the lot.
            () = relist.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Follows corrald's events, subscribing again a second after the stream
/// ends or breaks (corrald restarting, upgrading).
async fn subscriber(socket: Arc<PathBuf>, relist: Arc<Notify>, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        let state = match subscription(&socket, &relist, &tx).await {
            Ok(()) => "ended".to_string(),
            Err(err) => format!("lost ({err})"),
        };
        if tx.send(Msg::Stream(state)).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscription(socket: &Path, relist: &Notify, tx: &mpsc::UnboundedSender<Msg>) -> Result<(), CtlError> {
    let mut client = Client::connect(socket).await?;
    client.send(request::Command::Subscribe(proto::Subscribe::default())).await?;
    while let Some(answer) = client.recv().await? {
        if answer.status() != Status::Processing {
            return Ok(());
        }
        let msg = match answer.content {
            Some(response::Content::Event(event)) => {
                relist.notify_one();
                Msg::Event(event)
            }
            _ => Msg::Stream("live".into()),
        };
        if tx.send(msg).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The followed worker's journal lines, while journalctl can give them:
/// where there is no journal, its error goes nowhere and nothing shows.
async fn journal(worker: String, tx: mpsc::UnboundedSender<Msg>) {
    let child = tokio::process::Command::new("journalctl")
        .args(["--follow", "--lines=10", "--output=cat", "--quiet"])
        .arg(format!("CORRAL_WORKER_ID={worker}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return };
    let Some(stdout) = child.stdout.take() else { return };
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(Msg::Journal(worker.clone(), line)).is_err() {
            return;
        }
    }
}

/// SIGTERM and SIGHUP (the terminal closed) end `top` as q does, so the
/// terminal is left as it was found.
async fn signals(tx: mpsc::UnboundedSender<Msg>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    let _ = tx.send(Msg::Quit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, group: &str, restarts: u32) -> proto::WorkerInfo {
        proto::WorkerInfo {
            id: id.into(),
            group: group.into(),
            pid: 42,
            state: "ready".into(),
            restarts,
            ..Default::default()
        }
    }

    #[test]
    fn each_group_comes_before_its_workers_with_their_restarts_added_up() {
        let fleet = Fleet {
            status: proto::SupervisorStatus {
                groups: vec![proto::GroupStatus {
                    name: "web".into(),
                    state: "running".into(),
                    desired: 2,
                    ready: 2,
                    ..Default::default()
                }],
                ..Default::default()
            },
            workers: vec![worker("web-1", "web", 1), worker("web-2", "web", 2), worker("db-1", "db", 0)],
        };
        let rows: Vec<(String, [String; 8])> = entries(&fleet).into_iter().map(|e| (e.target, e.cells)).collect();
        let targets: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(targets, ["web", "web-1", "web-2", "db", "db-1"]);
        assert_eq!(rows[0].1[2], "2/2");
        assert_eq!(rows[0].1[5], "3");
        assert_eq!(rows[1].1[0], "  web-1");
    }

    #[test]
    fn usage_reads_short_and_a_missing_figure_as_a_dash() {
        let usage =
            |memory_bytes, cpu_percent| proto::ResourceUsage { memory_bytes, cpu_percent, ..Default::default() };
        assert_eq!(memory(Some(&usage(50_436_096, None))), "48.1M");
        assert_eq!(memory(Some(&usage(512, None))), "512B");
        assert_eq!(memory(None), "-");
        assert_eq!(cpu(Some(&usage(0, Some(12.345)))), "12.3%");
        assert_eq!(cpu(Some(&usage(0, None))), "-", "a single reading has no rate yet");
    }

    #[test]
    fn text_from_the_socket_cannot_reach_the_terminal_as_control_sequences() {
        assert!(!shown("evil\u{1b}[2Jname\nnext").contains(['\u{1b}', '\n']));
    }
}
