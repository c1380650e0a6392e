//! Hostile clients, files and configs against a real corrald, one test per
//! class of attack. corrald runs as root and its socket may be opened by
//! other users, so each test shows from the outside (a client on the
//! socket, corralctl's output and exit code, a file on disk, /proc) that a
//! protection holds, and would fail without it.
//!
//! Every wait is bounded by the harness's PATIENCE. Two tests are slow by
//! nature: the half-sent frame waits out `limits.frame_timeout` (10s by
//! default), and the 300-worker listing spawns 300 processes. Tests that a
//! `[limits]` table in the config would make faster say so where they are.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use corral::ctl::Client;
use corral::proto::{self, request::Command as Cmd, response::Content, Status};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Light workers: no protocol, a quick readiness, gone at SIGTERM.
fn sleepers(name: &str, count: u32) -> String {
    format!(
        "[groups.{name}]\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\ncount = {count}\nstop_mode = \"signal\"\n\
         ready_after = \"10ms\"\nstop_timeout = \"10s\"\n"
    )
}

/// Runs corrald on `config` where it is expected to refuse to start: its
/// exit code and stderr. A corrald that opens `socket` instead has started,
/// and is stopped at once.
fn corrald_refuses(config: &Path, socket: &Path) -> (Option<i32>, String) {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = KillOnDrop(
        Command::new(CORRALD)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("spawn corrald"),
    );
    let status = poll_blocking("corrald to refuse to start", PATIENCE, || {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Ok(status);
        }
        let text = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        assert!(
            std::os::unix::net::UnixStream::connect(socket).is_err(),
            "corrald started on {} and serves {}:\n{text}",
            config.display(),
            socket.display()
        );
        Err(format!("it runs, its stderr so far:\n{text}"))
    });
    let text = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    assert!(!status.success(), "corrald exited 0 on {}: {text}", config.display());
    (status.code(), text)
}

fn check_config(config: &Path) -> (Option<i32>, String) {
    let out = run_bounded(Command::new(CORRALD).arg("--check-config").arg(config));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/<pid>/fd").count()
}

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The characters a terminal acts on or that hide or reorder text; none
/// may reach a terminal, a log line or an answer raw.
const HOSTILE_CHARS: &[(char, &str)] = &[
    ('\u{1b}', "ESC"),
    ('\u{7}', "BEL"),
    ('\r', "CR"),
    ('\u{9b}', "C1 CSI U+009B"),
    ('\u{202e}', "RLO U+202E"),
    ('\u{2028}', "LINE SEPARATOR U+2028"),
];

