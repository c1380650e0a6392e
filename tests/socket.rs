//! The command socket as a boundary: framing errors and garbage from one
//! client never disturb another, a second corrald never takes over a live
//! socket, the socket and its directory get their promised modes, the
//! corralctl CLI keeps its exit-code contract, and a soft stop of
//! signal-mode workers reports its progress.

mod common;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use corral::ctl::Client;
use corral::proto::{self, request::Command as Cmd, response::Content, Status};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// A group of demo workers with short units, so that a final shutdown
/// drains quickly.
fn protocol_group(name: &str, count: u32) -> String {
    demo_group(name, count, &["--unit-ms", "100"], "stop_timeout = \"20s\"\n")
}

/// xorshift64*: deterministic bytes without a new dependency.
fn pseudo_random_bytes(mut seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// (a) A length prefix far over the maximum.
async fn oversized_prefix(socket: &Path) {
    let mut s = UnixStream::connect(socket).await.expect("connect (a)");
    s.write_all(&0xFFFF_FFF0u32.to_be_bytes()).await.expect("write (a)");
    let r = read_response(&mut s, "oversized prefix").await;
    assert_eq!(r.status(), Status::Failure, "{r:?}");
    assert_eq!(r.id, 0, "{r:?}");
    let m = r.message.to_lowercase();
    assert!(
        m.contains("frame") && m.contains("maximum"),
        "message should name the frame and the maximum: {:?}",
        r.message
    );
    assert!(
        r.message.contains(&corral::frame::MAX_COMMAND_FRAME.to_string()),
        "message should give the maximum: {:?}",
        r.message
    );
    expect_eof(&mut s, "oversized prefix").await;
}

// (b) A frame cut short: the prefix promises 100 bytes, 10 come, then EOF.
// Returns the FAILURE message so the caller can check its wording.
async fn truncated_frame(socket: &Path) -> String {
    let mut s = UnixStream::connect(socket).await.expect("connect (b)");
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x08; 10]);
    s.write_all(&bytes).await.expect("write (b)");
    s.shutdown().await.expect("shutdown(Write) (b)");
    let r = read_response(&mut s, "truncated frame").await;
    assert_eq!(r.status(), Status::Failure, "{r:?}");
    assert_eq!(r.id, 0, "{r:?}");
    expect_eof(&mut s, "truncated frame").await;
    r.message
}

// (c) 4 KiB of noise: a FAILURE with id 0 and then the end, or just the end.
async fn random_noise(socket: &Path) {
    let mut s = UnixStream::connect(socket).await.expect("connect (c)");
    // corrald may close while the noise is still being written; a write error
    // is then expected, not a failure of the test.
    if s.write_all(&pseudo_random_bytes(0x9E37_79B9_7F4A_7C15, 4096)).await.is_ok() {
        let _ = s.shutdown().await;
    }
    let mut frames = 0;
    loop {
        match read_frame(&mut s).await {
            Ok(Some(body)) => {
                frames += 1;
                let r = proto::Response::decode(body.as_slice()).expect("corrald's answer to noise must decode");
                assert_eq!(r.status(), Status::Failure, "noise must never be answered other than FAILURE: {r:?}");
                assert_eq!(r.id, 0, "{r:?}");
                assert!(frames == 1, "more than one frame in answer to noise: {r:?}");
            }
            Ok(None) => break,
            // Closing a Unix socket with unread input resets it on Linux.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("random noise: unexpected read error {e}"),
        }
    }
}

