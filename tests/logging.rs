//! corral's audit records and worker lines beyond one host: the journal
//! sent by systemd-journal-upload to a systemd-journal-remote collector,
//! and the JSON audit log shipped by rsyslog to a second rsyslog.
//!
//! The configs are the files of docs/central-logging/ that
//! docs/central-logging.md shows, used as they are but for the collector's
//! name, which here is the loopback address, and the guide shows them as
//! they are (checked here on the host). Like tests/service.rs the end-to-end
//! tests run inside a container booted with systemd
//! (`tests/systemd/run-suite`), one at a time, and leave no unit, config or
//! log of theirs behind.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Map, Value};

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/central-logging");
/// The collector's name in the documented configs.
const CENTRAL: &str = "central.example.net";
const COLLECTOR_PORT: u16 = 19532;
const SYSLOG_PORT: u16 = 10514;

const UPLOAD_CONFIG: &str = "/etc/systemd/journal-upload.conf.d/corral.conf";
const COLLECTOR_UNIT: &str = "corral-test-journal-remote.service";
const SENDER_CONFIG: &str = "/etc/rsyslog.d/corral-audit.conf";
const RECEIVER_CONFIG: &str = "/etc/rsyslog-corral-central.conf";
const RECEIVER_UNIT: &str = "/etc/systemd/system/rsyslog-corral-central.service";
const AUDIT_JSON: &str = "/var/log/corral/audit.jsonl";
const RECEIVED_DIR: &str = "/var/log/corral-central";
/// The system rsyslog's work directory (Debian's /etc/rsyslog.conf).
const RSYSLOG_SPOOL: &str = "/var/spool/rsyslog";

/// A documented config with the collector on this host's loopback.
fn documented(name: &str) -> String {
    let path = format!("{DOCS}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(text.contains(CENTRAL), "{path} names the collector {CENTRAL}");
    text.replace(CENTRAL, "127.0.0.1")
}

fn install(path: &str, text: &str) {
    let path = Path::new(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn systemctl(args: &[&str]) {
    let (ok, out) = run("systemctl", args);
    assert!(ok, "systemctl {} failed: {out}", args.join(" "));
}

/// The end of a unit's journal, for failure messages.
fn unit_journal(unit: &str) -> String {
    run("journalctl", &["--no-pager", "-n", "30", "-u", unit]).1
}

fn wait_listening(port: u16, unit: &str) {
    poll_blocking(&format!("{unit} to listen on 127.0.0.1:{port}"), PATIENCE, || {
        TcpStream::connect(("127.0.0.1", port)).map(drop).map_err(|e| format!("{e}\n{}", unit_journal(unit)))
    });
}

/// Stops the units and removes the files a test set up, failed or not.
struct Cleanup {
    units: &'static [&'static str],
    paths: Vec<PathBuf>,
    /// Prefixes of the names of files the system rsyslog kept in its work
    /// directory for the test (a read position, a queue): a later run must
    /// read the audit log from its start again.
    spooled: &'static [&'static str],
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for unit in self.units {
            let _ = run("systemctl", &["stop", unit]);
        }
        let spool = std::fs::read_dir(RSYSLOG_SPOOL).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path());
        let spooled = spool.filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| self.spooled.iter().any(|s| n.starts_with(s)))
        });
        for path in self.paths.iter().cloned().chain(spooled) {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        let _ = run("systemctl", &["reset-failed"]);
        let _ = run("systemctl", &["daemon-reload"]);
    }
}

/// A journal entry's fields, timestamps included, without the cursor: the
/// entry's address in a journal file, which the collector's file gives it anew.
fn fields(entry: &Value) -> Map<String, Value> {
    let mut fields = entry.as_object().expect("an entry is an object").clone();
    fields.remove("__CURSOR");
    fields
}

