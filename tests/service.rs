//! corrald as a systemd service: the shipped units (installed with
//! `packaging/install`), sd_notify readiness, status and reload, socket
//! activation, the watchdog, and worker output in the journal.
//!
//! Like tests/systemd.rs these run inside a container booted with systemd
//! (`tests/systemd/run-suite`), one at a time, and assert what `systemctl`,
//! `journalctl` and `corralctl` print.

mod common;

use std::collections::BTreeSet;
use std::fmt::{self, Display};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use serde_json::Value;

const CONFIG: &str = "/etc/corral/corral.toml";
const SOCKET: &str = "/run/corral/corrald.sock";
const DROP_IN_DIR: &str = "/run/systemd/system/corrald.service.d";
const DEMO_INSTALLED: &str = "/usr/bin/corral-demo-worker";

/// corral installed as a package would be, with `groups` as its config.
/// Dropping it stops everything and removes what the test added, so the
/// next test starts clean even after a failure.
struct Installed;

impl Installed {
    fn new(config: &str) -> Installed {
        let bin_dir = Path::new(CORRALD).parent().expect("binary directory").display().to_string();
        let install = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/install");
        let (ok, out) = run(install, &["--bin-dir", &bin_dir]);
        assert!(ok, "packaging/install failed: {out}");
        std::fs::write(CONFIG, config).expect("write the config");
        systemctl(&["daemon-reload"]);
        Installed
    }

    fn drop_in(&self, text: &str) {
        std::fs::create_dir_all(DROP_IN_DIR).unwrap();
        std::fs::write(format!("{DROP_IN_DIR}/test.conf"), text).unwrap();
        systemctl(&["daemon-reload"]);
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("systemctl", &["kill", "-s", "SIGCONT", "systemd-journald.service"]);
        let _ = run("systemctl", &["stop", "corrald.service", "corrald.socket"]);
        let _ = run("systemctl", &["stop", "corral-*.scope"]);
        let _ = std::fs::remove_dir_all(DROP_IN_DIR);
        let _ = run("systemctl", &["reset-failed"]);
        let _ = run("systemctl", &["daemon-reload"]);
    }
}

/// Runs systemctl and asserts it succeeded.
fn systemctl(args: &[&str]) -> String {
    let (ok, out) = run("systemctl", args);
    assert!(ok, "systemctl {} failed: {out}\n{}", args.join(" "), corrald_journal());
    out
}

fn corrald_journal() -> String {
    run("journalctl", &["--no-pager", "-n", "40", "-u", "corrald.service"]).1
}

fn group(name: &str, count: u32, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[groups.{name}]\ncommand = \"{DEMO_INSTALLED}\"\nargs = [{}]\ncount = {count}\nstop_mode = \"protocol\"\n{extra}\n",
        args.join(", ")
    )
}

/// corral installed and started with demo workers that keep two units of
/// 400ms in flight each and log them to `log`.
struct Busy {
    _installed: Installed,
    log: String,
    _dir: tempfile::TempDir,
}

impl Busy {
    /// `groups` as (name, count, extra TOML), each worker run with `more_args` too.
    fn start(groups: &[(&str, u32, &str)], more_args: &[&str]) -> Busy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("work.log").display().to_string();
        let mut args = vec!["--concurrency", "2", "--unit-ms", "400", "--log", log.as_str()];
        args.extend_from_slice(more_args);
        let config: String = groups.iter().map(|(name, count, extra)| group(name, *count, &args, extra)).collect();
        let installed = Installed::new(&config);
        systemctl(&["start", "corrald.service"]);
        Busy { _installed: installed, log, _dir: dir }
    }
}

/// `corralctl --json ARGS`: every response, the final one last.
fn ctl(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (ok, out) = run(CORRALCTL, &full);
    assert!(ok, "corralctl {} failed: {out}\n{}", args.join(" "), corrald_journal());
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn supervisor_status() -> Value {
    ctl(&["status"]).pop().expect("a response")["supervisor"].clone()
}

fn group_status(status: &Value, name: &str) -> Value {
    status["groups"].as_array().unwrap().iter().find(|g| g["name"] == name).cloned().expect("group in status")
}

fn worker_pid(id: &str) -> u64 {
    let workers = ctl(&["workers"]).pop().unwrap();
    workers["workers"].as_array().unwrap().iter().find(|w| w["id"] == id).expect("worker listed")["pid"]
        .as_u64()
        .unwrap()
}

/// The distinct numbers of the demo's "line N" messages `journalctl` has
/// for one worker.
fn burst_lines_in_journal(worker: &str) -> BTreeSet<u64> {
    let _ = run("journalctl", &["--sync"]);
    let (_, out) = run("journalctl", &["--no-pager", "-o", "cat", &format!("CORRAL_WORKER_ID={worker}")]);
    out.lines().filter_map(|l| l.strip_prefix("line ")?.parse().ok()).collect()
}

/// Polls `check` within twice the test's patience (a booted systemd is
/// slower), showing the end of corrald's journal if it times out.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    poll_blocking(what, PATIENCE * 2, || check().map_err(WithJournal))
}

/// What a poll saw, shown with the end of corrald's journal, read only then.
struct WithJournal(String);

impl Display for WithJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.0, corrald_journal())
    }
}

/// Whether `systemctl show` gives `unit`'s `prop` the value `want`; the value if not.
fn shows(unit: &str, prop: &str, want: &str) -> Result<(), String> {
    let value = show(unit, prop);
    if value == want {
        Ok(())
    } else {
        Err(format!("{unit}: {prop}={value}"))
    }
}