// (d) A well-formed Request whose command is an unknown field: FAILURE for
// that id, and the connection stays usable.
async fn unknown_command(socket: &Path) {
    let mut s = UnixStream::connect(socket).await.expect("connect (d)");
    // field 1 varint 42; field 99 (tag 99<<3|2 = 0x31A) length-delimited, empty.
    s.write_all(&framed(&[0x08, 0x2A, 0x9A, 0x06, 0x00])).await.expect("write (d)");
    let r = read_response(&mut s, "unknown command").await;
    assert_eq!(r.id, 42, "{r:?}");
    assert_eq!(r.status(), Status::Failure, "{r:?}");
    assert!(r.message.contains("unknown or missing command"), "{:?}", r.message);

    let status = proto::Request { id: 43, command: Some(Cmd::Status(proto::StatusRequest {})) };
    s.write_all(&framed(&status.encode_to_vec()))
        .await
        .expect("the connection must stay open after an unknown command");
    let r = read_response(&mut s, "status after unknown command").await;
    assert_eq!(r.id, 43, "{r:?}");
    assert_eq!(r.status(), Status::Ok, "{r:?}");
    assert!(matches!(r.content, Some(Content::SupervisorStatus(_))), "{r:?}");
}

/// Polls until `counter` reaches `at_least`.
async fn wait_count(counter: &AtomicU64, at_least: u64, what: &str) {
    poll(what, PATIENCE, || async move {
        let now = counter.load(Ordering::SeqCst);
        if now >= at_least {
            Ok(())
        } else {
            Err(format!("{now} of {at_least}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_never_disturbs_other_clients() {
    let mut c = Corrald::new(&protocol_group("small", 2));
    c.start();
    c.wait_ready("small", 2).await;
    let pids_before = c.pids("small").await;
    assert_eq!(pids_before.len(), 2, "{pids_before:?}");

    // A well-behaved client on one persistent connection.
    let successes = Arc::new(AtomicU64::new(0));
    let stop_flag = Arc::new(AtomicBool::new(false));
    let good = {
        let socket = c.socket.clone();
        let successes = successes.clone();
        let stop_flag = stop_flag.clone();
        tokio::spawn(async move {
            let mut client = Client::connect(&socket).await.map_err(|e| format!("connect: {e}"))?;
            while !stop_flag.load(Ordering::SeqCst) {
                let r = tokio::time::timeout(PATIENCE, client.call(Cmd::Status(proto::StatusRequest {}), |_| {}))
                    .await
                    .map_err(|_| "a status call got no answer in time".to_string())?
                    .map_err(|e| format!("status call failed: {e}"))?;
                if r.status() != Status::Ok || !matches!(r.content, Some(Content::SupervisorStatus(_))) {
                    return Err(format!("status call answered {r:?}"));
                }
                successes.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<(), String>(())
        })
    };
    wait_count(&successes, 5, "good client before the abuse").await;

    let socket = c.socket.clone();
    let ((), truncated_message, (), ()) = tokio::join!(
        oversized_prefix(&socket),
        truncated_frame(&socket),
        random_noise(&socket),
        unknown_command(&socket),
    );
    assert!(!truncated_message.is_empty());

    // The good client keeps being served after the abuse.
    let after_abuse = successes.load(Ordering::SeqCst);
    wait_count(&successes, after_abuse + 5, "good client after the abuse").await;
    stop_flag.store(true, Ordering::SeqCst);
    let result =
        tokio::time::timeout(PATIENCE, good).await.expect("good client did not stop").expect("good client panicked");
    assert_eq!(result, Ok(()), "the good client saw an error");
    let total = successes.load(Ordering::SeqCst);
    assert!(total >= 10, "the good client got only {total} answers");

    c.assert_alive();
    let status = c.status().await;
    let g = status.groups.iter().find(|g| g.name == "small").expect("group in status");
    assert_eq!((g.running, g.ready), (2, 2), "{g:?}");
    assert_eq!(c.pids("small").await, pids_before, "workers changed under malformed input");

    c.shutdown_ok().await;
}

/// The wording of the answer to a truncated frame: it must say truncated,
/// not blame the size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_is_reported_as_truncated() {
    let mut c = Corrald::new(&protocol_group("small", 1));
    c.start();
    let message = truncated_frame(&c.socket).await;
    assert!(message.to_lowercase().contains("truncated"), "the answer to a truncated frame should say so: {message:?}");
    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// Binding: one corrald per socket, stale sockets, modes
// ---------------------------------------------------------------------------

/// The process umask, read without changing it.
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022)
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_corrald_refuses_and_keeps_first_serving() {
    // A: its socket in a directory that does not exist yet.
    let mut a = Corrald::new(&protocol_group("first", 2));
    a.socket = a.dir.path().join("run").join("corral").join("corrald.sock");
    let parent = a.socket.parent().unwrap().to_path_buf();
    assert!(!parent.exists());
    a.write_config(&protocol_group("first", 2));
    a.start();
    a.wait_ready("first", 2).await;
    assert!(is_socket(&a.socket));
    assert_eq!(mode(&a.socket), 0o600, "socket mode");
    assert_eq!(mode(&parent), 0o750 & !umask(), "mode of the socket directory corrald created (umask {:03o})", umask());
    let inode = std::fs::symlink_metadata(&a.socket).unwrap().ino();
    let pids_before = a.pids("first").await;
    assert_eq!(pids_before.len(), 2);

    // B: the same config, so the same socket.
    let b_stderr = a.dir.path().join("b.stderr");
    let mut b = KillOnDrop(
        Command::new(CORRALD)
            .arg("--config")
            .arg(&a.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&b_stderr).unwrap())
            .spawn()
            .expect("spawn second corrald"),
    );
    let status = wait_child(&mut b, "the second corrald");
    let stderr = std::fs::read_to_string(&b_stderr).unwrap();
    assert!(!status.success(), "the second corrald exited {status}: {stderr}");
    assert!(stderr.contains(&path_str(&a.socket)), "stderr should name the socket: {stderr}");
    assert!(stderr.contains("another corrald"), "stderr should say another corrald serves there: {stderr}");

    // A is untouched: same socket file, still answering, same workers.
    assert!(is_socket(&a.socket), "the socket file is gone after the refused start");
    assert_eq!(std::fs::symlink_metadata(&a.socket).unwrap().ino(), inode, "the socket file was replaced");
    a.assert_alive();
    let s = a.status().await;
    assert_eq!(s.pid, a.pid(), "status answered by another process");
    let g = s.groups.iter().find(|g| g.name == "first").unwrap();
    assert_eq!((g.running, g.ready), (2, 2), "{g:?}");
    assert_eq!(a.pids("first").await, pids_before);
    assert!(pids_before.values().all(|p| pid_alive(*p)));

    // A stale socket nobody listens on is replaced.
    let mut s2 = Corrald::new(&protocol_group("second", 1));
    drop(std::os::unix::net::UnixListener::bind(&s2.socket).expect("bind the stale socket"));
    assert!(is_socket(&s2.socket), "the stale socket file should stay after its listener is gone");
    let stale_inode = std::fs::symlink_metadata(&s2.socket).unwrap().ino();
    s2.start();
    s2.wait_ready("second", 1).await;
    let st = s2.status().await;
    assert_eq!(st.pid, s2.pid());
    assert_eq!(st.socket_path, path_str(&s2.socket));
    assert_ne!(std::fs::symlink_metadata(&s2.socket).unwrap().ino(), stale_inode, "the stale socket was not replaced");
    assert_eq!(mode(&s2.socket), 0o600, "mode of the socket that replaced a stale one");
    s2.shutdown_ok().await;

    a.shutdown_ok().await;
    assert!(!a.socket.exists(), "corrald should remove its socket on exit");
}

// ---------------------------------------------------------------------------
// The corralctl command line
// ---------------------------------------------------------------------------

#[test]
fn corralctl_cli_contract() {
    let mut c = Corrald::new(&protocol_group("web", 2));
    c.start();
    // Wait, bounded, until both workers are ready, through the CLI itself.
    poll_blocking("both workers ready", PATIENCE, || {
        let (code, out, err) = c.ctl(&["--json", "status"]);
        assert_eq!(code, Some(0), "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("status JSON");
        if v["supervisor"]["groups"][0]["ready"] == 2 {
            Ok(())
        } else {
            Err(out)
        }
    });

    // status: exit 0, the group in the table.
    let (code, out, err) = c.ctl(&["status"]);
    assert_eq!(code, Some(0), "status: {out}{err}");
    assert!(out.lines().any(|l| l.split_whitespace().next() == Some("web")), "status should list group web:\n{out}");
    assert!(out.contains(&path_str(&c.socket)), "status should show the socket:\n{out}");

    // A FAILURE answer: exit 1 and a FAILURE line naming the target.
    let (code, out, err) = c.ctl(&["stop", "nosuchgroup"]);
    assert_eq!(code, Some(1), "stop nosuchgroup: {out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("FAILURE") && l.contains("nosuchgroup")),
        "expected a FAILURE line naming nosuchgroup:\n{out}"
    );

    // No socket: exit 3, one line on stderr naming the path.
    let missing = c.dir.path().join("missing.sock");
    let (code, out, err) = corralctl(&missing, &["status"]);
    assert_eq!(code, Some(3), "missing socket: {out}{err}");
    assert!(out.is_empty(), "nothing on stdout without an answer: {out:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {err:?}");
    assert!(lines[0].starts_with("corralctl: "), "{err:?}");
    assert!(lines[0].contains(&path_str(&missing)), "the line should name the path: {err:?}");

    // --json: one object per line, status OK.
    let (code, out, err) = c.ctl(&["--json", "workers"]);
    assert_eq!(code, Some(0), "--json workers: {out}{err}");
    let objects: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))).collect();
    assert_eq!(objects.len(), 1, "one final response, no progress for a worker list:\n{out}");
    for v in &objects {
        assert!(v.is_object(), "{v}");
        assert_eq!(v["status"], "OK", "{v}");
    }
    let workers = objects[0]["workers"].as_array().expect("workers array");
    let mut ids: Vec<&str> = workers.iter().map(|w| w["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["web-1", "web-2"]);
    assert!(
        workers.iter().all(|w| w["group"] == "web" && w["pid"].as_u64().unwrap_or(0) > 0 && w["state"] == "ready"),
        "{out}"
    );

    // A usage error: exit 2, and no workers were touched.
    let (code, out, err) = c.ctl(&["scale", "web", "notanumber"]);
    assert_eq!(code, Some(2), "usage error: {out}{err}");
    assert!(!err.is_empty(), "a usage error should explain itself on stderr");
    let (_, out, _) = c.ctl(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["supervisor"]["groups"][0]["desired"], 2, "{out}");

    // corrald --check-config.
    let out = run_bounded(Command::new(CORRALD).arg("--check-config").arg(&c.config));
    assert_eq!(out.status.code(), Some(0), "check of a good config: {}", String::from_utf8_lossy(&out.stderr));
    let bad = c.dir.path().join("bad.toml");
    std::fs::write(&bad, "[groups.web]\ncommand = \"/bin/true\"\nstop_timout = \"5s\"\n").unwrap();
    let out = run_bounded(Command::new(CORRALD).arg("--check-config").arg(&bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "check of a bad config: {err}");
    assert!(err.contains("stop_timout"), "stderr should name the unknown key: {err}");
    assert!(err.contains(&path_str(&bad)), "stderr should name the file: {err}");

    // The final shutdown, through the CLI: exit 0, then corrald exits 0.
    let (code, out, err) = c.ctl(&["shutdown"]);
    assert_eq!(code, Some(0), "shutdown: {out}{err}");
    assert_eq!(c.wait_exit(), Some(0), "{}", c.stderr());
}

// ---------------------------------------------------------------------------
// Soft stop in signal mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_stop_of_signal_mode_worker_reports_processing_then_ok() {
    let group = "[groups.sig]\ncommand = \"{demo}\"\nargs = [\"--concurrency\", \"2\", \"--unit-ms\", \"300\", \"--log\", \"{log}\"]\ncount = 3\nstop_mode = \"signal\"\nready_after = \"100ms\"\nstop_timeout = \"20s\"\n";
    let mut c = Corrald::new(group);
    c.start();
    c.wait_ready("sig", 3).await;
    let pids = c.pids("sig").await;
    assert_eq!(pids.len(), 3, "{pids:?}");
    // Every worker has a unit in flight when the stop arrives.
    c.wait_work("a unit started in each worker", |log| pids.values().all(|p| log.started.iter().any(|s| s.1 == *p)))
        .await;

    let (progress, last) = c.call(stop("sig", false)).await;

    assert!(progress.iter().all(|r| r.status() == Status::Processing && r.id == last.id), "{progress:#?}");
    let with_progress: Vec<&proto::Progress> = progress
        .iter()
        .filter_map(|r| match &r.content {
            Some(Content::Progress(p)) => Some(p),
            _ => None,
        })
        .collect();
    assert!(with_progress.len() >= 3, "expected at least 3 progress responses: {progress:#?}");
    assert!(with_progress.iter().all(|p| p.total == 3), "{with_progress:#?}");
    // Each worker's outcome is the progress response that advances the
    // finished count (its wording, e.g. "stopped", is not part of the contract).
    let mut finished: Vec<&str> = Vec::new();
    let mut count = 0;
    for p in &with_progress {
        if p.finished > count {
            assert_eq!(p.finished, count + 1, "finished jumped: {with_progress:#?}");
            count = p.finished;
            finished.push(p.worker.as_str());
        }
    }
    finished.sort();
    assert_eq!(finished, ["sig-1", "sig-2", "sig-3"], "{progress:#?}");
    assert_eq!(with_progress.last().map(|p| (p.finished, p.failed)), Some((3, 0)), "{progress:#?}");

    assert_eq!(last.status(), Status::Ok, "{last:?}");
    match &last.content {
        Some(Content::Outcome(o)) => {
            assert_eq!((o.total, o.succeeded), (3, 3), "{o:?}");
            assert!(o.failures.is_empty(), "{o:?}");
        }
        other => panic!("final answer without an outcome: {other:?}"),
    }

    let alive: Vec<u32> = pids.values().copied().filter(|p| pid_alive(*p)).collect();
    assert!(alive.is_empty(), "still alive after the final OK: {alive:?}");
    let log = c.work_log();
    assert!(log.started.len() >= 3);
    assert_eq!(log.unfinished(), vec![], "units started but not completed");
    let mut exited: Vec<u32> = log.exits.iter().map(|e| e.1).collect();
    exited.sort();
    let mut expected: Vec<u32> = pids.values().copied().collect();
    expected.sort();
    assert_eq!(exited, expected, "every worker logged a clean exit after draining");
    // Stopped, and not restarted.
    let w = c.workers().await;
    assert!(w.iter().all(|w| w.pid == 0 && w.state == "stopped"), "{w:?}");

    c.shutdown_ok().await;
}

/// A socket that takes the connection but never answers, as during the
/// gap of a restart when systemd holds the socket for a corrald not yet
/// up: corralctl gives up within its timeout, with exit 3 and a message
/// that says what may be going on, instead of waiting for good. A request
/// that has begun to answer is not cut off (the soft stop test above
/// reports for as long as its drain takes).
#[test]
fn corralctl_gives_up_on_a_socket_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming().take(2) {
            kept.push(stream.unwrap());
        }
        kept
    });
    let (code, out, err) = corralctl(&path, &["--timeout", "300ms", "stop", "web"]);
    assert_eq!(code, Some(3), "{out} {err}");
    assert!(err.contains("no answer from corrald on") && err.contains("within 300ms"), "{err}");
    assert!(err.contains("starting or restarting"), "{err}");
    let (code, out, err) = corralctl(&path, &["status"]);
    assert_eq!(code, Some(3), "{out} {err}");
    assert!(err.contains("within 5s"), "the default for a status: {err}");
    drop(held);
}
