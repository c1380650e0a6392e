//! `corralctl top` in a real terminal (tmux, 80x24) against a real corrald:
//! the groups and workers it shows, a killed worker's restart, the stop key
//! (declined, then confirmed: the worker stops and the audit trail has it),
//! following one worker, a read-tier user's denial, the terminal as it was
//! after q, Ctrl-C and a panic, and the plain table printed without a
//! terminal.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Without scopes whatever the host runs: the screen is the same.
const NO_SCOPES: &str = "scopes = \"off\"\n";

fn web(count: u32) -> String {
    demo_group("web", count, &[], "restart = \"always\"\nrestart_backoff_initial = \"100ms\"\n")
}

fn top_command(c: &Corrald) -> String {
    format!("{CORRALCTL} --socket {} top", path_str(&c.socket))
}

/// The screen line of a row: its name is its first word, after the
/// selection mark if any.
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().filter(|w| *w != ">").collect::<Vec<_>>())
        .find(|words| words.first() == Some(&name))
}

/// The RST column of a worker's row (NAME STATE PID CPU MEM RST ...).
fn restarts(screen: &str, worker: &str) -> Option<u32> {
    row(screen, worker)?.get(5)?.parse().ok()
}

/// A reading in the CPU and MEM columns: `0.3%`, `2.1M`.
fn has_usage(row: &[&str]) -> bool {
    row[3].ends_with('%') && row[4].ends_with(['K', 'M', 'G'])
}

