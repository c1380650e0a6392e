//! The Debian package (packaging/deb/build) on a system booted with
//! systemd: installed with dpkg on a system without corral, upgraded to a
//! newer build, removed and purged with apt-get, and checked by lintian.
//!
//! These install into the system, so tests/systemd/run-suite runs them in a
//! container of their own, one at a time, with the packages it built on
//! the host: `CORRAL_DEB` (the package under test) and `CORRAL_DEB_NEWER`
//! (the same binaries with a higher version). Each test starts from a
//! system without corral and purges it again when it ends, even failing.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const CONFIG: &str = "/etc/corral/corral.toml";
const SOCKET: &str = "/run/corral/corrald.sock";
const INSTALLED_CTL: &str = "/usr/bin/corralctl";
/// The example fleet the package's config ships: `web` and `jobs`.
const FLEET: usize = 6;

/// The path of a package run-suite built, from the environment.
fn deb(var: &str) -> String {
    let path = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: tests/systemd/run-suite builds the packages and sets it"));
    assert!(Path::new(&path).is_file(), "{var}={path} is no file");
    path
}

/// Runs a command as apt and dpkg are run by an operator's script: no
/// questions. Whether it succeeded, and its stdout then stderr.
fn admin(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[track_caller]
fn admin_ok(cmd: &str, args: &[&str]) -> String {
    let (ok, out) = admin(cmd, args);
    assert!(ok, "{cmd} {} failed:\n{out}\n{}", args.join(" "), corrald_journal());
    out
}

fn corrald_journal() -> String {
    run("journalctl", &["--no-pager", "-n", "40", "-u", "corrald.service"]).1
}

/// dpkg's word on the package: `ii` installed, `rc` removed with its
/// config kept, nothing when it never was or has been purged.
fn package_state() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Version}", "corral"])
        .output()
        .expect("dpkg-query");
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !state.starts_with("un") {
        state
    } else {
        String::new()
    }
}

/// The version a package file holds.
fn deb_version(deb: &str) -> String {
    let (ok, out) = run("dpkg-deb", &["-f", deb, "Version"]);
    assert!(ok, "dpkg-deb -f {deb}: {out}");
    out.trim().to_string()
}

/// corral installed from a package; purged when dropped, so the next test
/// starts from a system without it.
struct Package;

/// Makes the container's / what a host's is for a package: it is an
/// overlay of the machine the suite runs on, and a machine made from a
/// Docker image carries Docker's policy-rc.d, which forbids maintainer
/// scripts every start, so `dpkg -i` would start no socket for a reason no
/// operator's host has. The overlay's copy goes; the machine's stays.
fn like_a_host() {
    assert!(
        Path::new("/run/systemd/container").exists(),
        "the package tests install packages: they run only inside the booted container (tests/systemd/run-suite)"
    );
    let policy = Path::new("/usr/sbin/policy-rc.d");
    if policy.exists() {
        std::fs::remove_file(policy).expect("remove the container's policy-rc.d");
    }
}

impl Package {
    fn install(deb: &str) -> Package {
        like_a_host();
        assert_eq!(package_state(), "", "corral must not be installed before the test");
        assert!(!Path::new("/etc/corral").exists(), "/etc/corral exists before the package is installed");
        admin_ok("dpkg", &["-i", deb]);
        Package
    }
}

impl Drop for Package {
    fn drop(&mut self) {
        let _ = admin("apt-get", &["purge", "-y", "corral"]);
        let _ = run("systemctl", &["stop", "corral-*.scope"]);
        let _ = run("systemctl", &["reset-failed"]);
    }
}

