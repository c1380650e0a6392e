//! corral's audit records and worker lines beyond one host: the journal
//! sent by systemd-journal-upload to a systemd-journal-remote collector,
//! and the JSON audit log shipped by rsyslog to a second rsyslog.
//!
//! The configs are the files of docs/central-logging/ that
//! docs/central-logging.md shows, used as they are but for the collector's
//! name, which here is the loopback address. Like tests/service.rs these run
//! inside a container booted with systemd (`tests/systemd/run-suite`), one at
//! a time, and leave no unit, config or log of theirs behind.

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
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for unit in self.units {
            let _ = run("systemctl", &["stop", unit]);
        }
        for path in &self.paths {
            let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
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
fn assert_collected_intact(dir: &Path, matches: &[&str]) -> Vec<Value> {
    let local = journal(matches);
    assert!(!local.is_empty(), "no local journal entry matches {matches:?}");
    let remote = poll_blocking(&format!("the collector to have {} entries {matches:?}", local.len()), PATIENCE, || {
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
    let _cleanup = Cleanup {
        units: &["systemd-journal-upload.service", COLLECTOR_UNIT],
        paths: vec![PathBuf::from(UPLOAD_CONFIG), PathBuf::from("/var/lib/private/systemd/journal-upload")],
    };

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
    let records = assert_collected_intact(remote.path(), &[&audit_id, &actor]);
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
        let lines = assert_collected_intact(remote.path(), &["CORRAL_WORKER_ID=web-1", &matching]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["CORRAL_GROUP"], "web", "{lines:?}");
        assert_eq!(lines[0]["CORRAL_STREAM"], stream, "{lines:?}");
        assert_eq!(lines[0]["SYSLOG_IDENTIFIER"], "web", "{lines:?}");
    }
    c.shutdown_ok().await;
}