/// The collector's entries that match `matches`.
fn collected(dir: &Path, matches: &[&str]) -> Vec<Value> {
    let dir = path_str(dir);
    let mut args = vec!["--no-pager", "-o", "json", "-D", &dir];
    args.extend_from_slice(matches);
    let (_, out) = run("journalctl", &args);
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Polls the collector until it has as many entries matching `matches` as
/// the local journal, and asserts they are the same entries, field by field.
/// The uploader first sends the whole journal, and in run-suite's container
/// the suites before this one left some 200,000 entries, hence
/// twice the test's patience.
fn assert_collected_intact(dir: &Path, matches: &[&str]) -> Vec<Value> {
    let local = journal(matches);
    assert!(!local.is_empty(), "no local journal entry matches {matches:?}");
    let what = format!("the collector to have {} entries {matches:?}", local.len());
    let remote = poll_blocking(&what, PATIENCE * 2, || {
        let remote = collected(dir, matches);
        if remote.len() >= local.len() {
            Ok(remote)
        } else {
            Err(format!("{remote:?}\n{}", unit_journal("systemd-journal-upload.service")))
        }
    });
    let (local, remote): (Vec<_>, Vec<_>) = (local.iter().map(fields).collect(), remote.iter().map(fields).collect());
    assert_eq!(remote, local, "the collector's entries {matches:?} differ from the local journal's");
    local.into_iter().map(Value::Object).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn audit_records_and_worker_lines_reach_a_journal_remote_collector_with_their_fields_intact() {
    needs_root("it runs systemd units and installs their configs");
    let remote = tempfile::tempdir().unwrap();
    // The uploader's cursor goes too, so a later run uploads from the start,
    // and the drop-in directory if the test made it.
    let upload_dir = Path::new(UPLOAD_CONFIG).parent().unwrap();
    let upload_state = ["/var/lib/systemd/journal-upload", "/var/lib/private/systemd/journal-upload"];
    let mut paths: Vec<PathBuf> = upload_state.iter().chain([&UPLOAD_CONFIG]).map(PathBuf::from).collect();
    if !upload_dir.exists() {
        paths.push(upload_dir.to_path_buf());
    }
    let _cleanup = Cleanup { units: &["systemd-journal-upload.service", COLLECTOR_UNIT], paths, spooled: &[] };

    // The collector as the central host would run it, but on loopback and
    // over http (docs/central-logging.md says why that is fine here).
    let listen = format!("--listen-http=127.0.0.1:{COLLECTOR_PORT}");
    let output = format!("--output={}/", path_str(remote.path()));
    let (ok, out) = run(
        "systemd-run",
        &["--unit", COLLECTOR_UNIT, "--collect", "/lib/systemd/systemd-journal-remote", &listen, &output],
    );
    assert!(ok, "starting the collector: {out}");
    wait_listening(COLLECTOR_PORT, COLLECTOR_UNIT);
    // The uploader is Debian's own unit, configured by the documented file.
    install(UPLOAD_CONFIG, &documented("journal-upload.conf"));
    systemctl(&["start", "systemd-journal-upload.service"]);

    let mut c = Corrald::new("");
    let said = format!("a line for the collector from {}", std::process::id());
    c.write_config(&format!(
        "{}command_operate_uids = [{}]\n{}",
        c.share_with_outsider(),
        OUTSIDER.0,
        demo_group("web", 1, &["--say", &said, "--complain", &format!("{said} on stderr")], "")
    ));
    c.start();
    c.wait_ready("web", 1).await;
    let (ok, out) = c.ctl_as(OUTSIDER, &["stop", "web-1"]);
    assert!(ok, "the outsider's stop: {out}\n{}", c.stderr_tail());

    let audit_id = format!("MESSAGE_ID={}", corral::audit::MESSAGE_ID);
    let actor = format!("CORRAL_AUDIT_ACTOR_UID={}", OUTSIDER.0);
    // This corrald's entries only: a journal may hold those of earlier runs.
    let corrald = format!("_PID={}", c.pid());
    let records = assert_collected_intact(remote.path(), &[&audit_id, &actor, &corrald]);
    let results: Vec<&Value> = records.iter().map(|r| &r["CORRAL_AUDIT_RESULT"]).collect();
    assert_eq!(results, ["accepted", "ok"], "{records:?}");
    for r in &records {
        assert_eq!(r["CORRAL_AUDIT_COMMAND"], "Stop", "{r}");
        assert_eq!(r["CORRAL_AUDIT_WORKER"], "web-1", "{r}");
        assert_eq!(r["CORRAL_AUDIT_ACTOR_COMM"], "corralctl", "{r}");
        assert_eq!(r["CORRAL_AUDIT_SOCKET"], path_str(&c.socket), "{r}");
    }

    for (stream, message) in [("stdout", said.clone()), ("stderr", format!("{said} on stderr"))] {
        let matching = format!("MESSAGE={message}");
        let lines = assert_collected_intact(remote.path(), &["CORRAL_WORKER_ID=web-1", &matching, &corrald]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["CORRAL_GROUP"], "web", "{lines:?}");
        assert_eq!(lines[0]["CORRAL_STREAM"], stream, "{lines:?}");
        assert_eq!(lines[0]["SYSLOG_IDENTIFIER"], "web", "{lines:?}");
    }
    c.shutdown_ok().await;
}

/// The one file the central rsyslog writes for this host.
fn received_file() -> Result<PathBuf, String> {
    let hosts: Vec<PathBuf> = std::fs::read_dir(RECEIVED_DIR)
        .map_err(|e| format!("{RECEIVED_DIR}: {e}"))?
        .filter_map(|e| Some(e.ok()?.path().join("audit.jsonl")))
        .collect();
    match hosts.as_slice() {
        [one] if one.exists() => Ok(one.clone()),
        _ => Err(format!("one host's audit.jsonl in {RECEIVED_DIR}, found {hosts:?}")),
    }
}

/// Where two files part, for a failure message.
fn first_difference(sent: &[u8], got: &[u8]) -> String {
    let at = sent.iter().zip(got).position(|(s, g)| s != g).unwrap_or(sent.len().min(got.len()));
    let line = sent[..at].iter().filter(|b| **b == b'\n').count() + 1;
    let around =
        |bytes: &[u8]| String::from_utf8_lossy(&bytes[at.saturating_sub(60)..bytes.len().min(at + 60)]).into_owned();
    format!(
        "{} bytes sent, {} received; they part at byte {at} (line {line}):\nsent     {:?}\nreceived {:?}",
        sent.len(),
        got.len(),
        around(sent),
        around(got)
    )
}

/// `corralctl audit verify FILE`: its exit code, stdout and stderr.
fn verify(file: &Path) -> (Option<i32>, String, String) {
    let out = run_bounded(std::process::Command::new(CORRALCTL).args(["audit", "verify"]).arg(file));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
async fn the_json_audit_log_shipped_by_rsyslog_arrives_byte_for_byte_and_its_chain_verifies_there() {
    needs_root("it runs systemd units and installs their configs");
    let audit_dir = Path::new(AUDIT_JSON).parent().unwrap();
    let created = vec![
        PathBuf::from(SENDER_CONFIG),
        PathBuf::from(RECEIVER_CONFIG),
        PathBuf::from(RECEIVER_UNIT),
        PathBuf::from(RECEIVED_DIR),
        PathBuf::from("/var/lib/rsyslog-corral-central"),
        PathBuf::from(if audit_dir.exists() { AUDIT_JSON } else { "/var/log/corral" }),
    ];
    let _cleanup = Cleanup {
        units: &["rsyslog.service", "syslog.socket", "rsyslog-corral-central.service"],
        paths: created,
        spooled: &["imfile-state", "corral-audit"],
    };

    // The central host: a second rsyslog, a unit of its own.
    install(RECEIVER_CONFIG, &documented("rsyslog-receiver.conf"));
    install(RECEIVER_UNIT, &std::fs::read_to_string(format!("{DOCS}/rsyslog-corral-central.service")).unwrap());
    systemctl(&["daemon-reload"]);
    systemctl(&["start", "rsyslog-corral-central.service"]);
    wait_listening(SYSLOG_PORT, "rsyslog-corral-central.service");
    // This host: Debian's rsyslog.service with the documented snippet,
    // which must pass rsyslog's own check together with Debian's config.
    install(SENDER_CONFIG, &documented("rsyslog-sender.conf"));
    let (ok, out) = run("rsyslogd", &["-N1"]);
    assert!(ok && !out.contains("error"), "rsyslogd -N1 on Debian's config with the snippet: {out}");
    systemctl(&["restart", "rsyslog.service"]);

    let mut c = Corrald::new("");
    c.write_config(&format!("audit_logs_json_target = {AUDIT_JSON:?}\n{}", demo_group("web", 2, &[], "")));
    c.start();
    c.wait_ready("web", 2).await;
    assert_eq!(c.ctl(&["stop", "web-1"]).0, Some(0), "{}", c.stderr_tail());
    // A refused request whose record is longer than rsyslog's default 8 KiB
    // message limit and holds escaped control bytes and raw UTF-8.
    let value = format!("{}é\u{202e}", "\u{1}".repeat(200));
    let mut limit = vec!["limit".to_string(), "wéb".to_string()];
    limit.extend((1..=40).map(|i| format!("Key{i}={value}")));
    let limit: Vec<&str> = limit.iter().map(String::as_str).collect();
    assert_eq!(c.ctl(&limit).0, Some(1), "the limit on no such target is refused");
    assert_eq!(c.ctl(&["start", "web-1"]).0, Some(0), "{}", c.stderr_tail());
    c.shutdown_ok().await;

    let sent = std::fs::read(AUDIT_JSON).unwrap();
    let longest = sent.split(|b| *b == b'\n').map(<[u8]>::len).max().unwrap();
    assert!(longest > 8 * 1024, "a record over 8 KiB goes through rsyslog: the longest is {longest} bytes");
    let received = poll_blocking("the central rsyslog to have written every line as sent", PATIENCE, || {
        let file = received_file()?;
        let got = std::fs::read(&file).map_err(|e| e.to_string())?;
        if got == sent {
            Ok(file)
        } else {
            Err(format!(
                "{}\n{}\n{}",
                first_difference(&sent, &got),
                unit_journal("rsyslog.service"),
                unit_journal("rsyslog-corral-central.service")
            ))
        }
    });

    let records = sent.iter().filter(|b| **b == b'\n').count() - 1;
    let (code, out, err) = verify(&received);
    assert_eq!(code, Some(0), "verify on the received file: {out}{err}");
    assert!(out.contains(&format!("intact, {records} records")), "{out}");

    // The check is real: one record edited on the way breaks the chain at the next.
    let text = String::from_utf8(sent).unwrap();
    let edited_at = text.lines().position(|l| l.contains("\"result\":\"ok\"")).expect("an ok record");
    let tampered: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| if i == edited_at { l.replace("\"ok\"", "\"failed\"") } else { l.to_string() } + "\n")
        .collect();
    let tampered_file = c.dir.path().join("tampered.jsonl");
    std::fs::write(&tampered_file, tampered).unwrap();
    let (code, out, err) = verify(&tampered_file);
    assert_eq!(code, Some(1), "verify on an edited copy: {out}{err}");
    assert!(
        err.contains(&format!("line {}", edited_at + 2))
            && err.contains(&format!("does not match line {}", edited_at + 1)),
        "{err}"
    );
}

#[test]
fn the_guide_shows_each_tested_config_file_as_it_is() {
    let guide_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/central-logging.md");
    let guide = std::fs::read_to_string(guide_path).unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(DOCS).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 4, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(guide.contains(text.trim_end()), "{guide_path} does not show {} as it is", file.display());
    }
}