/// `corralctl --json ARGS` as root: every response, the final one last.
fn ctl(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (ok, out) = run(INSTALLED_CTL, &full);
    assert!(ok, "corralctl {} failed: {out}\n{}", args.join(" "), corrald_journal());
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Worker id to pid, as `corralctl workers` lists them.
fn worker_pids() -> BTreeMap<String, u32> {
    let workers = ctl(&["workers"]).pop().expect("a response");
    workers["workers"]
        .as_array()
        .expect("a worker list")
        .iter()
        .map(|w| (w["id"].as_str().unwrap().to_string(), w["pid"].as_u64().unwrap() as u32))
        .collect()
}

/// Waits for every worker of the example fleet to be ready.
fn fleet_ready() {
    poll_blocking("the example fleet to be ready", PATIENCE * 2, || {
        let status = ctl(&["status"]).pop().expect("a response");
        let ready: u64 =
            status["supervisor"]["groups"].as_array().into_iter().flatten().filter_map(|g| g["ready"].as_u64()).sum();
        if ready == FLEET as u64 {
            Ok(())
        } else {
            Err(format!("{ready} ready: {status}\n{}", corrald_journal()))
        }
    });
}

/// Waits for corrald.service to be active: it is activating until every
/// group has settled.
fn active() {
    poll_blocking("corrald.service to be active", PATIENCE, || {
        let state = show("corrald.service", "ActiveState");
        if state == "active" {
            Ok(())
        } else {
            Err(format!("{state}\n{}", corrald_journal()))
        }
    });
}

/// The uid a process runs as (the real one, from /proc).
fn process_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("a Uid line");
    line.split_whitespace().nth(1).and_then(|u| u.parse().ok()).expect("a uid")
}

fn gid_of(group: &str) -> u32 {
    let group = nix::unistd::Group::from_name(group).expect("group database").unwrap_or_else(|| panic!("no {group}"));
    group.gid.as_raw()
}

/// Where the journal ends now, for reading only what comes after.
fn journal_cursor() -> String {
    let (ok, out) = run("journalctl", &["--no-pager", "-n", "0", "--show-cursor"]);
    assert!(ok, "journalctl --show-cursor failed: {out}");
    out.lines().find_map(|l| l.strip_prefix("-- cursor: ")).expect("a cursor").trim().to_string()
}