/// Which of `chars` occur raw in `text`.
fn raw_chars(text: &str, chars: &[(char, &'static str)]) -> Vec<&'static str> {
    chars.iter().filter(|(c, _)| text.contains(*c)).map(|(_, name)| *name).collect()
}

/// A request frame, as bytes to hand to a helper that is not Rust.
fn request_frame(id: u64, command: Cmd) -> Vec<u8> {
    framed(&proto::Request { id, command: Some(command) }.encode_to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

const PYTHON: &str = "/usr/bin/python3";

/// A python script run as the outsider, read line by line.
struct Helper {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Helper {
    fn as_outsider(dir: &Path, script: &str, args: &[&str]) -> Helper {
        needs_root("the helper runs as another user");
        assert!(Path::new(PYTHON).exists(), "{PYTHON} is needed to act as another user's client");
        let (uid, gid) = (OUTSIDER.0.to_string(), OUTSIDER.1.to_string());
        let stderr = tempfile::NamedTempFile::new_in(dir).unwrap().into_temp_path().keep().unwrap();
        let mut child = Command::new("setpriv")
            .args(["--reuid", &uid, "--regid", &gid, "--clear-groups", PYTHON, "-c", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn the helper");
        let lines = stdout_lines(child.stdout.take().unwrap());
        Helper { child: KillOnDrop(child), lines, stderr }
    }

    fn line(&self, what: &str) -> String {
        self.lines.recv_timeout(PATIENCE).unwrap_or_else(|e| {
            panic!(
                "{what}: no line from the helper ({e}); its stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        })
    }

    /// Closes the helper's stdin, which tells it to let go, and waits for it.
    fn finish(mut self) {
        drop(self.child.0.stdin.take());
        let status = wait_child(&mut self.child, "the helper");
        assert!(status.success(), "helper: {status}: {}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
    }
}

/// Opens `held` connections, each answered once (a status round trip proves
/// corrald gave it a seat), then `probes` connections that only read what
/// corrald says; prints each answer as hex and holds everything until its
/// stdin closes.
const HOLD_CONNECTIONS: &str = r#"
import socket, sys
path, held, probes, request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])

def exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data

def frame(s):
    try:
        head = exactly(s, 4)
        if head is None:
            return "eof"
        body = exactly(s, int.from_bytes(head, "big"))
        return "eof" if body is None else "frame:" + body.hex()
    except socket.timeout:
        return "timeout"

conns = []
for i in range(held):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    s.sendall(request)
    print("held", i, frame(s), flush=True)
    conns.append(s)
for i in range(probes):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    print("probe", i, frame(s), flush=True)
    conns.append(s)
print("holding", flush=True)
sys.stdin.read()
"#;

/// A server that answers any request frame with the given frame, as a
/// squatter would answer in corrald's place.
const FAKE_SERVER: &str = r#"
import socket, sys
path, answer = sys.argv[1], bytes.fromhex(sys.argv[2])
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(8)
print("listening", flush=True)
while True:
    conn, _ = srv.accept()
    conn.settimeout(10)
    try:
        head = b""
        while len(head) < 4:
            chunk = conn.recv(4 - len(head))
            if not chunk:
                break
            head += chunk
        body = b""
        while len(head) == 4 and len(body) < int.from_bytes(head, "big"):
            chunk = conn.recv(int.from_bytes(head, "big") - len(body))
            if not chunk:
                break
            body += chunk
        conn.sendall(answer)
        while conn.recv(4096):
            pass
    except Exception:
        pass
    conn.close()
"#;

/// Parses a helper's `<word> <n> frame:<hex>` line into the response.
fn helper_response(line: &str) -> Result<proto::Response, String> {
    let payload = line.split_whitespace().nth(2).ok_or_else(|| format!("odd line {line:?}"))?;
    let hex = payload.strip_prefix("frame:").ok_or_else(|| format!("no frame but {payload:?}: {line:?}"))?;
    proto::Response::decode(unhex(hex).as_slice()).map_err(|e| format!("undecodable ({e}): {line:?}"))
}

// ---------------------------------------------------------------------------
// 1. Crash: a huge scale, a state file over the limit, a hostile group name
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_huge_scales_and_hostile_state_files_are_refused_and_nothing_changes() {
    let mut c = Corrald::new(&sleepers("web", 2));
    c.start();
    c.wait_ready("web", 2).await;
    let pids = c.pids("web").await;
    assert_eq!(pids.len(), 2, "{pids:?}");
    let unchanged = |c: &Corrald, what: &str, s: &proto::SupervisorStatus, now: &BTreeMap<String, u32>| {
        let g = group(s, "web");
        assert_eq!((g.desired, g.running), (2, 2), "{what} changed the group: {g:?}");
        assert_eq!(now, &pids, "{what} changed the workers\n{}", c.stderr_tail());
    };

    let (code, out, err) = c.ctl(&["scale", "web", "4294967295"]);
    assert_eq!(code, Some(1), "scale to u32::MAX must be a FAILURE answer: {out}{err}");
    assert!(out.starts_with("FAILURE") && out.contains("limits.max_group_workers"), "{out}{err}");
    c.assert_alive();
    let (s, now) = (c.status().await, c.pids("web").await);
    unchanged(&c, "scale 4294967295", &s, &now);

    // A state file is as hostile as a request: it is read as root, but
    // whoever wrote it need not be.
    for scale in [4_294_967_295u64, 1025] {
        let file = c.dir.path().join(format!("over-{scale}.json"));
        std::fs::write(&file, serde_json::json!({"version": 1, "groups": {"web": {"scale": scale}}}).to_string())
            .unwrap();
        let (code, out, err) = c.ctl(&["load-state", file.to_str().unwrap()]);
        assert_eq!(code, Some(1), "a state file scaling web to {scale}: {out}{err}");
        assert!(out.contains("limits.max_group_workers") && out.contains("nothing changed"), "{out}{err}");
        c.assert_alive();
        let (s, now) = (c.status().await, c.pids("web").await);
        unchanged(&c, "a state file over the limit", &s, &now);
    }

    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2Jweb";
    let file = c.dir.path().join("hostile-name.json");
    std::fs::write(&file, serde_json::json!({"version": 1, "groups": {hostile: {"scale": 3}}}).to_string()).unwrap();
    let (code, out, err) = c.ctl(&["load-state", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "a state file with a hostile group name must be refused: {out}{err}");
    assert!(out.contains("group name"), "the refusal should say what is wrong: {out}");
    assert_eq!(raw_chars(&(out.clone() + &err), HOSTILE_CHARS), Vec::<&str>::new(), "raw in {out:?}");
    assert!(out.contains("\\x1b]0;pwned"), "the name should be shown, escaped once: {out:?}");
    let (s, now) = (c.status().await, c.pids("web").await);
    unchanged(&c, "a state file with a hostile name", &s, &now);

    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 2. Privilege tiers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privilege_tiers_read_operate_and_admin_are_enforced() {
    needs_root("the caller is another user");
    let mut c = Corrald::new("");
    let share = c.share_with_outsider();
    c.write_config(&format!("{share}{}", sleepers("web", 2)));
    c.start();
    c.wait_ready("web", 2).await;
    let pids = c.pids("web").await;

    // No lists: whoever the socket admits may read, and only read.
    let (ok, out) = c.ctl_as(OUTSIDER, &["status"]);
    assert!(ok && out.lines().any(|l| l.starts_with("web ")), "the read tier may see status: {out}");
    let (ok, out) = c.ctl_as(OUTSIDER, &["workers"]);
    assert!(ok && out.contains("web-1") && out.contains("web-2"), "the read tier may list workers: {out}");
    let (ok, out) = c.ctl_as(OUTSIDER, &["stop", "web"]);
    assert!(!ok, "the read tier must not stop workers: {out}");
    assert!(out.contains("denied") && out.contains("operate") && out.contains("command_operate_uids"), "{out}");
    assert_eq!(c.pids("web").await, pids, "a denied stop touched the workers");
    c.shutdown_ok().await;

    // The operate tier may change the fleet, not corrald itself.
    c.write_config(&format!("{share}command_operate_uids = [{}]\n{}", OUTSIDER.0, sleepers("web", 2)));
    c.start();
    c.wait_ready("web", 2).await;
    let (ok, out) = c.ctl_as(OUTSIDER, &["stop", "web-1"]);
    assert!(ok, "operate may stop: {out}");
    let (ok, out) = c.ctl_as(OUTSIDER, &["scale", "web", "3"]);
    assert!(ok, "operate may scale: {out}");
    assert_eq!(group(&c.status().await, "web").desired, 3);

    let elsewhere = c.dir.path().join("elsewhere.json");
    let root_only = c.dir.path().join("root-only.json");
    std::fs::write(&root_only, "{\"version\": 1, \"groups\": {}}\n").unwrap();
    chmod(&root_only, 0o600);
    let corrald = CORRALD.to_string();
    let admin_only: [&[&str]; 5] = [
        &["upgrade", "--binary", &corrald],
        &["save-state", elsewhere.to_str().unwrap()],
        &["load-state", root_only.to_str().unwrap()],
        &["shutdown"],
        &["audit", "reopen"],
    ];
    for args in admin_only {
        let (ok, out) = c.ctl_as(OUTSIDER, args);
        assert!(!ok, "operate must not {args:?}: {out}");
        assert!(
            out.contains("denied") && out.contains("needs admin") && out.contains("command_admin_uids"),
            "{args:?} should be denied naming the admin tier and its keys: {out}"
        );
    }
    assert!(!elsewhere.exists(), "a denied save-state wrote {}", elsewhere.display());
    c.assert_alive();

    // State files by name, in corrald's own directory.
    let (ok, out) = c.ctl_as(OUTSIDER, &["save-state", "nightly"]);
    assert!(ok, "operate may save state by name: {out}");
    let saved_dir = c.dir.path().join("state/saved");
    let saved = saved_dir.join("nightly");
    let meta = std::fs::symlink_metadata(&saved).unwrap_or_else(|e| panic!("{}: {e}", saved.display()));
    assert!(meta.is_file() && meta.uid() == 0, "{meta:?}");
    assert_eq!(mode(&saved), 0o600, "a saved state is root's alone");
    assert_eq!(mode(&saved_dir), 0o700, "the saved directory is root's alone");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(state["groups"]["web"]["scale"], 3, "{state}");
    assert_eq!(state["groups"]["web"]["stopped_workers"], serde_json::json!(["web-1"]), "{state}");
    let (ok, out) = c.ctl_as(OUTSIDER, &["scale", "web", "1"]);
    assert!(ok, "{out}");
    let (ok, out) = c.ctl_as(OUTSIDER, &["load-state", "nightly"]);
    assert!(ok, "operate may load state by name: {out}");
    assert_eq!(group(&c.status().await, "web").desired, 3, "load-state nightly restores the scale");

    // A file that is not a state file is refused without quoting it: the
    // caller may not be able to read it themselves.
    let secret = "corral-secret-7d1e";
    let password = "hunter2-b93c";
    for (name, content) in [
        ("secret.json", format!("{{\"{secret}\": \"{password}\"}}\n")),
        ("secret.env", format!("{secret}={password}\n")),
        (
            "secret-state.json",
            format!("{{\"version\": 1, \"groups\": {{\"web\": {{\"{secret}\": \"{password}\"}}}}}}\n"),
        ),
    ] {
        let file = c.dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        chmod(&file, 0o600);
        let (code, out, err) = c.ctl(&["load-state", file.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{name}: {out}{err}");
        assert!(!out.contains(secret) && !out.contains(password), "{name}: the answer quotes the file: {out}");
        let (ok, out) = c.ctl_as(OUTSIDER, &["load-state", file.to_str().unwrap()]);
        assert!(!ok && out.contains("needs admin") && !out.contains(secret), "{name}: {out}");
    }
    let log = c.stderr();
    assert!(!log.contains(secret) && !log.contains(password), "corrald's log quotes a secret file");

    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 3. Symlinks and directories others could write
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_around_a_state_file_are_replaced_not_followed() {
    let mut c = Corrald::new(&sleepers("web", 1));
    c.start();
    c.wait_ready("web", 1).await;
    let pid = c.pid();
    let drop_dir = c.dir.path().join("drop");
    std::fs::create_dir(&drop_dir).unwrap();
    let victim = c.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    chmod(&victim, 0o644);
    let created_through = c.dir.path().join("created-through-a-link");

    let state = drop_dir.join("state.json");
    std::os::unix::fs::symlink(&victim, &state).unwrap();
    // Names a writer might use for its temporary file; a dangling one too,
    // which would create a file where the link points if followed.
    let mut planted = vec![
        "state.json.tmp".to_string(),
        ".state.json.tmp".to_string(),
        "state.json.new".to_string(),
        ".state.json.new".to_string(),
        "state.json~".to_string(),
        ".state.json.swp".to_string(),
        format!(".state.json.tmp-{pid}"),
        format!("state.json.{pid}"),
        format!("state.json.tmp.{pid}"),
    ];
    planted.extend((0..16).map(|n| format!(".state.json.tmp-{pid}-{n}")));
    for name in &planted {
        std::os::unix::fs::symlink(&victim, drop_dir.join(name)).unwrap();
    }
    let dangling = drop_dir.join("dangling.json");
    std::os::unix::fs::symlink(&created_through, &dangling).unwrap();

    for target in [&state, &dangling] {
        let (code, out, err) = c.ctl(&["save-state", target.to_str().unwrap()]);
        assert_eq!(code, Some(0), "save-state {}: {out}{err}", target.display());
        let meta = std::fs::symlink_metadata(target).unwrap();
        assert!(meta.file_type().is_file(), "{} is not a regular file now: {meta:?}", target.display());
        assert_eq!(mode(target), 0o600);
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(target).unwrap()).unwrap();
        assert_eq!(saved["version"], 1, "{saved}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "the victim was written through a link");
    assert_eq!(mode(&victim), 0o644, "the victim's mode changed");
    assert!(!created_through.exists(), "a file was created through a dangling link");
    for name in &planted {
        let link = drop_dir.join(name);
        assert_eq!(std::fs::read_link(&link).ok().as_deref(), Some(victim.as_path()), "{name} was replaced or removed");
    }

    // Reading is as careful: a link or a FIFO is not read.
    let real = drop_dir.join("real.json");
    std::fs::write(&real, serde_json::json!({"version": 1, "groups": {"web": {"scale": 3}}}).to_string()).unwrap();
    let link = drop_dir.join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let fifo = drop_dir.join("fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for path in [&link, &fifo] {
        let (code, out, err) = c.ctl(&["load-state", path.to_str().unwrap()]);
        assert_eq!(code, Some(1), "load-state {} must be refused: {out}{err}", path.display());
        assert_eq!(group(&c.status().await, "web").desired, 1, "load-state {} changed the scale", path.display());
    }
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_others_could_write_or_own_is_refused_at_start() {
    needs_root("the directory is given to another user");
    let mut c = Corrald::new(&sleepers("web", 1));
    let state = c.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    for (mode, owner, why) in [
        (0o777, (0, 0), "writable by group or others"),
        (0o770, (0, 0), "writable by group or others"),
        (0o1777, (0, 0), "writable by group or others"),
        (0o700, OUTSIDER, "belongs to uid 65534"),
    ] {
        chown(&state, owner);
        chmod(&state, mode);
        let (code, err) = corrald_refuses(&c.config, &c.socket);
        assert_eq!(code, Some(1), "{mode:o} {owner:?}: {err}");
        assert!(err.contains(&path_str(&state)) && err.contains(why), "mode {mode:04o} owner {owner:?}: {err}");
        assert!(!c.socket.exists(), "a refused corrald left its socket");
    }
    // The same directory made private again is accepted: it was the
    // directory that was refused, not the config.
    chown(&state, (0, 0));
    chmod(&state, 0o750);
    c.start();
    c.wait_ready("web", 1).await;
    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 4. File descriptors
// ---------------------------------------------------------------------------

/// With a `[limits]` table, `max_connections_per_uid = 4` would make this
/// quicker; the defaults (256 / 16 reserved / 32 per uid) are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_uid_are_capped_root_still_gets_in_and_descriptors_come_back() {
    needs_root("the flood comes from another user");
    let mut c = Corrald::new("");
    let share = c.share_with_outsider();
    c.write_config(&format!("{share}{}", sleepers("web", 1)));
    // A soft limit below the hard one, as systemd leaves it: corrald must
    // raise it to the hard limit.
    c.wrapper = vec!["prlimit".into(), "--nofile=512:8192".into()];
    c.start();
    c.wait_ready("web", 1).await;
    let pid = c.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile: Vec<&str> =
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().skip(3).take(2).collect();
    assert_eq!(nofile, ["8192", "8192"], "corrald's soft RLIMIT_NOFILE should be raised to the hard limit:\n{limits}");

    c.status().await;
    let baseline = fd_count(pid);
    let per_uid = 32;
    let status = hex(&request_frame(1, Cmd::Status(proto::StatusRequest {})));
    let helper = Helper::as_outsider(
        c.dir.path(),
        HOLD_CONNECTIONS,
        &[c.socket.to_str().unwrap(), &per_uid.to_string(), "1", &status],
    );
    for i in 0..per_uid {
        let line = helper.line("a held connection");
        let r = helper_response(&line).unwrap_or_else(|e| panic!("held connection {i}: {e}"));
        assert_eq!((r.id, r.status()), (1, Status::Ok), "held connection {i} should be served: {r:?}");
    }
    let probe = helper.line("the connection over the cap");
    let r = helper_response(&probe).unwrap_or_else(|e| panic!("the connection over the per-uid cap: {e}"));
    assert_eq!((r.id, r.status()), (0, Status::Failure), "{r:?}");
    assert!(
        r.message.contains("connection refused: uid 65534 already has 32 connections")
            && r.message.contains("limits.max_connections_per_uid"),
        "{:?}",
        r.message
    );
    assert_eq!(helper.line("holding"), "holding");
    let held = fd_count(pid);

    // Root is not capped per uid and still gets answers.
    let mut mine = Vec::new();
    for _ in 0..per_uid + 8 {
        mine.push(c.client().await);
    }
    let last = mine.last_mut().unwrap();
    let answer = tokio::time::timeout(PATIENCE, last.call(Cmd::Status(proto::StatusRequest {}), |_| {}))
        .await
        .expect("root's status in time")
        .expect("root's status");
    assert_eq!(answer.status(), Status::Ok, "{answer:?}");
    assert_eq!(group(&c.status().await, "web").ready, 1);
    drop(mine);

    helper.finish();
    poll("corrald's descriptors back to the baseline", PATIENCE, || async move {
        let now = fd_count(pid);
        if now <= baseline {
            Ok(())
        } else {
            Err(format!("{now} open, {baseline} before the flood"))
        }
    })
    .await;
    // The baseline may count a connection still closing; what is open now
    // cannot, so the held connections are measured against it.
    let settled = fd_count(pid);
    assert!(held >= settled + per_uid, "descriptors while {per_uid} connections were held: {held}, after: {settled}");
    // The seats were given back, not only the descriptors.
    let (ok, out) = c.ctl_as(OUTSIDER, &["status"]);
    assert!(ok, "the outsider should get in again: {out}");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_left_half_sent_is_cut_off_after_frame_timeout() {
    let mut c = Corrald::new(&format!("[limits]\nframe_timeout = \"1s\"\n{}", sleepers("web", 1)));
    c.start();
    let mut idle = UnixStream::connect(&c.socket).await.unwrap();
    let mut stalled = UnixStream::connect(&c.socket).await.unwrap();
    let mut half = 100u32.to_be_bytes().to_vec();
    half.extend_from_slice(&[0x08; 10]);
    stalled.write_all(&half).await.unwrap();
    let sent = Instant::now();
    // Others are served while it stalls.
    c.status().await;
    let r = read_response(&mut stalled, "the stalled client").await;
    assert!(sent.elapsed() >= Duration::from_secs(1), "cut off before frame_timeout: {:?}", sent.elapsed());
    assert_eq!((r.id, r.status()), (0, Status::Failure), "{r:?}");
    assert!(r.message.contains("limits.frame_timeout"), "the answer should name the limit: {:?}", r.message);
    expect_eof(&mut stalled, "the stalled client").await;

    // A connection that sent nothing is not a stalled frame: it is kept.
    idle.write_all(&request_frame(5, Cmd::Status(proto::StatusRequest {}))).await.unwrap();
    let r = read_response(&mut idle, "the idle client").await;
    assert_eq!((r.id, r.status()), (5, Status::Ok), "an idle connection was cut off: {r:?}");
    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 5. A client that never reads its answers
// ---------------------------------------------------------------------------

/// The most corrald's resident memory may grow while one client asks and
/// never reads: 4 MiB of queued answers (limits.max_queued_response_bytes,
/// counted encoded; decoded they take a few times that), 64 requests in
/// flight (limits.max_requests_in_flight), the socket buffers, and the
/// allocator's slack. Status answers are small, so the in-flight bound is
/// the one that stops the reading here; a `[limits]` table raising
/// max_requests_in_flight would put the byte bound to the test instead.
const FLOOD_GROWTH_KIB: u64 = 32 * 1024;
/// How far above its baseline corrald may stay once the flooder is gone:
/// freed memory is handed back (malloc_trim), but not to the page.
const AFTER_FLOOD_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_corrald_and_others_are_still_answered() {
    let mut c = Corrald::new(&sleepers("web", 2));
    c.start();
    c.wait_ready("web", 2).await;
    let pid = c.pid();
    c.status().await;
    let baseline_fds = fd_count(pid);
    let baseline = vm_kib(pid, "VmRSS");
    // Resets VmHWM, so the peak below is the flood's.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset corrald's peak RSS");

    const REQUESTS: u64 = 200_000;
    let mut flood = Vec::new();
    for id in 1..=REQUESTS {
        flood.extend_from_slice(&request_frame(id, Cmd::Status(proto::StatusRequest {})));
    }
    let total = flood.len() as u64;
    let (read_half, mut write_half) = UnixStream::connect(&c.socket).await.unwrap().into_split();
    let written = Arc::new(AtomicU64::new(0));
    let flooder = {
        let written = written.clone();
        tokio::spawn(async move {
            for chunk in flood.chunks(16 * 1024) {
                if write_half.write_all(chunk).await.is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        })
    };
    // corrald stops reading once the answers pile up; the flooder's writes
    // then block. No progress for a second is that point.
    let mut progress = (0, Instant::now());
    poll("the flood to finish or stall", PATIENCE, || {
        let now = written.load(Ordering::SeqCst);
        if now != progress.0 {
            progress = (now, Instant::now());
        }
        let still = progress.1.elapsed();
        std::future::ready(if now == total || still >= Duration::from_secs(1) {
            Ok(())
        } else {
            Err(format!("{now} of {total} bytes taken, the last {still:?} ago"))
        })
    })
    .await;
    let sent = written.load(Ordering::SeqCst);
    assert!(sent < total, "corrald read all {REQUESTS} requests of a client that reads no answer");

    let asked = Instant::now();
    let s = c.status().await;
    assert_eq!(group(&s, "web").ready, 2);
    let during = vm_kib(pid, "VmRSS");
    eprintln!(
        "flood: {sent} of {total} bytes taken; RSS {baseline} KiB before, {during} KiB during; status in {:?}",
        asked.elapsed()
    );

    flooder.abort();
    let _ = flooder.await;
    drop(read_half);
    poll("the flooder's connection to close", PATIENCE, || async move {
        let now = fd_count(pid);
        if now <= baseline_fds {
            Ok(())
        } else {
            Err(format!("{now} descriptors, {baseline_fds} before"))
        }
    })
    .await;
    poll("corrald's memory to come back", PATIENCE, || async move {
        let now = vm_kib(pid, "VmRSS");
        if now < baseline + AFTER_FLOOD_KIB {
            Ok(())
        } else {
            Err(format!("RSS {now} KiB, {baseline} KiB before the flood (bound +{AFTER_FLOOD_KIB} KiB)"))
        }
    })
    .await;
    let peak = vm_kib(pid, "VmHWM");
    eprintln!("flood: peak RSS {peak} KiB, after {} KiB", vm_kib(pid, "VmRSS"));
    assert!(
        peak < baseline + FLOOD_GROWTH_KIB,
        "corrald's RSS peaked at {peak} KiB under the flood, {baseline} KiB before (bound +{FLOOD_GROWTH_KIB} KiB)"
    );
    c.assert_alive();
    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 6. Oversized answers
// ---------------------------------------------------------------------------

/// Receives answers on one connection until each of `ids` has a final one,
/// sorting finals and counting PROCESSING answers by id.
async fn receive_until(
    client: &mut Client,
    ids: &[u64],
    finals: &mut BTreeMap<u64, Vec<proto::Response>>,
    processing: &mut BTreeMap<u64, usize>,
) {
    while !ids.iter().all(|id| finals.contains_key(id)) {
        let r = next_answer(client).await;
        if r.status() == Status::Processing {
            *processing.entry(r.id).or_default() += 1;
        } else {
            finals.entry(r.id).or_default().push(r);
        }
    }
}

/// Spawns 300 processes: a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_over_256_workers_come_in_parts_and_every_request_gets_one_final_answer() {
    const N: u32 = 300;
    let mut c = Corrald::new(&sleepers("big", N));
    c.start();
    c.wait_ready("big", N).await;

    let (parts, last) = c.call(Cmd::ListWorkers(proto::ListWorkers { group: String::new() })).await;
    assert!(!parts.is_empty(), "a listing of {N} workers should come in parts");
    let mut ids = Vec::new();
    for part in &parts {
        assert_eq!(part.status(), Status::Processing, "{part:?}");
        match &part.content {
            Some(Content::Workers(w)) => {
                assert!(w.workers.len() <= 256, "a part of {} workers", w.workers.len());
                ids.extend(w.workers.iter().map(|w| w.id.clone()));
            }
            other => panic!("a part without workers: {other:?}"),
        }
    }
    assert_eq!(last.status(), Status::Ok, "{last:?}");
    match &last.content {
        Some(Content::Workers(w)) => ids.extend(w.workers.iter().map(|w| w.id.clone())),
        other => panic!("the final answer without workers: {other:?}"),
    }
    ids.sort();
    let mut want: Vec<String> = (1..=N).map(|i| format!("big-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "every worker once");

    let (code, out, err) = c.ctl(&["workers"]);
    assert_eq!(code, Some(0), "{err}");
    let listed = out.lines().filter(|l| l.starts_with("big-")).count();
    assert_eq!(listed, N as usize, "corralctl workers should print all {N}:\n{out}");
    let (code, out, err) = c.ctl(&["--json", "workers"]);
    assert_eq!(code, Some(0), "{err}");
    let objects: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 1, "one JSON answer for the whole listing");
    assert_eq!(objects[0]["workers"].as_array().map(Vec::len), Some(N as usize));

    // Listing, status and stop pipelined on one connection: one final each,
    // and nothing more for them after.
    let mut client = c.client().await;
    let list = client.send(Cmd::ListWorkers(proto::ListWorkers { group: String::new() })).await.unwrap();
    let status = client.send(Cmd::Status(proto::StatusRequest {})).await.unwrap();
    let stop_all = client.send(stop("big", false)).await.unwrap();
    let mut finals: BTreeMap<u64, Vec<proto::Response>> = BTreeMap::new();
    let mut processing: BTreeMap<u64, usize> = BTreeMap::new();
    receive_until(&mut client, &[list, status, stop_all], &mut finals, &mut processing).await;
    let check = client.send(Cmd::Status(proto::StatusRequest {})).await.unwrap();
    receive_until(&mut client, &[check], &mut finals, &mut processing).await;
    let counts: Vec<(u64, usize)> = finals.iter().map(|(id, f)| (*id, f.len())).collect();
    assert_eq!(counts, [(list, 1), (status, 1), (stop_all, 1), (check, 1)], "{finals:#?}");
    assert!(processing.get(&list).copied().unwrap_or(0) >= 1, "the listing's parts: {processing:?}");
    let stopped = &finals[&stop_all][0];
    assert_eq!(stopped.status(), Status::Ok, "{stopped:?}");
    match &stopped.content {
        Some(Content::Outcome(o)) => assert_eq!((o.total, o.succeeded), (N, N), "{o:?}"),
        other => panic!("stop without an outcome: {other:?}"),
    }
    drop(client);
    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 7. Duplicate and zero ids
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_in_flight_is_refused_audited_once_and_id_0_closes_the_connection() {
    let mut c = Corrald::new("");
    let text = c.dir.path().join("audit.log");
    let json = c.dir.path().join("audit.jsonl");
    // Units of 2s keep the first stop in flight while its twin arrives.
    c.write_config(&format!(
        "audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\n{}",
        demo_group("web", 2, &["--unit-ms", "2000"], "")
    ));
    c.start();
    c.wait_ready("web", 2).await;
    let pids = c.pids("web").await;
    c.wait_work("a unit in flight in web-1", |log| log.started.iter().any(|s| s.1 == pids["web-1"])).await;

    let mut s = UnixStream::connect(&c.socket).await.unwrap();
    let twice = [request_frame(7, stop("web-1", false)), request_frame(7, stop("web-1", false))].concat();
    s.write_all(&twice).await.unwrap();
    let mut finals = Vec::new();
    while finals.len() < 2 {
        let r = read_response(&mut s, "the stops with id 7").await;
        assert_eq!(r.id, 7, "{r:?}");
        if r.status() != Status::Processing {
            finals.push(r);
        }
    }
    assert_eq!(finals[0].status(), Status::Failure, "the twin should be refused first, at once: {finals:#?}");
    assert!(finals[0].message.contains("already in flight"), "{:?}", finals[0].message);
    assert_eq!(finals[1].status(), Status::Ok, "the first stop completes: {finals:#?}");
    assert!(matches!(&finals[1].content, Some(Content::Outcome(o)) if o.succeeded == 1), "{:?}", finals[1]);
    drop(s);
    let w = c.workers().await;
    let state: BTreeMap<&str, (&str, u32)> = w.iter().map(|w| (w.id.as_str(), (w.state.as_str(), w.pid))).collect();
    assert_eq!(state["web-1"].0, "stopped", "{state:?}");
    assert_eq!(state["web-2"].1, pids["web-2"], "web-2 untouched: {state:?}");

    let records: Vec<serde_json::Value> = json_lines(&json).into_iter().filter(|r| r["request_id"] == 7).collect();
    let results: Vec<&str> = records.iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["accepted", "ok"], "one request ran, so one pair of records: {records:#?}");
    assert_eq!(records[0]["session"], records[1]["session"]);
    assert!(records.iter().all(|r| r["command"] == "Stop" && r["worker"] == "web-1"), "{records:#?}");
    assert_eq!(records[1]["reason"], finals[1].message, "the outcome records the first stop's answer");
    let text_lines: Vec<String> = lines(&text).into_iter().filter(|l| l.contains(" 7 web web-1]")).collect();
    assert_eq!(text_lines.len(), 2, "{text_lines:#?}");
    assert!(
        text_lines[0].contains("\tresult=accepted\t") && text_lines[1].contains("\tresult=ok\t"),
        "{text_lines:#?}"
    );

    // Id 0 is the connection's own: a request may not use it.
    let mut s = UnixStream::connect(&c.socket).await.unwrap();
    s.write_all(&request_frame(0, stop("web-2", false))).await.unwrap();
    let r = read_response(&mut s, "a request with id 0").await;
    assert_eq!((r.id, r.status()), (0, Status::Failure), "{r:?}");
    assert!(r.message.contains("id 0"), "{:?}", r.message);
    expect_eof(&mut s, "after a request with id 0").await;
    assert_eq!(c.pids("web").await.get("web-2"), Some(&pids["web-2"]), "the id-0 stop ran");
    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 8. A squatted socket directory, and a server run by someone else
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_socket_directory_is_refused_and_corralctl_does_not_trust_a_squatter() {
    needs_root("the squatter is another user");
    let mut c = Corrald::new("");
    c.share_with_outsider();
    let open = c.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o1777);
    let squat = open.join("squat");
    let (ok, out) = run(
        "setpriv",
        &["--reuid", "65534", "--regid", "65534", "--clear-groups", "mkdir", "-m", "0777", squat.to_str().unwrap()],
    );
    assert!(ok, "the outsider's mkdir: {out}");
    assert_eq!(std::fs::metadata(&squat).unwrap().uid(), OUTSIDER.0);

    c.socket = squat.join("corrald.sock");
    c.write_config(&sleepers("web", 1));
    let (code, err) = corrald_refuses(&c.config, &c.socket);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&path_str(&squat)) && err.contains("uid 65534"), "should name the directory and owner: {err}");
    assert!(!c.socket.exists(), "a socket was bound in a squatted directory");
    // Root's own directory, open to all, is refused too.
    let shared = c.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    c.socket = shared.join("corrald.sock");
    c.write_config(&sleepers("web", 1));
    let (_, err) = corrald_refuses(&c.config, &c.socket);
    assert!(err.contains(&path_str(&shared)) && err.contains("writable by group or others"), "{err}");

    // The squatter serves its own socket there and says OK to anything.
    let fake = squat.join("fake.sock");
    let ok_frame = framed(
        &proto::Response { id: 1, status: Status::Ok as i32, message: "stopped everything".into(), content: None }
            .encode_to_vec(),
    );
    let server = Helper::as_outsider(c.dir.path(), FAKE_SERVER, &[fake.to_str().unwrap(), &hex(&ok_frame)]);
    assert_eq!(server.line("the fake server"), "listening");
    // It would fool a client that does not check who serves the socket.
    let mut naive = UnixStream::connect(&fake).await.unwrap();
    naive.write_all(&request_frame(1, stop("", false))).await.unwrap();
    let r = read_response(&mut naive, "the fake server's answer").await;
    assert_eq!((r.id, r.status()), (1, Status::Ok), "{r:?}");
    drop(naive);

    let (code, stdout, stderr) = corralctl(&fake, &["stop", "all"]);
    assert_eq!(code, Some(3), "corralctl must not take the squatter's answer: {stdout}{stderr}");
    assert!(stderr.contains("runs as uid 65534") && stderr.contains("not trusting it"), "{stderr}");
    assert!(!stdout.contains("OK") && !stdout.contains("stopped everything"), "{stdout}");
    drop(server);
}

// ---------------------------------------------------------------------------
// 9. Upgrade preflight
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_an_untrusted_or_foreign_binary_is_refused_and_corrald_stays() {
    needs_root("a directory is given to another user");
    let mut c = Corrald::new(&sleepers("web", 2));
    c.start();
    c.wait_ready("web", 2).await;
    let pid = c.pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let pids = c.pids("web").await;

    let group_writable = c.dir.path().join("corrald-group-writable");
    std::fs::copy(CORRALD, &group_writable).unwrap();
    chmod(&group_writable, 0o775);
    let theirs = c.dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o755);
    chown(&theirs, OUTSIDER);
    let in_theirs = theirs.join("corrald");
    std::fs::copy(CORRALD, &in_theirs).unwrap();
    chmod(&in_theirs, 0o755);

    let cases: [(&Path, Vec<String>); 3] = [
        (Path::new("/bin/true"), vec!["is not a corrald".into()]),
        (&group_writable, vec![path_str(&group_writable), "mode 0775".into()]),
        (&in_theirs, vec![path_str(&theirs), "uid 65534".into()]),
    ];
    for (binary, want) in cases {
        let (code, out, err) = c.ctl(&["upgrade", "--binary", binary.to_str().unwrap()]);
        assert_eq!(code, Some(1), "upgrade to {}: {out}{err}", binary.display());
        assert!(out.contains("upgrade refused"), "{out}");
        for w in &want {
            assert!(out.contains(w.as_str()), "upgrade to {} should say {w:?}: {out}", binary.display());
        }
        c.assert_alive();
        assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), exe, "corrald exec'd {}", binary.display());
        let s = c.status().await;
        assert_eq!(s.pid, pid);
        assert_eq!(c.pids("web").await, pids);
    }
    c.shutdown_ok().await;
}

// ---------------------------------------------------------------------------
// 10. Terminal escapes
// ---------------------------------------------------------------------------

/// A server run by root, so corralctl trusts it, that echoes `lie` raw in
/// every field it can: what corralctl prints must be safe even so.
async fn serve_lies(listener: tokio::net::UnixListener, lie: String) {
    while let Ok((mut s, _)) = listener.accept().await {
        let lie = lie.clone();
        tokio::spawn(async move {
            while let Ok(Some(body)) = read_frame_raw(&mut s).await {
                let Ok(request) = proto::Request::decode(body.as_slice()) else { return };
                let text = || lie.clone();
                let answer = |status: Status, content| proto::Response {
                    id: request.id,
                    status: status as i32,
                    message: lie.clone(),
                    content,
                };
                let answers = match request.command {
                    Some(Cmd::Status(_)) => vec![answer(
                        Status::Ok,
                        Some(Content::SupervisorStatus(proto::SupervisorStatus {
                            pid: 1,
                            config_path: text(),
                            socket_path: text(),
                            version: text(),
                            output_sink: text(),
                            groups: vec![proto::GroupStatus {
                                name: text(),
                                state: text(),
                                reason: text(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                    )],
                    Some(Cmd::ListWorkers(_)) => {
                        let worker = proto::WorkerInfo {
                            id: text(),
                            group: text(),
                            pid: 7,
                            state: text(),
                            last_exit: text(),
                            ..Default::default()
                        };
                        let list = |w: &proto::WorkerInfo| {
                            Some(Content::Workers(proto::WorkerList { workers: vec![w.clone()] }))
                        };
                        vec![answer(Status::Processing, list(&worker)), answer(Status::Ok, list(&worker))]
                    }
                    _ => vec![
                        answer(
                            Status::Processing,
                            Some(Content::Progress(proto::Progress {
                                total: 1,
                                worker: text(),
                                event: text(),
                                ..Default::default()
                            })),
                        ),
                        answer(Status::Processing, None),
                        answer(
                            Status::Failure,
                            Some(Content::Outcome(proto::Outcome {
                                total: 1,
                                succeeded: 0,
                                failures: vec![proto::WorkerFailure {
                                    worker: text(),
                                    kind: proto::FailureKind::Failed as i32,
                                    detail: text(),
                                }],
                            })),
                        ),
                    ],
                };
                for a in answers {
                    if s.write_all(&framed(&a.encode_to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_escapes_in_requests_never_come_back_raw() {
    let mut c = Corrald::new(&sleepers("web", 1));
    c.start();
    c.wait_ready("web", 1).await;
    let nasty = "evil\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{9b}31m\u{202e}gnp.exe\u{2028}end";
    let dir = c.dir.path().to_path_buf();
    let missing_dir = format!("{}/missing-{nasty}/state.json", dir.display());
    let missing_file = format!("{}/{nasty}.json", dir.display());
    let saved_here = format!("{}/{nasty}", dir.display());
    let commands: Vec<Vec<&str>> = vec![
        vec!["stop", nasty],
        vec!["scale", nasty, "2"],
        vec!["save-state", nasty],
        vec!["load-state", nasty],
        vec!["save-state", &missing_dir],
        vec!["load-state", &missing_file],
        vec!["save-state", &saved_here],
    ];
    let mut problems = Vec::new();
    for args in &commands {
        for json in [false, true] {
            let mut full: Vec<&str> = if json { vec!["--json"] } else { vec![] };
            full.extend(args);
            let (code, out, err) = c.ctl(&full);
            if !matches!(code, Some(0 | 1)) {
                problems.push(format!("{full:?}: no answer (exit {code:?}): {err}"));
            }
            if out.trim().is_empty() {
                problems.push(format!("{full:?}: printed nothing"));
            }
            let raw = raw_chars(&(out.clone() + &err), HOSTILE_CHARS);
            if !raw.is_empty() {
                problems.push(format!(
                    "corralctl {}{}: raw {raw:?} in {out:?}{err:?}",
                    if json { "--json " } else { "" },
                    args[0]
                ));
            }
        }
    }
    let wire = [
        stop(nasty, false),
        Cmd::Scale(proto::Scale { group: nasty.into(), count: 2 }),
        Cmd::SaveState(proto::SaveState { path: nasty.into() }),
        Cmd::LoadState(proto::LoadState { path: nasty.into() }),
        Cmd::SaveState(proto::SaveState { path: missing_dir.clone() }),
        Cmd::LoadState(proto::LoadState { path: missing_file.clone() }),
        Cmd::SaveState(proto::SaveState { path: saved_here.clone() }),
    ];
    for cmd in wire {
        let what = format!("{cmd:?}").chars().take(12).collect::<String>();
        let (progress, last) = c.call(cmd).await;
        for r in progress.iter().chain([&last]) {
            let raw = raw_chars(&r.message, HOSTILE_CHARS);
            if !raw.is_empty() {
                problems.push(format!("wire {what}: raw {raw:?} in the message {:?}", r.message));
            }
        }
    }
    // corralctl does not count on the server having escaped anything.
    let lies = c.dir.path().join("lies.sock");
    let liar = tokio::spawn(serve_lies(tokio::net::UnixListener::bind(&lies).unwrap(), format!("lie {nasty} lie")));
    for args in [
        &["status"][..],
        &["workers"],
        &["stop", "web"],
        &["--json", "status"],
        &["--json", "workers"],
        &["--json", "stop", "web"],
    ] {
        let (socket, owned) = (lies.clone(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            corralctl(&socket, &owned.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        if !out.contains("lie") {
            problems
                .push(format!("corralctl {args:?} against a lying server: exit {code:?}, no answer shown: {out}{err}"));
        }
        let raw = raw_chars(&(out.clone() + &err), HOSTILE_CHARS);
        if !raw.is_empty() {
            problems.push(format!("corralctl {args:?} against a lying server: raw {raw:?} in {out:?}{err:?}"));
        }
    }
    liar.abort();

    let log = c.stderr();
    for line in log.lines().filter(|l| !raw_chars(l, HOSTILE_CHARS).is_empty()) {
        problems.push(format!("corrald's log: raw {:?} in {line:?}", raw_chars(line, HOSTILE_CHARS)));
    }
    c.assert_alive();
    c.shutdown_ok().await;
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

// ---------------------------------------------------------------------------
// 11. Audit amplification
// ---------------------------------------------------------------------------

/// What one request may add to each audit file, whatever it carries.
const AUDIT_RECORD_BOUND: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_argument_writes_a_bounded_audit_record() {
    let mut c = Corrald::new("");
    let text = c.dir.path().join("audit.log");
    let json = c.dir.path().join("audit.jsonl");
    c.write_config(&format!("audit_logs_target = {text:?}\naudit_logs_json_target = {json:?}\n{}", sleepers("web", 1)));
    c.start();
    c.wait_ready("web", 1).await;
    // Just under max_frame_size (1 MiB): the frame itself is accepted.
    const BIG: usize = 1_000_000;
    let requests = [
        ("Stop", stop(&"a".repeat(BIG), false)),
        (
            "Limit",
            Cmd::Limit(proto::Limit {
                target: "web".into(),
                properties: vec![format!("MemoryMax={}", "9".repeat(BIG))],
            }),
        ),
        ("SaveState", Cmd::SaveState(proto::SaveState { path: format!("/{}", "p".repeat(BIG)) })),
        ("Scale", Cmd::Scale(proto::Scale { group: "g".repeat(BIG), count: 1 })),
    ];
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut problems = Vec::new();
    for (what, cmd) in requests {
        let before = (size(&text), size(&json));
        let (_, last) = c.call(cmd).await;
        assert_eq!(last.status(), Status::Failure, "{what}: {:?}", last.message);
        if last.message.len() > 1024 {
            problems.push(format!("{what}: the answer is {} bytes long", last.message.len()));
        }
        let grew = (size(&text) - before.0, size(&json) - before.1);
        if grew.0 == 0 || grew.1 == 0 {
            problems.push(format!("{what}: no audit record at all (text +{}, json +{})", grew.0, grew.1));
        }
        if grew.0 > AUDIT_RECORD_BOUND || grew.1 > AUDIT_RECORD_BOUND {
            problems.push(format!(
                "{what}: the audit files grew by {} (text) and {} (json) bytes; the bound is {AUDIT_RECORD_BOUND}",
                grew.0, grew.1
            ));
        }
    }
    c.assert_alive();
    c.shutdown_ok().await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// 12. Overflow in a resource value
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_quota_that_overflows_is_refused_naming_the_key() {
    let mut c = Corrald::new(&sleepers("web", 1));
    let quota = "1844674407370956%";
    // On the socket: refused, and corrald lives (without systemd it is
    // refused before the value is parsed; under systemd, after).
    c.start();
    c.wait_ready("web", 1).await;
    let (code, out, err) = c.ctl(&["limit", "web", &format!("CPUQuota={quota}")]);
    assert_eq!(code, Some(1), "{out}{err}");
    c.assert_alive();
    c.status().await;
    c.shutdown_ok().await;

    let file = c.dir.path().join("quota.toml");
    std::fs::write(&file, format!("{}[groups.web.resources]\nCPUQuota = \"{quota}\"\n", sleepers("web", 1))).unwrap();
    let (code, out) = check_config(&file);
    assert_eq!(code, Some(1), "--check-config must refuse the quota, not crash: {out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(out.contains(&path_str(&file)) && out.contains("groups.web.resources.CPUQuota"), "{out}");
}

// ---------------------------------------------------------------------------
// 13. check-config refuses configs that cannot run
// ---------------------------------------------------------------------------

#[test]
fn check_config_refuses_configs_that_cannot_run_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    chmod(&not_executable, 0o644);
    let group = |extra: &str| format!("[groups.web]\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n{extra}");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, group("")).unwrap();
    let (code, out) = check_config(&good);
    assert_eq!(code, Some(0), "the control config must pass: {out}");

    let long_socket = format!("/tmp/{}.sock", "s".repeat(110));
    let cases = [
        ("no-user", group("user = \"corral-no-such-user\"\n"), "groups.web.user"),
        ("no-command", "[groups.web]\ncommand = \"/nonexistent/corral-worker\"\n".to_string(), "groups.web.command"),
        (
            "not-executable",
            format!("[groups.web]\ncommand = {:?}\n", not_executable.display().to_string()),
            "groups.web.command",
        ),
        ("nul-arg", "[groups.web]\ncommand = \"/bin/sleep\"\nargs = [\"6\\u00000\"]\n".to_string(), "groups.web.args"),
        ("long-socket", format!("socket = {long_socket:?}\n{}", group("")), "socket"),
        ("sigkill", group("stop_signal = \"SIGKILL\"\n"), "groups.web.stop_signal"),
        ("sigstop", group("stop_signal = \"SIGSTOP\"\n"), "groups.web.stop_signal"),
        ("huge-count", group("count = 100000\n"), "groups.web.count"),
    ];
    let mut problems = Vec::new();
    for (name, text, key) in cases {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, out) = check_config(&file);
        let names = out.contains(&path_str(&file)) && out.contains(key);
        if code != Some(1) || !names || out.contains("panicked") {
            problems.push(format!("{name}: exit {code:?}, should be 1 naming the file and `{key}`: {}", out.trim()));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} configs accepted or badly refused:\n{}",
        problems.len(),
        8,
        problems.join("\n")
    );
}

/// Per-worker scopes past `limits.max_scopes` would walk systemd into the
/// match-rule ceiling of its bus connection: such a config is refused whole,
/// by --check-config and at startup, never half started.
#[test]
fn per_worker_scopes_past_max_scopes_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let text = |count: u32, extra: &str| {
        format!(
            "socket = {:?}\nstate_directory = {:?}\n{extra}[groups.web]\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n\
             count = {count}\nscope = \"worker\"\n[groups.big]\ncommand = \"/bin/sleep\"\ncount = 900\n",
            path_str(&socket),
            path_str(&dir.path().join("state")),
        )
    };
    let write = |name: &str, body: String| {
        let file = dir.path().join(name);
        std::fs::write(&file, body).unwrap();
        file
    };
    // 255 worker scopes and one group scope (900 workers): at the default of 256.
    let (code, out) = check_config(&write("fits.toml", text(255, "")));
    assert_eq!(code, Some(0), "{out}");

    let over = write("over.toml", text(256, ""));
    let (code, out) = check_config(&over);
    assert_eq!(code, Some(1), "{out}");
    for needle in
        [path_str(&over).as_str(), "limits.max_scopes", "257 systemd scopes", "groups web", "scope = \"group\""]
    {
        assert!(out.contains(needle), "--check-config's refusal lacks {needle:?}: {out}");
    }
    let (code, err) = corrald_refuses(&over, &socket);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("limits.max_scopes") && err.contains(&path_str(&over)), "{err}");

    // scopes = "off" places nothing, so nothing to bound; and the bound itself
    // cannot be raised past the ceiling.
    let (code, out) = check_config(&write("off.toml", text(256, "scopes = \"off\"\n")));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check_config(&write("raised.toml", text(256, "[limits]\nmax_scopes = 501\n")));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("limits.max_scopes") && out.contains("1 to 500"), "{out}");
}

// ---------------------------------------------------------------------------
// 14. Smaller things
// ---------------------------------------------------------------------------

/// Line and paragraph separators, zero-width space and BOM: invisible or
/// line-breaking in a viewer, they could forge or hide text in a record.
const INVISIBLE_CHARS: &[(char, &str)] = &[
    ('\u{2028}', "LINE SEPARATOR U+2028"),
    ('\u{2029}', "PARAGRAPH SEPARATOR U+2029"),
    ('\u{200b}', "ZERO WIDTH SPACE U+200B"),
    ('\u{feff}', "BOM U+FEFF"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_separators_are_escaped_in_the_text_audit_log() {
    let mut c = Corrald::new("");
    let text = c.dir.path().join("audit.log");
    c.write_config(&format!("audit_logs_target = {text:?}\n{}", sleepers("web", 1)));
    c.start();
    c.wait_ready("web", 1).await;
    let sneaky = "web\u{2028}[1 2 web web-1]\u{2029}x\u{200b}y\u{feff}z";
    // Refused by validation (audited as denied), and accepted then failed.
    c.call(stop(sneaky, false)).await;
    c.call(Cmd::SaveState(proto::SaveState { path: format!("/nonexistent-corral/{sneaky}") })).await;
    let log = std::fs::read_to_string(&text).unwrap();
    assert!(log.lines().count() >= 3, "denied, accepted and failed records: {log}");
    c.shutdown_ok().await;
    assert_eq!(raw_chars(&log, INVISIBLE_CHARS), Vec::<&str>::new(), "raw in the text audit log:\n{log}");
}

#[test]
fn a_control_character_in_a_config_key_is_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.toml");
    std::fs::write(&file, "[groups.web]\ncommand = \"/bin/sleep\"\n\"stop\\u001b[2J\\u0007_timeout\" = \"5s\"\n")
        .unwrap();
    let (code, out) = check_config(&file);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&path_str(&file)), "{out}");
    assert_eq!(raw_chars(&out, HOSTILE_CHARS), Vec::<&str>::new(), "the key reaches the terminal raw: {out:?}");
    assert!(out.contains("[2J"), "the key should be shown, escaped: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_crash_looping_in_a_long_backoff_shows_restarting() {
    let mut c = Corrald::new(
        "[groups.crashy]\ncommand = \"/bin/false\"\nrestart = \"always\"\nrestart_backoff_initial = \"60s\"\n\
         restart_backoff_max = \"60s\"\nready_after = \"10ms\"\n",
    );
    c.start();
    c.wait_workers("the first crash", |w| w.iter().any(|w| w.id == "crashy-1" && !w.last_exit.is_empty())).await;
    let s = c.status().await;
    let g = group(&s, "crashy");
    assert_eq!(g.state, "restarting", "a group waiting to restart its only worker is not stopped: {g:?}");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_no_worker_running_says_so() {
    let mut c = Corrald::new(&sleepers("web", 1));
    c.start();
    c.wait_ready("web", 1).await;
    let (code, out, err) = c.ctl(&["stop", "web"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = c.ctl(&["shutdown"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("no worker was running"), "{out}");
    assert_eq!(c.wait_exit(), Some(0), "{}", c.stderr_tail());
}

// ---------------------------------------------------------------------------
// 4. Running out of descriptors is not the workers' failure
// ---------------------------------------------------------------------------

/// corrald at its descriptor limit (a tiny one, 64, and clients holding the
/// rest): a worker that dies meanwhile cannot be restarted ("Too many open
/// files"), but those failed starts are corrald's plight, not a crash loop.
/// With a start limit of one restart, counting them would fail the group
/// for good; instead it comes back once the clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_never_fails_a_group_for_good() {
    let mut c = Corrald::new(&format!(
        "{}restart = \"always\"\nrestart_backoff_initial = \"20ms\"\nrestart_backoff_max = \"100ms\"\n\
         start_limit_burst = 1\nstart_limit_interval = \"1h\"\n",
        sleepers("web", 1)
    ));
    c.wrapper = vec!["prlimit".into(), "--nofile=64:64".into()];
    c.start();
    c.wait_ready("web", 1).await;
    let pid = c.pid();
    let victim = c.pids("web").await["web-1"];

    // Root's connections are capped by nothing below 64: hold them until
    // corrald's accept fails, then some more wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(std::os::unix::net::UnixStream::connect(&c.socket).expect("connect"));
    }
    c.poll("corrald to run out of descriptors", || async {
        if c.stderr().contains("accept on the command socket failed") {
            Ok(())
        } else {
            Err(format!("{} fds open", fd_count(pid)))
        }
    })
    .await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::SIGKILL).unwrap();
    c.wait_stderr("a restart to fail twice for want of descriptors", |log| {
        log.matches("failed to start: Too many open files").count() >= 2
    })
    .await;
    drop(held);

    let workers = c
        .wait_workers("web-1 to run again", |w| w.iter().any(|w| w.id == "web-1" && w.pid != 0 && w.pid != victim))
        .await;
    let web1 = workers.iter().find(|w| w.id == "web-1").unwrap();
    c.wait_ready("web", 1).await;
    let s = c.status().await;
    let web = group(&s, "web");
    assert_ne!(web.state, "failed", "a passing descriptor shortage failed the group: {web:?}");
    assert!(web1.restarts >= 1, "{web1:?}");
    c.shutdown_ok().await;
}
