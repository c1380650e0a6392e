//! Health checks against a real corrald: pings over the worker channel
//! (a worker that stops reading it is hung, audited and restarted; a
//! healthy one never is), tcp and http probes against a port the demo
//! worker listens on (readiness, then a restart when it stops listening),
//! https probes against it serving TLS (trusting a CA file, or failing on
//! a certificate the system store does not know), and exec probes (as the worker's user, their failures counted in the
//! listing, never two in flight for one worker). The metrics count what
//! the checks did.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use corral::proto;

/// A free TCP port on loopback, for a demo worker to listen on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn check<'a>(w: &'a proto::WorkerInfo, kind: &str) -> Option<&'a proto::HealthCheck> {
    w.health.iter().find(|c| c.kind == kind)
}

/// corrald with a JSON audit log, and the log's path.
fn with_audit(groups: &str) -> (Corrald, PathBuf) {
    let c = Corrald::new("");
    let json = c.dir.path().join("audit.jsonl");
    c.write_config(&format!("audit_logs_json_target = {json:?}\n{groups}"));
    (c, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_answering_pings_is_hung_audited_and_restarted() {
    let ping = "stop_timeout = \"1s\"\n[groups.w.ping]\ninterval = \"200ms\"\nmisses = 3\n";
    let (mut c, json) = with_audit(&demo_group("w", 1, &["--hang-after-ms", "1000"], ping));
    c.start();
    c.wait_ready("w", 1).await;
    let first = c.pids("w").await["w-1"];

    let restarted = c
        .wait_workers("w-1 restarted with a new pid", |w| {
            let w = worker(w, "w-1");
            w.restarts >= 1 && w.pid != 0 && w.pid != first
        })
        .await;
    let w = worker(&restarted, "w-1");
    assert!(w.last_exit.starts_with("hung: missed 3 pings in a row (one every 200ms); then "), "{}", w.last_exit);
    assert!(!pid_alive(first), "the hung worker {first} is gone");
    c.wait_stderr("the hang in corrald's log", |log| log.contains("hung: missed 3 pings in a row")).await;

    let ours = c
        .poll("the restart's two audit records", || async {
            let ours: Vec<serde_json::Value> =
                json_lines(&json).into_iter().filter(|r| r["actor"]["kind"] == "corrald").collect();
            if ours.len() >= 2 {
                Ok(ours)
            } else {
                Err(format!("{ours:#?}"))
            }
        })
        .await;
    assert_eq!(ours[0]["result"], "accepted", "{:#?}", ours[0]);
    assert_eq!(ours[0]["worker"], "w-1");
    assert_eq!(ours[0]["command"], "Restart");
    assert!(ours[0]["reason"].as_str().unwrap().starts_with("hung: missed 3 pings"), "{:#?}", ours[0]);
    assert_eq!(ours[1]["result"], "ok", "{:#?}", ours[1]);
    assert_eq!(ours[1]["request_id"], ours[0]["request_id"], "the outcome names its restart");
    assert!(ours[1]["reason"].as_str().unwrap().contains("restarting in"), "{:#?}", ours[1]);

    // The metrics count the restart as one for health (the new process
    // hangs in its turn, so there may be more by now), and the missed pings.
    let (code, metrics, stderr) = c.ctl(&["metrics"]);
    assert_eq!(code, Some(0), "{stderr}");
    let count =
        |series: &str| metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<u64>().ok());
    assert!(count("corral_worker_restarts_total{group=\"w\",reason=\"health\"}") >= Some(1), "{metrics}");
    assert_eq!(count("corral_worker_restarts_total{group=\"w\",reason=\"exit\"}"), None, "{metrics}");
    assert!(count("corral_health_checks_total{group=\"w\",check=\"ping\",result=\"fail\"}") >= Some(3), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_answers_its_pings_is_never_hung() {
    let ping = "[groups.w.ping]\ninterval = \"100ms\"\nmisses = 2\n";
    let mut c = Corrald::new(&demo_group("w", 2, &["--unit-ms", "5"], ping));
    c.start();
    c.wait_ready("w", 2).await;
    let pids = c.pids("w").await;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    // Thirty pings' worth of answers, each seen in the listing.
    let seen = c
        .wait_workers("3 s of answered pings", |ws| {
            ws.iter().all(|w| check(w, "ping").is_some_and(|p| p.last_at_ms >= since + 3000))
        })
        .await;
    for w in &seen {
        let ping = check(w, "ping").unwrap();
        assert_eq!((ping.last_result.as_str(), ping.consecutive_failures), ("ok", 0), "{w:?}");
        assert_eq!((w.restarts, w.pid), (0, pids[&w.id]), "{w:?}");
    }
    assert!(!c.stderr().contains("hung"), "{}", c.stderr_tail());
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_probe_makes_a_signal_worker_ready_and_an_http_probe_restarts_it_when_it_stops_listening() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let group = format!(
        "[groups.web]\ncommand = \"{{demo}}\"\nargs = [\"--listen\", \"{addr}\", \"--listen-delay-ms\", \"1500\", \
         \"--stop-listening-after-ms\", \"4000\"]\nready_after = \"1h\"\nstop_timeout = \"2s\"\n\
         [groups.web.health.readiness]\ntcp = \"{addr}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
         [groups.web.health.liveness]\nhttp = \"http://{addr}/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         failure_threshold = 2\ninitial_delay = \"2s\"\n"
    );
    let mut c = Corrald::new(&group);
    c.start();

    // Not listening yet: the probe fails and the worker stays starting,
    // however long ready_after would have been.
    let starting = c
        .wait_workers("failed readiness probes while starting", |ws| {
            let w = worker(ws, "web-1");
            w.state == "starting" && check(w, "readiness").is_some_and(|r| r.consecutive_failures >= 2)
        })
        .await;
    let first = worker(&starting, "web-1").pid;
    let readiness = check(worker(&starting, "web-1"), "readiness").unwrap().clone();
    assert!(readiness.last_result.starts_with("connect: "), "{readiness:?}");

    c.wait_ready("web", 1).await;
    let ready = c.workers().await;
    let w = worker(&ready, "web-1");
    assert_eq!(w.pid, first);
    let passed = check(w, "readiness").unwrap();
    assert_eq!((passed.last_result.as_str(), passed.consecutive_failures), ("ok", 0), "{w:?}");
    assert!(passed.last_at_ms >= w.started_at_ms + 1500, "ready once it listened: {w:?}");

    // The http probe passes while it listens, then fails twice: restarted.
    let restarted = c
        .wait_workers("web-1 restarted for its liveness probe", |ws| {
            let w = worker(ws, "web-1");
            w.restarts >= 1 && w.pid != 0 && w.pid != first
        })
        .await;
    let w = worker(&restarted, "web-1");
    assert!(w.last_exit.starts_with("unhealthy: liveness probe failed 2 times in a row: connect: "), "{}", w.last_exit);
    c.wait_stderr("the probe failures in corrald's log", |log| {
        log.contains("liveness check failed (1 in a row): connect: ") && log.contains("worker=web-1")
    })
    .await;
    c.wait_ready("web", 1).await;
    c.shutdown_ok().await;
}

/// A throwaway CA, and a certificate it signed for localhost: the paths of
/// the CA's certificate, the server's certificate and the server's key.
fn throwaway_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "corral test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let server = server.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_probe_trusts_its_ca_file_and_fails_on_an_unknown_issuer_or_another_host_s_name() {
    let mut c = Corrald::new("");
    let (ca, cert, key) = throwaway_ca(c.dir.path());
    let group = |name: &str, host: &str, ca_file: &str| {
        let port = free_port();
        format!(
            "[groups.{name}]\ncommand = \"{{demo}}\"\nargs = [\"--listen\", \"127.0.0.1:{port}\", \"--tls-cert\", {cert:?}, \
             \"--tls-key\", {key:?}]\nready_after = \"1h\"\n\
             [groups.{name}.health.readiness]\nhttp = \"https://{host}:{port}/ready\"\n{ca_file}\
             interval = \"500ms\"\ntimeout = \"500ms\"\n"
        )
    };
    let with_ca = format!("ca_file = {ca:?}\n");
    // The certificate names localhost only: asked for by address, the
    // trusted CA does not save it.
    c.write_config(&format!(
        "{}{}{}",
        group("trusted", "localhost", &with_ca),
        group("unknown", "localhost", ""),
        group("misnamed", "127.0.0.1", &with_ca)
    ));
    c.start();

    c.wait_ready("trusted", 1).await;
    let listed = c
        .wait_workers("unknown-1's readiness probe failing", |ws| {
            check(worker(ws, "unknown-1"), "readiness").is_some_and(|r| r.consecutive_failures >= 2)
        })
        .await;
    let trusted = check(worker(&listed, "trusted-1"), "readiness").unwrap();
    assert_eq!((trusted.last_result.as_str(), trusted.consecutive_failures), ("ok", 0), "{trusted:?}");
    let unknown = worker(&listed, "unknown-1");
    assert_eq!(unknown.state, "starting", "{unknown:?}");
    let failed = check(unknown, "readiness").unwrap();
    assert_eq!(failed.last_result, "tls: invalid peer certificate: UnknownIssuer", "{failed:?}");

    let misnamed = check(worker(&listed, "misnamed-1"), "readiness").unwrap();
    assert!(
        misnamed.last_result.starts_with("tls: invalid peer certificate: certificate not valid for name \"127.0.0.1\""),
        "{misnamed:?}"
    );

    let (code, out, err) = c.ctl(&["workers"]);
    assert_eq!(code, Some(0), "{err}");
    let row = out.lines().find(|l| l.starts_with("unknown-1")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("readiness failed ") && row.contains("tls: invalid peer certificate: UnknownIssuer"), "{out}");
    c.shutdown_ok().await;
}

/// A probe script: notes who and where it ran, and guards against a second
/// probe of the same worker running at once. Exits 1 with argument `fail`.
fn probe_script(dir: &Path) -> PathBuf {
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let script = dir.join("probe.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd={shared}\nmkdir \"$d/lock\" 2>/dev/null || echo OVERLAP >>\"$d/runs\"\n\
             echo \"start $(id -u) $1 $CORRAL_WORKER_ID\" >>\"$d/runs\"\nsleep 0.1\n\
             grep '^0::' /proc/self/cgroup >\"$d/cgroup\"\n\
             rmdir \"$d/lock\"\necho end >>\"$d/runs\"\n[ \"$1\" != fail ]\n",
            shared = shared.display()
        ),
    )
    .unwrap();
    chmod(&script, 0o755);
    chmod(dir, 0o755);
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_run_as_the_worker_s_user_one_at_a_time_and_their_failures_are_listed() {
    needs_root("the probe runs as the group's user, nobody");
    let mut c = Corrald::new("");
    let script = probe_script(c.dir.path());
    let runs = c.dir.path().join("shared/runs");
    // Both probes take 100 ms and are due at the same moments: run side
    // by side they would overlap every time.
    c.write_config(&format!(
        "[groups.p]\ncommand = \"{{demo}}\"\nuser = \"nobody\"\n\
         [groups.p.health.liveness]\nexec = [\"{s}\", \"fail\"]\ninterval = \"300ms\"\ntimeout = \"300ms\"\n\
         failure_threshold = 100\n\
         [groups.p.health.readiness]\nexec = [\"{s}\", \"fail\"]\ninterval = \"300ms\"\ntimeout = \"300ms\"\n",
        s = script.display()
    ));
    c.start();

    let listed = c
        .wait_workers("3 failed liveness probes listed", |ws| {
            check(worker(ws, "p-1"), "liveness").is_some_and(|l| l.consecutive_failures >= 3)
        })
        .await;
    let w = worker(&listed, "p-1");
    assert_eq!(w.state, "starting", "its readiness probe never passes");
    let liveness = check(w, "liveness").unwrap();
    assert_eq!(liveness.last_result, "exited 1", "{liveness:?}");
    assert!(check(w, "readiness").is_some_and(|r| r.consecutive_failures >= 1), "{w:?}");

    let (code, out, err) = c.ctl(&["workers"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("HEALTH"), "{out}");
    assert!(out.contains("liveness failed "), "{out}");
    let (code, out, _) = c.ctl(&["workers", "--json"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"consecutive_failures\""), "{out}");

    let lines = lines(&runs);
    let starts: Vec<&String> = lines.iter().filter(|l| l.starts_with("start ")).collect();
    assert!(starts.len() >= 4, "{lines:?}");
    assert!(!lines.iter().any(|l| l == "OVERLAP"), "two probes of one worker ran at once: {lines:?}");
    assert!(starts.iter().all(|l| *l == "start 65534 fail p-1"), "as nobody, for p-1: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_probe_slower_than_its_timeout_is_killed_before_the_next_starts() {
    let mut c = Corrald::new("");
    let pids = c.dir.path().join("probe-pids");
    let script = c.dir.path().join("slow.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho $$ >>{}\nexec sleep 60\n", pids.display())).unwrap();
    chmod(&script, 0o755);
    c.write_config(&format!(
        "[groups.s]\ncommand = \"{{demo}}\"\n[groups.s.health.liveness]\nexec = [\"{}\"]\ninterval = \"200ms\"\n\
         timeout = \"200ms\"\nfailure_threshold = 100\n",
        script.display()
    ));
    c.start();
    let listed = c
        .wait_workers("3 probes timed out", |ws| {
            check(worker(ws, "s-1"), "liveness").is_some_and(|l| l.consecutive_failures >= 3)
        })
        .await;
    let liveness = check(worker(&listed, "s-1"), "liveness").unwrap();
    assert_eq!(liveness.last_result, "timed out after 200ms; killed", "{liveness:?}");
    // Every probe but the one in flight now is gone: none outlived its
    // timeout to run beside the next.
    let started: Vec<u32> = lines(&pids).iter().map(|l| l.parse().unwrap()).collect();
    let alive: Vec<u32> = started.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(started.len() >= 3 && alive.len() <= 1, "started {started:?}, alive {alive:?}");
    assert_eq!(worker(&listed, "s-1").restarts, 0, "failures below the threshold restart nothing");
}