fn shows_fleet(screen: &str, workers: &[&str]) -> bool {
    screen.contains("events live") && workers.iter().all(|w| row(screen, w).is_some_and(|r| r[1] == "ready"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_groups_workers_and_a_killed_workers_restart_at_80x24() {
    let mut c =
        Corrald::new(&format!("{NO_SCOPES}usage_interval = \"200ms\"\n{}{}", web(2), demo_group("db", 1, &[], "")));
    c.start();
    c.wait_ready("web", 2).await;
    c.wait_ready("db", 1).await;
    let tmux = Tmux::start(c.dir.path(), 80, 24, &top_command(&c));
    // CPU needs two readings, so the first screens may show `-`.
    let screen = tmux.screen_until("top to show both groups' workers ready, with what they use", |s| {
        shows_fleet(s, &["web-1", "web-2", "db-1"])
            && ["web", "web-1", "web-2", "db", "db-1"].iter().all(|r| row(s, r).is_some_and(|r| has_usage(&r)))
    });
    assert_eq!(screen.lines().count(), 24, "the whole window is used:\n{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    let header = row(&screen, "NAME").expect("a header row");
    assert_eq!(header, ["NAME", "STATE", "PID", "CPU", "MEM", "RST", "LAST", "EXIT", "HEALTH"], "{screen}");
    let web_row = row(&screen, "web").expect("the group's row");
    assert_eq!(web_row[1..3], ["running", "2/2"], "{screen}");
    assert_eq!(web_row[5], "0", "{screen}");
    assert!(screen.lines().last().unwrap().starts_with("q quit"), "the keys are on the last line:\n{screen}");

    let pid = c.pids("web").await["web-1"];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let screen = tmux.screen_until("web-1's restart on screen", |s| {
        restarts(s, "web-1") == Some(1) && row(s, "web-1").is_some_and(|r| r[1] == "ready" && r[2] != pid.to_string())
    });
    assert!(row(&screen, "web-1").unwrap().join(" ").contains("killed by SIGKILL"), "last exit:\n{screen}");
    assert_eq!(row(&screen, "web").unwrap()[5], "1", "the group adds its workers' restarts:\n{screen}");
    assert!(screen.contains(&format!("web-1: killed by SIGKILL (pid {pid})")), "the event in the log:\n{screen}");
    assert_eq!(restarts(&screen, "web-2"), Some(0), "{screen}");
    tmux.keys(&["q"]);
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_key_asks_first_and_once_confirmed_stops_the_selected_worker_on_the_audit_trail() {
    let mut c = Corrald::new("");
    let json = c.dir.path().join("audit.jsonl");
    c.write_config(&format!("{NO_SCOPES}audit_logs_json_target = {json:?}\n{}", web(2)));
    c.start();
    c.wait_ready("web", 2).await;
    let tmux = Tmux::start(c.dir.path(), 80, 24, &top_command(&c));
    tmux.screen_until("top to show the workers", |s| shows_fleet(s, &["web-1", "web-2"]));
    // The group's row is selected first; web-2 is two rows down.
    tmux.keys(&["Down", "j"]);
    tmux.screen_until("web-2 selected", |s| s.lines().any(|l| l.trim_start().starts_with("> ") && l.contains("web-2")));
    tmux.keys(&["s"]);
    tmux.screen_until("the question", |s| s.contains("stop web-2? y/n"));
    tmux.keys(&["n"]);
    tmux.screen_until("the stop declined", |s| s.contains("stop web-2: not sent"));
    assert!(worker(&c.workers().await, "web-2").pid != 0, "a declined stop sends nothing");

    tmux.keys(&["s"]);
    tmux.screen_until("the question again", |s| s.contains("stop web-2? y/n"));
    tmux.keys(&["y"]);
    let screen = tmux.screen_until("corrald's answer and web-2 stopped on screen", |s| {
        s.contains("stop web-2: OK") && row(s, "web-2").is_some_and(|r| r[1] == "stopped")
    });
    assert_eq!(row(&screen, "web-1").unwrap()[1], "ready", "only the selected worker:\n{screen}");
    let workers = c.workers().await;
    assert_eq!(worker(&workers, "web-2").state, "stopped");
    assert_eq!(worker(&workers, "web-1").state, "ready");
    let records = poll_blocking("the stop's audit records", PATIENCE, || {
        holding(json_lines(&json), |r| r.iter().any(|r| r["command"] == "Stop" && r["result"] == "ok"))
    });
    let stop: Vec<_> = records.iter().filter(|r| r["command"] == "Stop").collect();
    assert!(stop.iter().all(|r| r["worker"] == "web-2"), "{stop:?}");
    assert!(stop.iter().all(|r| r["actor"]["comm"] == "corralctl"), "{stop:?}");

    // The log pane, below its title line: following web-1 leaves web-2's
    // events out.
    let log = |screen: &str| {
        let title = |l: &&str| !(l.starts_with(" events ") || l.starts_with(" following "));
        screen.lines().skip_while(title).skip(1).take(6).collect::<Vec<_>>().join("\n")
    };
    tmux.screen_until("web-2's exit in the log", |s| log(s).contains("web-2: exited 0"));
    tmux.keys(&["k", "f"]);
    let screen = tmux.screen_until("web-1 followed", |s| s.contains("following web-1"));
    assert!(!log(&screen).contains("web-2"), "{screen}");
    tmux.keys(&["Escape"]);
    tmux.screen_until("all events again", |s| log(s).contains("web-2: exited 0"));
    tmux.keys(&["q"]);
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_tier_user_watches_and_is_told_an_action_is_denied() {
    needs_root("top runs as another user");
    let mut c = Corrald::new("");
    let (outsider, _) = OUTSIDER;
    c.write_config(&format!("{NO_SCOPES}command_allowed_uids = [{outsider}]\n{}{}", c.share_with_outsider(), web(1)));
    c.start();
    c.wait_ready("web", 1).await;
    let command = format!("setpriv --reuid {outsider} --regid {} --clear-groups {}", OUTSIDER.1, top_command(&c));
    let tmux = Tmux::start(c.dir.path(), 80, 24, &command);
    tmux.screen_until("the outsider's top to show web-1", |s| shows_fleet(s, &["web-1"]));
    tmux.keys(&["r"]);
    tmux.screen_until("the question", |s| s.contains("restart web? y/n"));
    tmux.keys(&["y"]);
    let screen = tmux.screen_until("the denial", |s| s.contains("restart web: FAILURE: denied: uid 65534"));
    assert_eq!(restarts(&screen, "web-1"), Some(0), "nothing restarted:\n{screen}");
    assert_eq!(worker(&c.workers().await, "web-1").restarts, 0);
    tmux.keys(&["q"]);
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q_and_ctrl_c_leave_the_screen_and_the_terminal_modes_as_they_were() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}", web(1)));
    c.start();
    c.wait_ready("web", 1).await;
    let tmux = Tmux::start(c.dir.path(), 80, 24, "env PS1='shell> ' bash --norc --noprofile");
    tmux.screen_until("the shell's prompt", |s| s.contains("shell>"));
    for (n, quit) in ["q", "C-c"].into_iter().enumerate() {
        let modes = c.dir.path().join(format!("stty-{n}.txt"));
        // The shell records the modes top leaves behind, before its line
        // editor sets its own.
        tmux.type_text(&format!("clear; {}; stty -a > {}", top_command(&c), path_str(&modes)));
        tmux.keys(&["Enter"]);
        tmux.screen_until("top", |s| shows_fleet(s, &["web-1"]));
        tmux.keys(&[quit]);
        let screen = tmux.screen_until("the shell again", |s| !s.contains("q quit") && s.contains("shell>"));
        assert!(row(&screen, "web-1").is_none(), "{quit}: the alternate screen is left:\n{screen}");
        let stty = poll_blocking("stty's output", PATIENCE, || {
            holding(std::fs::read_to_string(&modes).unwrap_or_default(), |t| t.contains("icanon"))
        });
        let words: Vec<&str> = stty.split_whitespace().collect();
        for mode in ["icanon", "echo", "isig", "icrnl", "opost"] {
            assert!(words.contains(&mode), "{quit}: {mode} is on again: {stty}");
        }
    }
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (the README's test command, tests/run-all, sets it)"
)]
async fn a_panic_leaves_the_screen_and_the_terminal_modes_as_they_were_and_says_why() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}", web(1)));
    c.start();
    c.wait_ready("web", 1).await;
    let modes = c.dir.path().join("stty.txt");
    let tmux = Tmux::start(c.dir.path(), 80, 24, "env PS1='shell> ' bash --norc --noprofile");
    tmux.screen_until("the shell's prompt", |s| s.contains("shell>"));
    // Without a backtrace the panic's message stays on the screen.
    tmux.type_text(&format!(
        "RUST_BACKTRACE=0 CORRAL_FAULT_TOP_PANIC=1 {}; echo \"exit $?\"; stty -a > {}",
        top_command(&c),
        path_str(&modes)
    ));
    tmux.keys(&["Enter"]);
    tmux.screen_until("top", |s| shows_fleet(s, &["web-1"]));
    tmux.keys(&["!"]);
    let screen = tmux.screen_until("the shell again", |s| !s.contains("q quit") && s.contains("exit 101"));
    assert!(screen.contains("injected fault: CORRAL_FAULT_TOP_PANIC"), "the panic's message is readable:\n{screen}");
    assert!(row(&screen, "web-1").is_none(), "the alternate screen is left:\n{screen}");
    let stty = poll_blocking("stty's output", PATIENCE, || {
        holding(std::fs::read_to_string(&modes).unwrap_or_default(), |t| t.contains("icanon"))
    });
    let words: Vec<&str> = stty.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(words.contains(&mode), "{mode} is on again: {stty}");
    }
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_top_prints_the_table_every_interval_or_once() {
    let mut c = Corrald::new(&format!("{NO_SCOPES}{}", web(2)));
    c.start();
    c.wait_ready("web", 2).await;
    let (code, out, err) = c.ctl(&["top", "--once"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("corrald ") && lines[0].ends_with("1 groups, 2 workers"), "{out}");
    let words = |line: &str| line.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(words(lines[1]), ["NAME", "STATE", "PID", "CPU", "MEM", "RST", "LAST", "EXIT", "HEALTH"], "{out}");
    assert_eq!(words(lines[2])[..3], ["web", "running", "2/2"].map(String::from), "{out}");
    assert_eq!(words(lines[3])[..2], ["web-1".to_string(), "ready".to_string()], "{out}");
    assert_eq!(words(lines[4])[..2], ["web-2".to_string(), "ready".to_string()], "{out}");
    assert_eq!(lines.len(), 5, "{out}");

    // Piped, it prints a table every interval until the reader goes.
    let child = Command::new(CORRALCTL)
        .args(["--socket", &path_str(&c.socket), "top", "--interval", "200ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn corralctl top");
    let mut child = KillOnDrop(child);
    let rx = stdout_lines(child.0.stdout.take().unwrap());
    let mut headers = 0;
    while headers < 3 {
        let line = rx.recv_timeout(PATIENCE).expect("a table every interval");
        if line.starts_with("NAME ") {
            headers += 1;
        }
    }
    drop(rx);
    drop(child);
    let (code, _, err) = corralctl(&c.dir.path().join("absent.sock"), &["top", "--once"]);
    assert_eq!(code, Some(3), "no corrald: no answer, {err}");
    assert!(err.contains("no socket at"), "{err}");
    c.shutdown_ok().await;
}