/// `corralctl ARGS` run as nobody, in the supplementary groups given, with
/// no environment: no runtime directory, so no socket of their own.
fn ctl_as_nobody(groups: &str, args: &[&str]) -> (bool, String) {
    let (uid, gid) = (OUTSIDER.0.to_string(), OUTSIDER.1.to_string());
    let mut all = vec!["--reuid", &uid, "--regid", &gid];
    let named;
    if groups.is_empty() {
        all.push("--clear-groups");
    } else {
        named = groups.to_string();
        all.extend(["--groups", &named]);
    }
    // No --socket: a user without a corrald of their own reaches the
    // system's.
    all.extend(["env", "-i", INSTALLED_CTL]);
    all.extend_from_slice(args);
    run("setpriv", &all)
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn the_package_installs_upgrades_with_workers_adopted_removes_with_a_drain_and_purges() {
    needs_root("it installs a package");
    let (first, newer) = (deb("CORRAL_DEB"), deb("CORRAL_DEB_NEWER"));
    assert!(deb_version(&newer) != deb_version(&first), "run-suite must build a newer version");
    let package = Package::install(&first);
    assert_eq!(package_state(), format!("ii  {}", deb_version(&first)));

    // Installed: the socket enabled and listening for the operators' group,
    // the service waiting for its first client, the directories, the users.
    assert_eq!(show("corrald.socket", "UnitFileState"), "enabled");
    assert_eq!(show("corrald.socket", "ActiveState"), "active");
    assert_eq!(show("corrald.service", "ActiveState"), "inactive", "installing starts no fleet by itself");
    let socket = std::fs::metadata(SOCKET).expect("the socket unit made the socket");
    assert!(socket.file_type().is_socket());
    assert_eq!((mode(Path::new(SOCKET)), socket.gid()), (0o660, gid_of("corral-ops")), "the socket's mode and group");
    assert_eq!(mode(Path::new("/var/lib/corral")), 0o750);
    let logs = std::fs::metadata("/var/log/corral").expect("/var/log/corral");
    assert_eq!((mode(Path::new("/var/log/corral")), logs.gid()), (0o750, gid_of("adm")));
    let worker_user = nix::unistd::User::from_name("corral-worker").expect("user database").expect("corral-worker");
    assert_ne!(worker_user.uid.as_raw(), 0);
    // Compiled by systemd's dpkg trigger on /usr/lib/systemd/catalog: the
    // package's own scripts do not run journalctl --update-catalog.
    let (ok, catalog) = run("journalctl", &["--list-catalog", corral::audit::MESSAGE_ID]);
    assert!(ok && catalog.contains("corral:"), "the audit catalog was not compiled in: {catalog}");

    // The first client starts corrald with the example fleet, run as the
    // unprivileged user.
    let status = ctl(&["status"]).pop().expect("a response");
    assert_eq!(
        show("corrald.service", "MainPID"),
        status["supervisor"]["pid"].to_string(),
        "the socket activated corrald"
    );
    fleet_ready();
    active();
    let before = worker_pids();
    assert_eq!(before.len(), FLEET, "{before:?}");
    for pid in before.values() {
        assert_eq!(process_uid(*pid), worker_user.uid.as_raw(), "worker {pid} runs as corral-worker");
    }

    // The operators' group may read; others may not even connect.
    let ops = gid_of("corral-ops").to_string();
    let (ok, out) = ctl_as_nobody(&ops, &["status"]);
    assert!(ok, "a member of corral-ops reads the status: {out}");
    let (ok, out) = ctl_as_nobody(&ops, &["stop", "web"]);
    assert!(!ok && out.contains("denied"), "the read tier may not stop: {out}");
    let (ok, out) = ctl_as_nobody("", &["status"]);
    assert!(!ok, "a user outside corral-ops got an answer: {out}");

    // A newer package restarts the running corrald, which adopts the
    // workers: same processes, none restarted.
    let main_pid = show("corrald.service", "MainPID");
    let started = show("corrald.service", "ExecMainStartTimestampMonotonic");
    admin_ok("dpkg", &["-i", &newer]);
    assert_eq!(package_state(), format!("ii  {}", deb_version(&newer)), "the newer package is installed");
    active();
    assert_ne!(show("corrald.service", "MainPID"), main_pid, "the upgrade restarted corrald");
    assert_ne!(show("corrald.service", "ExecMainStartTimestampMonotonic"), started);
    fleet_ready();
    assert_eq!(worker_pids(), before, "the new corrald adopted the same workers");

    // Removal stops the socket and the service: a soft drain of every
    // worker, and a clean exit. The config stays.
    let cursor = journal_cursor();
    let removed = admin_ok("apt-get", &["remove", "-y", "corral"]);
    assert!(package_state().starts_with("rc "), "dpkg: {} after\n{removed}", package_state());
    assert_eq!(show("corrald.socket", "ActiveState"), "inactive");
    assert_eq!(show("corrald.service", "ActiveState"), "inactive");
    assert_eq!(show("corrald.service", "Result"), "success", "corrald drained and exited 0\n{}", corrald_journal());
    for (id, pid) in &before {
        assert!(!pid_alive(*pid), "worker {id} (pid {pid}) outlived the removal");
    }
    let (_, left) = run("systemctl", &["list-units", "--all", "--no-legend", "--plain", "corral-*"]);
    assert_eq!(left.trim(), "", "scopes left behind");
    let _ = run("journalctl", &["--sync"]);
    let (_, since) =
        run("journalctl", &["--no-pager", "-o", "cat", "-u", "corrald.service", &format!("--after-cursor={cursor}")]);
    assert!(since.contains("soft shutdown: draining every worker"), "{since}");
    assert!(since.contains(&format!("drained {FLEET} workers")), "{since}");
    // Adopted workers are not corrald's children: their drain is told by
    // the soft stop they answered (protocol) or by their exit after the
    // stop signal (signal mode).
    for id in before.keys() {
        let clean = since.lines().any(|l| {
            l.ends_with(&format!("worker={id} pid={}", before[id]))
                && (l.starts_with("drained: answered its soft stop OK")
                    || l.starts_with("exited after its stop signal"))
        });
        assert!(clean, "worker {id} did not drain cleanly:\n{since}");
    }
    assert!(Path::new(CONFIG).is_file(), "remove must keep {CONFIG}");

    // Purge removes what the package created, and what corrald wrote there:
    // its state and the audit logs (the denied stop above is in them).
    for kept in ["/var/lib/corral/workers.json", "/var/log/corral/audit.jsonl"] {
        assert!(Path::new(kept).is_file(), "{kept} is missing before the purge");
    }
    admin_ok("apt-get", &["purge", "-y", "corral"]);
    assert_eq!(package_state(), "", "purged");
    for gone in ["/etc/corral", "/var/lib/corral", "/var/log/corral"] {
        assert!(!Path::new(gone).exists(), "purge left {gone}");
    }
    drop(package);
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn the_man_pages_render_and_the_shells_complete_subcommands() {
    needs_root("it installs a package");
    let _package = Package::install(&deb("CORRAL_DEB"));

    for (section, page) in [("1", "corralctl"), ("8", "corrald"), ("5", "corral.toml")] {
        let (ok, text) = run("man", &["-P", "cat", section, page]);
        assert!(ok && text.contains(page), "man {section} {page}:\n{text}");
    }

    // What bash with bash-completion offers for `corralctl st<TAB>`: the
    // installed completion, loaded on demand as in an interactive shell.
    let script = r#"
        . /usr/share/bash-completion/bash_completion
        __load_completion corralctl || exit 3
        spec=$(complete -p corralctl) || exit 4
        func=${spec##*-F }; func=${func%% *}
        COMP_WORDS=(corralctl st); COMP_CWORD=1
        COMP_LINE='corralctl st'; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9
        "$func" corralctl st corralctl
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let (ok, out) = run("bash", &["--norc", "--noprofile", "-c", script]);
    assert!(ok, "the completion did not run: {out}");
    let mut offered: Vec<&str> = out.split_whitespace().collect();
    offered.sort();
    assert_eq!(offered, ["start", "status", "stop"], "{out}");

    // fish loads the installed file from its vendor directory by itself.
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("fish")
        .args(["-c", "complete -C 'corralctl st'"])
        .env("HOME", home.path())
        .output()
        .expect("fish");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut offered: Vec<&str> = text.lines().filter_map(|l| l.split('\t').next()).collect();
    offered.sort();
    assert_eq!(offered, ["start", "status", "stop"], "fish: {text}{}", String::from_utf8_lossy(&out.stderr));

    // zsh finds completion functions on its fpath, of which Debian's
    // vendor directory is part.
    let (ok, fpath) = run("zsh", &["-fc", "print -l $fpath"]);
    assert!(ok && fpath.lines().any(|d| d == "/usr/share/zsh/vendor-completions"), "zsh's fpath: {fpath}");
    assert!(Path::new("/usr/share/zsh/vendor-completions/_corralctl").is_file());
}

/// Installed where systemd does not run (a chroot, a container without
/// it: no /run/systemd/system, no manager to talk to), the package sets up
/// its users, directories and enablement, and starts nothing.
#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn installed_where_systemd_does_not_run_the_package_starts_nothing() {
    needs_root("it installs a package");
    let deb = deb("CORRAL_DEB");
    like_a_host();
    assert_eq!(package_state(), "", "corral must not be installed before the test");
    // dpkg in a mount namespace of its own with an empty /run/systemd: no
    // /run/systemd/system, the sign of a running systemd, and no manager to
    // reach, as in a chroot.
    let script = "mount -t tmpfs none /run/systemd && dpkg -i \"$0\"";
    let (ok, out) = admin("unshare", &["--mount", "--propagation", "private", "sh", "-c", script, &deb]);
    let _package = Package;
    assert!(ok, "dpkg -i without systemd failed:\n{out}");
    assert_eq!(package_state(), format!("ii  {}", deb_version(&deb)));
    assert!(nix::unistd::Group::from_name("corral-ops").expect("group database").is_some());
    assert_eq!(mode(Path::new("/var/lib/corral")), 0o750);
    assert!(
        Path::new("/etc/systemd/system/sockets.target.wants/corrald.socket").exists(),
        "the socket is enabled for the next boot"
    );
    for unit in ["corrald.socket", "corrald.service"] {
        assert_eq!(show(unit, "ActiveState"), "inactive", "{unit} was started:\n{out}");
    }
    assert!(!Path::new(SOCKET).exists(), "something listens on {SOCKET}");
    assert!(!run("pgrep", &["-x", "corrald"]).0, "corrald runs");
}

#[test]
#[ignore = "needs a real systemd: tests/systemd/run-suite runs it inside a container"]
fn lintian_finds_no_errors_in_the_package() {
    let deb = deb("CORRAL_DEB");
    let (_, out) = run("lintian", &["--tag-display-limit", "0", "--info", &deb]);
    println!("lintian {deb}:\n{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}\n\nall of it:\n{out}", errors.join("\n"));
    assert!(!out.contains("error:") && !out.contains("Can't locate"), "lintian could not check the package:\n{out}");
}