/// Whether the demo workers logging to `log` have started `at_least` units.
fn units_started(log: &str, at_least: usize) -> Result<(), String> {
    let started = WorkLog::read(Path::new(log)).started.len();
    if started >= at_least {
        Ok(())
    } else {
        Err(format!("{started} units started"))
    }
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn start_returns_after_ready_with_a_status_line_and_reload_round_trips() {
    // Each worker takes 700 ms to report ready: a READY=1 sent before that
    // would let `systemctl start` return while they are still starting.
    let web = group("web", 3, &["--ready-delay-ms", "700"], "");
    let i = Installed::new(&web);
    systemctl(&["start", "corrald.service"]);
    let status = supervisor_status();
    assert_eq!(group_status(&status, "web")["ready"], 3, "start returned before the workers were ready: {status}");
    assert_eq!(show("corrald.service", "ActiveState"), "active");
    assert_eq!(show("corrald.service", "StatusText"), "3/3 workers ready in 1 scope");
    let text = systemctl(&["status", "--no-pager", "corrald.service"]);
    assert!(text.contains("Status: \"3/3 workers ready in 1 scope\""), "{text}");
    // corrald's own logs go natively to the journal, with structured fields.
    let own = journal(&["-u", "corrald.service", "SYSLOG_IDENTIFIER=corrald"]);
    let serving = own.iter().find(|e| e["MESSAGE"].as_str().is_some_and(|m| m.starts_with("corrald serving")));
    let serving = serving.unwrap_or_else(|| panic!("no 'corrald serving' entry: {own:?}"));
    assert_eq!(serving["_TRANSPORT"], "journal", "{serving}");
    assert_eq!(serving["PRIORITY"], "6", "{serving}");

    // A reload that adds a group returns once the group is up.
    let jobs = group("jobs", 2, &["--ready-delay-ms", "300"], "scope = \"worker\"");
    std::fs::write(CONFIG, format!("{web}{jobs}")).unwrap();
    systemctl(&["reload", "corrald.service"]);
    assert_eq!(group_status(&supervisor_status(), "jobs")["ready"], 2);
    assert_eq!(show("corrald.service", "StatusText"), "5/5 workers ready in 3 scopes");
    assert_eq!(show("corrald.service", "ActiveState"), "active");

    // A config corrald refuses makes the reload fail, and changes nothing.
    std::fs::write(CONFIG, format!("{web}{jobs}stop_timout = \"5s\"\n")).unwrap();
    let (ok, out) = run("systemctl", &["reload", "corrald.service"]);
    assert!(!ok, "a refused config must fail the reload: {out}");
    assert_eq!(show("corrald.service", "ActiveState"), "active");
    assert_eq!(show("corrald.service", "StatusText"), "5/5 workers ready in 3 scopes");
    let log: String = journal(&["-u", "corrald.service"]).iter().filter_map(|e| e["MESSAGE"].as_str()).collect();
    assert!(log.contains("key `groups.jobs.stop_timout`"), "the refusal names the key: {log}");
    drop(i);
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn socket_activation_starts_corrald_on_the_first_connection() {
    let _i = Installed::new(&group("web", 1, &[], ""));
    systemctl(&["start", "corrald.socket"]);
    assert_eq!(show("corrald.service", "ActiveState"), "inactive");
    let meta = std::fs::symlink_metadata(SOCKET).expect("the socket unit created the socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let inode = meta.ino();

    let status = supervisor_status();
    let pid = status["pid"].as_u64().unwrap();
    assert_eq!(show("corrald.service", "MainPID"), pid.to_string(), "the activated service answered");
    // It answers while its workers start; it is active once they are ready.
    wait_for("the activated service to be ready", || shows("corrald.service", "ActiveState", "active"));
    assert_eq!(std::fs::symlink_metadata(SOCKET).unwrap().ino(), inode, "corrald must serve the passed socket");

    // Stopping the service leaves the socket to its unit; the next client
    // starts corrald again.
    systemctl(&["stop", "corrald.service"]);
    assert_eq!(show("corrald.socket", "ActiveState"), "active");
    assert_eq!(std::fs::symlink_metadata(SOCKET).unwrap().ino(), inode, "the socket outlives corrald");
    let again = supervisor_status()["pid"].as_u64().unwrap();
    assert_ne!(again, pid);
    assert_eq!(show("corrald.service", "MainPID"), again.to_string());
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn stopping_the_service_drains_every_worker_and_leaves_no_scope() {
    let busy = Busy::start(&[("web", 3, ""), ("solo", 2, "scope = \"worker\"")], &[]);
    let log = busy.log.as_str();
    let units = systemctl(&["list-units", "--no-legend", "--plain", "corral-*"]);
    assert_eq!(units.lines().count(), 3, "{units}");
    wait_for("units of work in flight", || units_started(log, 10));

    systemctl(&["stop", "corrald.service"]);
    let work = WorkLog::read(Path::new(log));
    assert!(work.unfinished().is_empty(), "work cut off by the stop: {:?}", work.unfinished());
    assert_eq!(work.exits.len(), 5, "every worker exited after draining: {work:?}");
    assert_eq!(show("corrald.service", "Result"), "success");
    assert_eq!(show("corrald.service", "ExecMainStatus"), "0");
    let left = systemctl(&["list-units", "--all", "--no-legend", "--plain", "corral-*"]);
    assert_eq!(left.trim(), "", "scopes left behind");
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn worker_lines_reach_the_journal_under_the_workers_scope_and_none_is_lost() {
    let args = [
        "--say",
        "hello from web",
        "--complain",
        "<3>disk on fire",
        "--complain",
        "plain stderr",
        "--burst-lines",
        "100000",
    ];
    let _i = Installed::new(&group("web", 1, &args, "stderr_priority = \"warning\""));
    systemctl(&["start", "corrald.service"]);
    let pid = worker_pid("web-1").to_string();

    let got = wait_for("100000 lines in the journal", || {
        let got = burst_lines_in_journal("web-1");
        if got.len() == 100_000 {
            Ok(got)
        } else {
            Err(format!("{} of 100000 lines", got.len()))
        }
    });
    assert_eq!(got.first(), Some(&1));
    assert_eq!(got.last(), Some(&100_000));
    assert_eq!(supervisor_status()["output_dropped"], 0);

    let entries = journal(&["-u", "corral-web.scope"]);
    let find = |message: &str| {
        entries.iter().find(|e| e["MESSAGE"] == message).unwrap_or_else(|| panic!("no {message:?} under the scope"))
    };
    let hello = find("hello from web");
    assert_eq!(hello["CORRAL_WORKER_ID"], "web-1");
    assert_eq!(hello["CORRAL_GROUP"], "web");
    assert_eq!(hello["SYSLOG_IDENTIFIER"], "web");
    assert_eq!(hello["SYSLOG_PID"], pid.as_str());
    assert_eq!(hello["OBJECT_PID"], pid.as_str());
    assert_eq!(hello["OBJECT_SYSTEMD_UNIT"], "corral-web.scope");
    assert_eq!(hello["PRIORITY"], "6");
    assert_eq!(find("disk on fire")["PRIORITY"], "3", "a <3> prefix sets the priority");
    assert_eq!(find("plain stderr")["PRIORITY"], "4", "stderr lines get stderr_priority");

    let status = systemctl(&["status", "--no-pager", "-n", "200", "corral-web.scope"]);
    assert!(status.contains("hello from web"), "{status}");
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn journal_output_is_the_workers_own_stream_filed_under_its_own_scope() {
    let args = [
        "--say",
        "hello from web",
        "--complain",
        "<3>disk on fire",
        "--complain",
        "plain stderr",
        "--burst-lines",
        "5000",
    ];
    let extra = "output = \"journal\"\nscope = \"worker\"\nstderr_priority = \"warning\"";
    let _i = Installed::new(&group("web", 2, &args, extra));
    systemctl(&["start", "corrald.service"]);
    let pid = worker_pid("web-2").to_string();

    // Its stdout is a stream socket of its own to journald; corrald reads
    // nothing of it.
    let stdout = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert!(stdout.to_string_lossy().starts_with("socket:"), "{stdout:?}");

    let got = wait_for("5000 lines of web-2 in the journal", || {
        let _ = run("journalctl", &["--sync"]);
        let (_, out) =
            run("journalctl", &["--no-pager", "-o", "cat", "-u", "corral-web-2.scope", &format!("_PID={pid}")]);
        let lines: BTreeSet<u64> = out.lines().filter_map(|l| l.strip_prefix("line ")?.parse().ok()).collect();
        if lines.len() == 5_000 {
            Ok(lines)
        } else {
            Err(format!("{} of 5000 lines", lines.len()))
        }
    });
    assert_eq!(got.last(), Some(&5_000));

    let entries = journal(&["-u", "corral-web-2.scope"]);
    let find = |message: &str| {
        entries.iter().find(|e| e["MESSAGE"] == message).unwrap_or_else(|| panic!("no {message:?} under the scope"))
    };
    let hello = find("hello from web");
    assert_eq!(hello["_SYSTEMD_UNIT"], "corral-web-2.scope");
    assert_eq!(hello["_PID"], pid.as_str());
    assert_eq!(hello["_TRANSPORT"], "stdout");
    assert_eq!(hello["SYSLOG_IDENTIFIER"], "web-2");
    assert_eq!(hello["PRIORITY"], "6");
    assert_eq!(find("disk on fire")["PRIORITY"], "3", "a <3> prefix sets the priority");
    assert_eq!(find("plain stderr")["PRIORITY"], "4", "stderr lines get stderr_priority");
    let own: Vec<_> = entries.iter().filter(|e| e["_SYSTEMD_UNIT"] == "corral-web-2.scope").collect();
    assert!(own.iter().all(|e| e["_PID"] == pid.as_str()), "only web-2's own lines in its scope");
}

/// Resumes journald even when the test fails half-way.
struct Frozen;

impl Frozen {
    fn journald() -> Frozen {
        systemctl(&["kill", "-s", "SIGSTOP", "systemd-journald.service"]);
        Frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = run("systemctl", &["kill", "-s", "SIGCONT", "systemd-journald.service"]);
    }
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn a_stuck_journal_never_blocks_a_worker_and_every_line_is_written_or_counted() {
    let config = format!("output_buffer = \"64K\"\n{}", group("web", 0, &["--burst-lines", "100000"], ""));
    let _i = Installed::new(&config);
    systemctl(&["start", "corrald.service"]);

    let frozen = Frozen::journald();
    // The worker prints its 100000 lines before it reports ready: `scale`
    // answering OK means it was never blocked on its output.
    let answer = ctl(&["scale", "web", "1"]).pop().unwrap();
    assert_eq!(answer["status"], "OK", "{answer}");
    let status = supervisor_status();
    let dropped = status["output_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "a 64K queue cannot hold 100000 lines while journald is stopped: {status}");
    let workers = ctl(&["workers"]).pop().unwrap();
    assert_eq!(workers["workers"][0]["output_dropped"].as_u64(), Some(dropped), "{workers}");
    drop(frozen);

    let written = wait_for("the queue to drain into the journal", || {
        let got = burst_lines_in_journal("web-1").len() as u64;
        if got + dropped == 100_000 {
            Ok(got)
        } else {
            Err(format!("{got} lines written and {dropped} dropped of 100000"))
        }
    });
    assert!(written > 0);
    let log = run("journalctl", &["--no-pager", "-o", "cat", "-u", "corrald.service"]).1;
    assert!(log.contains("lines of worker output dropped"), "corrald says it dropped lines: {log}");
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn a_wedged_run_loop_misses_the_watchdog_and_systemd_restarts_corrald() {
    let i = Installed::new(&group("web", 1, &[], ""));
    i.drop_in("[Service]\nWatchdogSec=2s\nLimitCORE=0\n");
    systemctl(&["start", "corrald.service"]);
    let first = show("corrald.service", "MainPID");
    assert_eq!(show("corrald.service", "NRestarts"), "0");
    // The keep-alive arrives: systemd records each one.
    let stamp = show("corrald.service", "WatchdogTimestampMonotonic");
    wait_for("a watchdog keep-alive", || {
        let now = show("corrald.service", "WatchdogTimestampMonotonic");
        if now != stamp {
            Ok(())
        } else {
            Err(format!("WatchdogTimestampMonotonic still {now}"))
        }
    });

    // The test-only fault switch (feature fault-injection) blocks the loop.
    systemctl(&["kill", "--kill-who=main", "-s", "SIGUSR2", "corrald.service"]);
    wait_for("systemd to restart corrald", || shows("corrald.service", "NRestarts", "1"));
    let log = run("journalctl", &["--no-pager", "-o", "cat", "-u", "corrald.service"]).1;
    assert!(log.contains("Watchdog timeout"), "{log}");
    wait_for("the restarted corrald", || shows("corrald.service", "ActiveState", "active"));
    assert_ne!(show("corrald.service", "MainPID"), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn without_a_journal_worker_lines_reach_stderr_prefixed_and_none_is_lost() {
    // journald runs in the container; this corrald gets a mount namespace
    // in which its socket does not exist.
    let mut c = Corrald::new(
        "scopes = \"off\"\n[groups.web]\ncommand = \"{demo}\"\nargs = [\"--burst-lines\", \"20000\"]\ncount = 2\nstop_mode = \"protocol\"\n",
    );
    c.wrapper =
        ["unshare", "--mount", "--", "sh", "-c", "mount -t tmpfs none /run/systemd/journal && exec \"$@\"", "sh"]
            .map(String::from)
            .to_vec();
    c.start();
    c.wait_ready("web", 2).await;
    let status = c.status().await;
    assert_eq!(status.output_sink, "stderr");
    let pids = c.pids("web").await;
    c.shutdown_ok().await;

    let stderr = c.stderr();
    for (id, pid) in pids {
        let prefix = format!("{id}[{pid}]: line ");
        let got: BTreeSet<u64> = stderr.lines().filter_map(|l| l.strip_prefix(&prefix)?.parse().ok()).collect();
        assert_eq!(got.len(), 20_000, "{id}: lines missing from stderr");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn a_non_root_callers_stop_is_audited_with_their_identity_in_every_sink() {
    let user = "corral-op";
    let (ok, out) = run("useradd", &["--system", "--user-group", "--no-create-home", user]);
    assert!(ok || out.contains("already exists"), "{out}");
    let uid = run("id", &["-u", user]).1.trim().to_string();

    let mut c = Corrald::new("");
    // The caller must reach the socket: its directory is opened up, and
    // corralctl is copied where the user can run it.
    chmod(c.dir.path(), 0o755);
    let ctl = c.dir.path().join("corralctl");
    std::fs::copy(CORRALCTL, &ctl).unwrap();
    let (text, json) = (c.dir.path().join("audit.log"), c.dir.path().join("audit.jsonl"));
    c.write_config(&format!(
        "audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\ncommand_operate_uids = [{uid}]\n\
         command_socket_group = \"{user}\"\n[groups.web]\ncommand = \"{{demo}}\"\nargs = [\"--log\", \"{{log}}\"]\n\
         count = 2\nstop_mode = \"protocol\"\n"
    ));
    c.start();
    c.wait_ready("web", 2).await;
    let meta = std::fs::metadata(&c.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "the granted group may connect");
    assert_eq!(meta.gid().to_string(), run("id", &["-g", user]).1.trim());

    let (ok, out) = run(
        "setpriv",
        &[
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--",
            ctl.to_str().unwrap(),
            "--socket",
            c.socket.to_str().unwrap(),
            "stop",
            "web-1",
        ],
    );
    assert!(ok, "the allowed user's soft stop: {out}");

    let text_lines: Vec<String> = std::fs::read_to_string(&text).unwrap().lines().map(String::from).collect();
    assert_eq!(text_lines.len(), 2, "{text_lines:?}");
    for line in &text_lines {
        assert!(line.contains(&format!("\tactor_uid={uid}\t")), "{line}");
        assert!(line.contains(&format!("\tactor_user={user}\t")), "{line}");
        assert!(line.contains("\tactor_comm=corralctl\t"), "{line}");
    }
    let records: Vec<Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records[1]["actor"]["user"], user);
    assert_eq!(records[2]["result"], "ok");

    let entries =
        journal(&[&format!("MESSAGE_ID={}", corral::audit::MESSAGE_ID), &format!("CORRAL_AUDIT_ACTOR_UID={uid}")]);
    let results: Vec<&str> = entries.iter().filter_map(|e| e["CORRAL_AUDIT_RESULT"].as_str()).collect();
    assert_eq!(results, ["accepted", "ok"], "{entries:?}");
    for e in &entries {
        assert_eq!(e["CORRAL_AUDIT_ACTOR_USER"], user);
        assert_eq!(e["CORRAL_AUDIT_ACTOR_COMM"], "corralctl");
        assert_eq!(e["CORRAL_AUDIT_COMMAND"], "Stop");
        assert_eq!(e["CORRAL_AUDIT_WORKER"], "web-1");
        assert_eq!(e["PRIORITY"], "5");
    }
    c.shutdown_ok().await;
}

/// The pids of `corralctl workers`, by worker id.
fn worker_pids() -> std::collections::BTreeMap<String, u64> {
    let workers = ctl(&["workers"]).pop().unwrap();
    workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["id"].as_str().unwrap().to_string(), w["pid"].as_u64().unwrap()))
        .collect()
}

/// `corralctl --json events TARGET --replay 64`'s events, up to the first
/// that `last` accepts; then corralctl is killed.
fn replayed_events(target: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut child = KillOnDrop(
        std::process::Command::new(CORRALCTL)
            .args(["--json", "events", target, "--replay", "64"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn corralctl events"),
    );
    let rx = stdout_lines(child.0.stdout.take().unwrap());
    let mut events = Vec::new();
    loop {
        let line = rx.recv_timeout(PATIENCE).expect("corralctl events to print the replay in time");
        let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let Some(event) = answer.get("event") else { continue };
        let done = last(event);
        events.push(event.clone());
        if done {
            return events;
        }
    }
}

/// How many processes each of corral's scopes holds.
fn scope_process_counts() -> Vec<(String, usize)> {
    let units = systemctl(&["list-units", "--no-legend", "--plain", "corral-*.scope"]);
    units
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|unit| (unit.to_string(), status_pids(unit).len()))
        .collect()
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn after_corrald_is_killed_systemd_restarts_it_adopts_the_busy_workers_and_replaces_one_that_died() {
    let busy = Busy::start(&[("web", 10, ""), ("jobs", 10, "scope = \"worker\"")], &["--print-units"]);
    let log = busy.log.as_str();
    let before = worker_pids();
    assert_eq!(before.len(), 20);
    wait_for("units of work in flight", || units_started(log, 60));

    systemctl(&["kill", "--kill-who=main", "-s", "SIGKILL", "corrald.service"]);
    // While corrald is down (systemd waits RestartSec=2s), a worker dies.
    let victim = before["web-3"];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::SIGKILL).unwrap();
    wait_for("systemd to restart corrald", || {
        shows("corrald.service", "NRestarts", "1").and_then(|()| shows("corrald.service", "ActiveState", "active"))
    });
    let after = worker_pids();
    assert_ne!(after["web-3"], victim, "the worker that died while corrald was down was started anew");
    let mut expected = before.clone();
    expected.remove("web-3");
    let mut adopted = after.clone();
    adopted.remove("web-3");
    assert_eq!(adopted, expected, "the other 19 are the same processes, adopted");
    let counts = scope_process_counts();
    assert_eq!(counts.iter().find(|(u, _)| u == "corral-web.scope").map(|c| c.1), Some(10), "{counts:?}");
    assert_eq!(counts.len(), 11, "{counts:?}");
    assert!(counts.iter().filter(|(u, _)| u != "corral-web.scope").all(|(_, n)| *n == 1), "{counts:?}");

    // The worker channels survived in the descriptor store: a soft stop
    // drains every unit of work of all 20.
    let answer = ctl(&["stop"]).pop().unwrap();
    assert_eq!(answer["status"], "OK", "{answer}");
    let work = WorkLog::read(Path::new(log));
    let cut: Vec<_> = work.unfinished().into_iter().filter(|u| u64::from(u.1) != victim).collect();
    assert!(cut.is_empty(), "work cut off: {cut:?}");
    assert_eq!(work.exits.len(), 20, "every worker drained and exited");
    // Their output pipes survived too: lines printed after the restart are
    // in the journal under the adopted workers' ids.
    let after_restart = journal(&["-u", "corral-web.scope", "CORRAL_WORKER_ID=web-1"]);
    assert!(!after_restart.is_empty());
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn systemctl_restart_keeps_every_worker_and_a_plain_stop_drains_them() {
    let busy = Busy::start(&[("web", 10, ""), ("jobs", 10, "scope = \"worker\"")], &[]);
    let log = busy.log.as_str();
    let before = worker_pids();
    let first = show("corrald.service", "MainPID");
    wait_for("units of work in flight", || units_started(log, 60));

    systemctl(&["restart", "corrald.service"]);
    assert_ne!(show("corrald.service", "MainPID"), first, "a new corrald runs");
    assert_eq!(worker_pids(), before, "the restart kept the same 20 processes");
    let work = WorkLog::read(Path::new(log));
    assert!(work.exits.is_empty(), "no worker stopped for the restart: {:?}", work.exits);
    // The new corrald adopted them before it served the socket; a replay
    // tells each as a forked worker's start is told, its scope included.
    let pid = before["jobs-1"];
    let told = replayed_events("jobs-1", |e| e["kind"] == "ready");
    let kinds: Vec<(&str, u64, &str)> = told
        .iter()
        .filter(|e| e["worker"] == "jobs-1")
        .map(|e| (e["kind"].as_str().unwrap(), e["pid"].as_u64().unwrap(), e["unit"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(kinds, [("spawned", pid, ""), ("placed", pid, "corral-jobs-1.scope"), ("ready", pid, "")], "{told:?}");
    assert!(told.iter().all(|e| e["replayed"] == true && (e["kind"] != "spawned" || e["adopted"] == true)));

    systemctl(&["stop", "corrald.service"]);
    let work = WorkLog::read(Path::new(log));
    assert!(work.unfinished().is_empty(), "work cut off: {:?}", work.unfinished());
    assert_eq!(work.exits.len(), 20, "a plain stop drains every worker");
    let left = systemctl(&["list-units", "--all", "--no-legend", "--plain", "corral-*"]);
    assert_eq!(left.trim(), "", "scopes left behind");
}

/// Where the journal ends now, for reading only what comes after.
fn journal_cursor() -> String {
    let (ok, out) = run("journalctl", &["--no-pager", "-n", "0", "--show-cursor"]);
    assert!(ok, "journalctl --show-cursor failed: {out}");
    out.lines().find_map(|l| l.strip_prefix("-- cursor: ")).expect("a cursor").trim().to_string()
}

/// A soft stop of `target` drained every one of its workers: they answered
/// OK over channels an earlier corrald left them.
fn drains(target: &str) {
    let answer = ctl(&["stop", target]).pop().unwrap();
    assert_eq!(answer["status"], "OK", "soft stop of {target}: {answer}\n{}", corrald_journal());
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn worker_channels_survive_restarts_of_the_service_and_its_socket_and_a_crash_after_them() {
    let groups = [("web", 3, ""), ("jobs", 3, "scope = \"worker\""), ("api", 3, "")];
    let busy = Busy::start(&groups, &[]);
    let log = busy.log.as_str();
    let before = worker_pids();
    assert_eq!(before.len(), 9);
    let cursor = journal_cursor();
    wait_for("units of work in flight", || units_started(log, 18));

    systemctl(&["restart", "corrald.service"]);
    assert_eq!(worker_pids(), before, "the restart kept the same 9 processes");
    drains("web");

    // The socket's restart restarts the service that requires it.
    let main = show("corrald.service", "MainPID");
    systemctl(&["restart", "corrald.socket"]);
    wait_for("a new corrald after the socket's restart", || {
        shows("corrald.service", "ActiveState", "active")?;
        let pid = show("corrald.service", "MainPID");
        if pid != main && pid != "0" {
            Ok(())
        } else {
            Err(format!("MainPID {pid}"))
        }
    });
    drains("jobs");

    // A crash after the restarts: the channels are still whole for the
    // corrald systemd restarts then.
    systemctl(&["kill", "--kill-who=main", "-s", "SIGKILL", "corrald.service"]);
    wait_for("systemd to restart corrald", || {
        shows("corrald.service", "NRestarts", "1").and_then(|()| shows("corrald.service", "ActiveState", "active"))
    });

    systemctl(&["stop", "corrald.service"]);
    shows("corrald.service", "Result", "success").unwrap_or_else(|e| panic!("{e}\n{}", corrald_journal()));
    let work = WorkLog::read(Path::new(log));
    assert!(work.unfinished().is_empty(), "work cut off: {:?}", work.unfinished());
    let exited: BTreeSet<u64> = work.exits.iter().map(|e| u64::from(e.1)).collect();
    let first: BTreeSet<u64> = before.values().copied().collect();
    assert!(
        exited.is_superset(&first),
        "not every one of the first 9 drained and exited: {exited:?}\n{}",
        corrald_journal()
    );
    let since = run("journalctl", &["--no-pager", "-o", "cat", &format!("--after-cursor={cursor}")]).1;
    assert!(!since.contains("worker channel closed by the supervisor"), "a worker lost its channel");
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn without_a_descriptor_store_corrald_stores_nothing_and_says_once_what_a_restart_loses() {
    let i = Installed::new(&group("web", 3, &[], ""));
    i.drop_in("[Service]\nFileDescriptorStoreMax=0\n");
    let cursor = journal_cursor();
    systemctl(&["start", "corrald.service"]);
    let since = || {
        let _ = run("journalctl", &["--sync"]);
        let args = ["--no-pager", "-o", "cat", "-u", "corrald.service", &format!("--after-cursor={cursor}")];
        run("journalctl", &args).1
    };
    wait_for("corrald to say the service has no descriptor store", || {
        let log = since();
        if log.contains("the service has no descriptor store") {
            Ok(())
        } else {
            Err("not said".to_string())
        }
    });
    assert_eq!(group_status(&supervisor_status(), "web")["ready"], 3, "the workers run all the same");
    assert_eq!(show("corrald.service", "NFileDescriptorStore"), "0");
    let log = since();
    assert!(!log.contains("Cannot store more fds"), "corrald pushed descriptors to no store:\n{log}");
    assert_eq!(log.matches("the service has no descriptor store").count(), 1, "{log}");
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn an_upgrade_of_the_service_keeps_its_pid_and_workers_and_is_audited() {
    let _i = Installed::new(&group("web", 4, &[], ""));
    systemctl(&["start", "corrald.service"]);
    let main_pid = show("corrald.service", "MainPID");
    let before = worker_pids();

    // corralctl status in a tight loop throughout the upgrade.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut answered, mut errors) = (0, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match run(CORRALCTL, &["status"]) {
                    (true, _) => answered += 1,
                    (false, out) => errors.push(out),
                }
            }
            (answered, errors)
        })
    };
    let answer = ctl(&["upgrade"]).pop().unwrap();
    assert_eq!(answer["status"], "OK", "{answer}");
    wait_for("the new corrald to adopt the workers", || {
        let log = run("journalctl", &["--no-pager", "-o", "cat", "-u", "corrald.service"]).1;
        if log.contains("adopted the workers of an earlier corrald") {
            Ok(())
        } else {
            Err("no adoption in corrald's journal".to_string())
        }
    });
    supervisor_status();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, errors) = looping.join().unwrap();
    assert!(errors.is_empty(), "refused or lost during the upgrade: {errors:?}");
    assert!(answered > 0);
    assert_eq!(show("corrald.service", "MainPID"), main_pid, "replaced in place");
    assert_eq!(show("corrald.service", "ActiveState"), "active");
    assert_eq!(worker_pids(), before, "no worker restarted");
    let audit = journal(&[&format!("MESSAGE_ID={}", corral::audit::MESSAGE_ID), "CORRAL_AUDIT_COMMAND=Upgrade"]);
    let results: Vec<&str> = audit.iter().filter_map(|e| e["CORRAL_AUDIT_RESULT"].as_str()).collect();
    assert_eq!(results, ["accepted", "ok"], "{audit:?}");

    let (ok, out) = run(CORRALCTL, &["upgrade", "--binary", "/bin/false"]);
    assert!(!ok && out.contains("upgrade refused"), "{out}");
    assert_eq!(show("corrald.service", "MainPID"), main_pid);
    assert_eq!(worker_pids(), before);
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn an_upgrade_to_a_binary_that_dies_before_taking_over_ends_with_the_same_workers_adopted() {
    let _i = Installed::new(&group("web", 4, &[], ""));
    systemctl(&["start", "corrald.service"]);
    let first = show("corrald.service", "MainPID");
    let before = worker_pids();
    // A successor that passes every pre-flight check (it hands them to the
    // real corrald) and then dies instead of taking over.
    let dying = "/usr/sbin/corrald-dies";
    std::fs::write(
        dying,
        "#!/bin/sh\ncase \"$1\" in --config) echo 'corrald-dies: exiting before the takeover' >&2; exit 1;; esac\n\
         exec /usr/bin/corrald \"$@\"\n",
    )
    .unwrap();
    chmod(Path::new(dying), 0o755);

    let answer = ctl(&["upgrade", "--binary", dying]).pop().unwrap();
    assert_eq!(answer["status"], "OK", "{answer}");
    wait_for("systemd to bring a corrald back after the successor died", || {
        shows("corrald.service", "NRestarts", "1")?;
        shows("corrald.service", "ActiveState", "active")?;
        let pid = show("corrald.service", "MainPID");
        if pid != first {
            Ok(())
        } else {
            Err(format!("MainPID still {pid}"))
        }
    });
    let log = run("journalctl", &["--no-pager", "-o", "cat", "-u", "corrald.service"]).1;
    assert!(log.contains("corrald-dies: exiting before the takeover"), "{log}");
    assert_eq!(worker_pids(), before, "the same four workers, adopted by the new corrald");
    // Adopted means supervised: a soft stop reaches and drains each of them.
    let outcome = ctl(&["stop", "web"]).pop().unwrap();
    assert_eq!(outcome["status"], "OK", "{outcome}");
    assert_eq!(outcome["outcome"]["succeeded"], 4, "{outcome}");
    std::fs::remove_file(dying).unwrap();
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn the_shipped_unit_gives_corrald_the_open_file_limit_the_readme_states() {
    let i = Installed::new(&group("web", 1, &[], ""));
    systemctl(&["start", "corrald.service"]);
    assert_eq!(show("corrald.service", "LimitNOFILE"), "65536");
    assert_eq!(show("corrald.service", "LimitNOFILESoft"), "65536");
    // systemd grants at most its own hard limit (a container's manager may
    // have less than 65536); corrald then raises its soft limit to that.
    let open_files = |pid: &str| -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
        let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        (fields[0], fields[1])
    };
    let (_, manager_hard) = open_files("1");
    let (soft, hard) = open_files(&show("corrald.service", "MainPID"));
    assert_eq!((soft, hard), (manager_hard.min(65536), manager_hard.min(65536)));
    // Given a soft limit below the hard one, corrald raises it itself.
    i.drop_in("[Service]\nLimitNOFILE=1024:4096\n");
    systemctl(&["restart", "corrald.service"]);
    assert_eq!(show("corrald.service", "LimitNOFILESoft"), "1024");
    assert_eq!(open_files(&show("corrald.service", "MainPID")), (4096, 4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn a_burst_of_audited_commands_reaches_the_journal_whole() {
    let dir = Path::new("/var/log/corral-burst");
    let _ = std::fs::remove_dir_all(dir);
    let text = dir.join("audit.log");
    let _i = Installed::new(&format!("audit_logs_target = {text:?}\n{}", group("burst", 1, &[], "")));
    systemctl(&["start", "corrald.service"]);
    // 32 clients, each a command after the other as fast as answers come:
    // 16,000 records in a few seconds, through corrald's own journal socket.
    const CLIENTS: u64 = 32;
    const EACH: u64 = 250;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let mut client = corral::ctl::Client::connect(Path::new(SOCKET)).await.unwrap();
        clients.spawn(async move {
            for _ in 0..EACH {
                let start = corral::proto::request::Command::Start(corral::proto::Start { target: "burst-1".into() });
                let last = client.call(start, |_| {}).await.unwrap();
                assert_eq!(last.status(), corral::proto::Status::Ok, "{last:?}");
            }
        });
    }
    clients.join_all().await;
    let records = std::fs::read_to_string(&text).unwrap().lines().count();
    assert_eq!(records as u64, 2 * CLIENTS * EACH, "the text log has every record");
    assert_eq!(supervisor_status()["audit_journal_missed"], 0);
    // Each record was handed to journald before its command went ahead.
    let entries = journal(&[&format!("MESSAGE_ID={}", corral::audit::MESSAGE_ID), "CORRAL_AUDIT_WORKER=burst-1"]);
    let distinct: BTreeSet<(String, String, String)> = entries
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap_or_default().to_string();
            (field("CORRAL_AUDIT_SESSION"), field("CORRAL_AUDIT_REQUEST_ID"), field("CORRAL_AUDIT_RESULT"))
        })
        .collect();
    assert_eq!(entries.len(), records, "the journal has as many records as the text log");
    assert_eq!(distinct.len(), records, "and each one once");
    let _ = std::fs::remove_dir_all(dir);
}

/// The unit file says how `systemd-analyze security` scores it, and that
/// is what systemd says; under all that hardening corrald still places a
/// worker, which runs and drains.
#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn the_unit_states_the_exposure_systemd_scores_and_workers_run_under_it() {
    let unit = include_str!("../units/corrald.service");
    let comment: String = unit.lines().filter_map(|l| l.strip_prefix("# ")).collect::<Vec<_>>().join(" ");
    let stated = comment
        .split_once("with none of the lines below, ")
        .and_then(|(_, rest)| rest.split_once(" with them"))
        .map(|(score, _)| score.to_string())
        .expect("the unit's comment states its exposure");
    let _i = Installed::new(&group("web", 2, &[], ""));
    let (_, out) = run("systemd-analyze", &["security", "--no-pager", "corrald.service"]);
    let scored = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for corrald.service: "))
        .map(|(_, score)| score.trim_end_matches([' ', ':', '-', '(', ')', '|']).to_string())
        .unwrap_or_else(|| panic!("no overall exposure in: {out}"));
    assert_eq!(scored, stated, "the unit's comment is out of date");
    systemctl(&["start", "corrald.service"]);
    wait_for("both workers ready", || {
        let web = group_status(&supervisor_status(), "web");
        if web["ready"] == 2 {
            Ok(())
        } else {
            Err(web.to_string())
        }
    });
    let outcome = ctl(&["stop", "web"]).pop().unwrap();
    assert_eq!(outcome["status"], "OK", "{outcome}");
    assert_eq!(outcome["outcome"]["succeeded"], 2, "{outcome}");
}

/// Stopping corral for good takes both units, as with any socket-activated
/// service: stopping the socket stops the service too (a corrald nobody can
/// command is not left running), and a client then gets a clear refusal
/// that starts nothing; stopping the service alone leaves its socket
/// listening, and the next client starts the fleet again (README, "As a
/// systemd service").
#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn stopping_the_socket_stops_corral_and_a_client_then_starts_nothing() {
    let _i = Installed::new(&group("web", 1, &[], ""));
    systemctl(&["start", "corrald.socket"]);
    systemctl(&["start", "corrald.service"]);
    systemctl(&["stop", "corrald.socket"]);
    assert_eq!(show("corrald.service", "ActiveState"), "inactive");
    assert_eq!(show("corral-web.scope", "ActiveState"), "inactive", "the fleet drained");
    let (ok, out) = run(CORRALCTL, &["status"]);
    assert!(!ok && out.contains("no socket at /run/corral/corrald.sock: is corrald running?"), "{out}");
    assert_eq!(show("corrald.service", "ActiveState"), "inactive", "nothing started it");

    systemctl(&["start", "corrald.socket", "corrald.service"]);
    systemctl(&["stop", "corrald.service"]);
    assert_eq!(show("corrald.socket", "ActiveState"), "active");
    let status = supervisor_status();
    assert_eq!(group_status(&status, "web")["desired"], 1, "{status}");
    wait_for("the service the client started to be active", || shows("corrald.service", "ActiveState", "active"));
}

/// `corralctl --json ARGS`'s final answer, whatever its status.
fn final_answer(args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (_, out) = run(CORRALCTL, &full);
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).next_back().unwrap_or_else(|| panic!("no answer: {out}"))
}

/// A small tmpfs at `dir`, so a test can fill a disk; unmounted on drop,
/// after corrald (declared earlier, dropped later) let go of its files.
struct SmallDisk(&'static Path);

impl SmallDisk {
    fn mount(dir: &'static Path, size: &str) -> SmallDisk {
        let _ = run("umount", &["-l", dir.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let (ok, out) = run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size},mode=0750"), "corral-test", dir.to_str().unwrap()],
        );
        assert!(ok, "mount a tmpfs on {}: {out}", dir.display());
        SmallDisk(dir)
    }

    /// Fills the disk to the last byte with `name`.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join(name)).unwrap();
        let page = [b'x'; 4096];
        while filler.write(&page).is_ok_and(|n| n > 0) {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(self.0);
    }
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn a_full_audit_disk_leaves_every_record_whole_and_each_refusal_recorded_where_it_was_accepted() {
    let disk = SmallDisk::mount(Path::new("/var/log/corral-full"), "64k");
    let text_dir = Path::new("/var/log/corral-text");
    let _ = std::fs::remove_dir_all(text_dir);
    let (text, json) = (text_dir.join("audit.log"), disk.0.join("audit.jsonl"));
    let _i = Installed::new(&format!(
        "audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\n{}",
        group("web", 1, &[], "")
    ));
    systemctl(&["start", "corrald.service"]);
    // The JSON log keeps only the room left in its last page: the record
    // that does not fit there is cut off by ENOSPC part way through.
    disk.fill("filler");
    let mut answers = Vec::new();
    while answers.last().is_none_or(|a: &Value| a["status"] == "OK") {
        assert!(answers.len() < 64, "the disk filled up within 64 commands: {answers:#?}");
        answers.push(final_answer(&["start", "web-1"]));
    }
    let refused = answers.last().unwrap();
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains(&format!("{} (audit_logs_json_target)", json.display())), "{refused}");
    assert!(message.contains("nothing was done"), "{refused}");

    let verify = || run(CORRALCTL, &["audit", "verify", json.to_str().unwrap()]);
    let (ok, out) = verify();
    assert!(ok && out.contains("intact"), "the JSON log holds whole records only: {out}");
    // An outcome that did not fit is missing only where the answer said so.
    let mut requests: std::collections::BTreeMap<(u64, u64), Vec<String>> = Default::default();
    for r in json_lines(&json).iter().filter(|r| r["record"] == "audit") {
        let key = (r["session"].as_u64().unwrap(), r["request_id"].as_u64().unwrap());
        requests.entry(key).or_default().push(r["result"].as_str().unwrap().to_string());
    }
    let unrecorded = requests.values().filter(|results| **results == ["accepted"]).count();
    let said = answers
        .iter()
        .filter(|a| a["status"] == "OK" && a["message"].as_str().unwrap().contains("outcome could not be written"))
        .count();
    assert_eq!(unrecorded, said, "{requests:?}\n{answers:#?}");
    let text_lines = lines(&text);
    for line in &text_lines {
        assert_eq!(line.split('\t').count(), 14, "a whole text record: {line:?}");
    }
    // The refused command's acceptance is in the text log; its outcome is too.
    let outcome = text_lines
        .iter()
        .find(|l| l.contains("\tresult=failed\t") && l.contains("(audit_logs_json_target)"))
        .unwrap_or_else(|| panic!("no failed outcome in the text log: {text_lines:#?}"));
    let slots = outcome.split('\t').next().unwrap();
    let results: Vec<&str> = text_lines
        .iter()
        .filter(|l| l.starts_with(slots))
        .filter_map(|l| l.split('\t').find_map(|f| f.strip_prefix("result=")))
        .collect();
    assert_eq!(results, ["accepted", "failed"], "{text_lines:#?}");
    let session = slots.trim_start_matches('[').split(' ').next().unwrap();
    let entries = journal(&[
        &format!("MESSAGE_ID={}", corral::audit::MESSAGE_ID),
        &format!("_PID={}", show("corrald.service", "MainPID")),
        &format!("CORRAL_AUDIT_SESSION={session}"),
    ]);
    let results: Vec<&str> = entries.iter().filter_map(|e| e["CORRAL_AUDIT_RESULT"].as_str()).collect();
    assert_eq!(results, ["accepted", "failed"], "the journal has the refusal's outcome too: {entries:?}");
    let warnings = journal(&["-u", "corrald.service", "PRIORITY=4"]);
    let named = json.display().to_string();
    assert!(
        warnings.iter().any(|e| e["MESSAGE"].as_str().is_some_and(|m| m.contains(&named) && m.contains("refused"))),
        "corrald warns of the refusal, naming the file: {warnings:?}"
    );

    // With room again the trail goes on, still intact.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let answer = final_answer(&["start", "web-1"]);
    assert_eq!(answer["status"], "OK", "{answer}");
    let (ok, out) = verify();
    assert!(ok && out.contains("intact"), "{out}");
    let records = json_lines(&json);
    assert_eq!(records.last().unwrap()["result"], "ok");
}

/// journald stopped for good, its sockets too; started again on drop.
struct JournaldStopped;

impl JournaldStopped {
    const UNITS: [&'static str; 4] = [
        "systemd-journald.service",
        "systemd-journald.socket",
        "systemd-journald-dev-log.socket",
        "systemd-journald-audit.socket",
    ];

    fn now() -> JournaldStopped {
        let mut args = vec!["stop"];
        args.extend(Self::UNITS);
        systemctl(&args);
        JournaldStopped
    }
}

impl Drop for JournaldStopped {
    fn drop(&mut self) {
        let _ = run("systemctl", &["start", Self::UNITS[1], Self::UNITS[2], Self::UNITS[0]]);
    }
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn with_journald_stopped_every_record_and_line_it_misses_is_counted() {
    const LINES: u64 = 200;
    const COMMANDS: u64 = 10;
    let _i = Installed::new(&group("blind", 1, &["--burst-lines", &LINES.to_string()], ""));
    systemctl(&["start", "corrald.service"]);
    wait_for("the first burst in the journal", || {
        holding(burst_lines_in_journal("blind-1").len() as u64, |n| *n == LINES).map(drop)
    });
    let status = supervisor_status();
    assert_eq!((status["output_dropped"].as_u64(), status["audit_journal_missed"].as_u64()), (Some(0), Some(0)));

    let _stopped = JournaldStopped::now();
    // Each restart is two audit records, and a new worker printing its burst.
    for _ in 0..COMMANDS {
        let answer = ctl(&["restart", "blind-1"]).pop().unwrap();
        assert_eq!(answer["status"], "OK", "{answer}");
    }
    let want = (Some(LINES * COMMANDS), Some(2 * COMMANDS));
    wait_for("status to count what the journal missed", || {
        let status = supervisor_status();
        holding((status["output_dropped"].as_u64(), status["audit_journal_missed"].as_u64()), |seen| *seen == want)
    });
    let workers = ctl(&["workers"]).pop().unwrap();
    assert_eq!(workers["workers"][0]["output_dropped"].as_u64(), Some(LINES * COMMANDS), "{workers}");
    let (_, out) = run(CORRALCTL, &["status"]);
    assert!(out.contains(&format!("{} lines dropped", LINES * COMMANDS)), "{out}");
    assert!(out.contains(&format!("{} records missed by the journal", 2 * COMMANDS)), "{out}");
}

/// corrald restarted (`systemctl restart`) or killed and restarted by
/// systemd keeps the fleet as its operator left it: a worker stopped on
/// request stays stopped and a scale stays, with the same processes
/// running on. A clean stop and start begins from the config again.
#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn restarts_of_corrald_keep_stopped_workers_stopped_and_scales_as_they_were() {
    let _i = Installed::new(&[group("web", 2, &[], ""), group("jobs", 1, &[], "")].concat());
    systemctl(&["start", "corrald.service"]);
    assert_eq!(ctl(&["stop", "web-2"]).pop().unwrap()["status"], "OK");
    assert_eq!(ctl(&["scale", "jobs", "3"]).pop().unwrap()["status"], "OK");
    let before = worker_pids();
    let as_left = || {
        let status = supervisor_status();
        let (web, jobs) = (group_status(&status, "web"), group_status(&status, "jobs"));
        let seen = format!("web {web}, jobs {jobs}");
        let kept = web["ready"] == 1 && web["stopped"] == 1 && jobs["desired"] == 3 && jobs["ready"] == 3;
        if kept {
            Ok(())
        } else {
            Err(seen)
        }
    };
    wait_for("web-2 stopped and jobs at 3", as_left);

    systemctl(&["restart", "corrald.service"]);
    wait_for("the restarted corrald to keep web-2 stopped and jobs at 3", as_left);
    assert_eq!(worker_pids(), before, "the same processes, adopted");

    systemctl(&["kill", "--kill-who=main", "-s", "SIGKILL", "corrald.service"]);
    wait_for("systemd to restart corrald", || {
        shows("corrald.service", "NRestarts", "1").and_then(|()| shows("corrald.service", "ActiveState", "active"))
    });
    wait_for("the corrald restarted after a crash to keep them too", as_left);
    assert_eq!(worker_pids(), before, "the same processes, adopted again");

    systemctl(&["stop", "corrald.service"]);
    systemctl(&["start", "corrald.service"]);
    wait_for("a fresh start to follow the config", || {
        let status = supervisor_status();
        let (web, jobs) = (group_status(&status, "web"), group_status(&status, "jobs"));
        if web["ready"] == 2 && jobs["desired"] == 1 && jobs["ready"] == 1 {
            Ok(())
        } else {
            Err(format!("web {web}, jobs {jobs}"))
        }
    });
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn health_failures_and_a_restart_for_a_hang_reach_the_journal_with_the_worker_s_fields() {
    // w-1 stops reading its channel after a second; p-1's liveness probe
    // asks a port nothing listens on.
    let hung = group(
        "w",
        1,
        &["--hang-after-ms", "1000"],
        "stop_timeout = \"1s\"\n[groups.w.ping]\ninterval = \"200ms\"\nmisses = 2",
    );
    let probed = "[groups.p]\ncommand = \"/usr/bin/corral-demo-worker\"\n\
                  [groups.p.health.liveness]\ntcp = \"127.0.0.1:9\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
                  failure_threshold = 100\n";
    let _i = Installed::new(&format!("{hung}{probed}"));
    systemctl(&["start", "corrald.service"]);
    let first = worker_pid("w-1");

    let entry = |worker: &str, text: &str| {
        journal(&["-u", "corrald.service", "SYSLOG_IDENTIFIER=corrald", &format!("CORRAL_WORKER_ID={worker}")])
            .into_iter()
            .find(|e| e["MESSAGE"].as_str().is_some_and(|m| m.contains(text)))
            .ok_or_else(|| format!("no entry of {worker} saying {text:?}"))
    };
    let hang = wait_for("the hang in corrald's journal", || entry("w-1", "hung: missed 2 pings in a row"));
    assert_eq!(hang["CORRAL_GROUP"], "w", "{hang}");
    assert_eq!(hang["PRIORITY"], "3", "{hang}");
    let probe = wait_for("a failed probe in corrald's journal", || entry("p-1", "liveness check failed"));
    assert_eq!(probe["CORRAL_GROUP"], "p", "{probe}");
    assert_eq!(probe["PRIORITY"], "4", "{probe}");

    let record = wait_for("the restart's audit record in the journal", || {
        journal(&["CORRAL_AUDIT_ACTOR_KIND=corrald", "CORRAL_AUDIT_RESULT=ok"])
            .into_iter()
            .next()
            .ok_or_else(|| "no record yet".to_string())
    });
    let record = record.to_string();
    assert!(record.contains("hung: missed 2 pings") && record.contains("restarting in"), "{record}");
    wait_for("w-1 running anew", || {
        let pid = worker_pid("w-1");
        if pid != 0 && pid != first {
            Ok(())
        } else {
            Err(format!("pid {pid}"))
        }
    });
}
