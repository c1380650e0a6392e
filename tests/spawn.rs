//! What a worker gets at spawn (a clean environment, its identity, the user
//! it runs as) and the order groups start and stop in.

mod common;

use common::*;

/// The text a worker wrote to `path` (by rename, so it is whole), once it is there.
async fn written(path: &std::path::Path) -> String {
    poll(&format!("{} to be written", path.display()), PATIENCE, || async move {
        std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|text| {
            if text.ends_with("END\n") {
                Ok(text)
            } else {
                Err(format!("no END yet: {text:?}"))
            }
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_a_clean_environment_with_their_identity() {
    let mut c = Corrald::new("");
    let out = c.dir.path().join("env.out");
    c.write_config(&format!(
        "[groups.envy]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"/usr/bin/env > {out}.tmp; echo END >> {out}.tmp; mv {out}.tmp {out}; exec sleep 600\"]\n\
         environment = {{ GREETING = \"hello world\" }}\nstop_mode = \"signal\"\nready_after = \"10ms\"\n",
        out = out.display()
    ));
    std::env::set_var("CORRAL_TEST_LEAK", "must not reach workers");
    c.start();
    let text = written(&out).await;
    let mut vars: Vec<&str> = text.lines().filter(|l| *l != "END").map(|l| l.split('=').next().unwrap()).collect();
    vars.sort();
    // The shell may add its own bookkeeping variables; nothing else may appear.
    vars.retain(|v| !matches!(*v, "PWD" | "SHLVL" | "_" | "OLDPWD"));
    assert_eq!(vars, ["CORRAL_GROUP", "CORRAL_WORKER_ID", "GREETING", "PATH"], "{text}");
    assert!(text.contains("CORRAL_GROUP=envy\n"));
    assert!(text.contains("CORRAL_WORKER_ID=envy-1\n"));
    assert!(text.contains("GREETING=hello world\n"));
    assert!(!text.contains("CORRAL_TEST_LEAK"));

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_the_open_file_limit_corrald_was_started_with() {
    let mut c = Corrald::new("");
    let out = c.dir.path().join("limits.out");
    c.write_config(&format!(
        "[groups.fds]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"(ulimit -Sn; ulimit -Hn; echo END) > {out}.tmp; mv {out}.tmp {out}; exec sleep 600\"]\n\
         stop_mode = \"signal\"\nready_after = \"10ms\"\n",
        out = out.display()
    ));
    // corrald raises its own soft limit to the hard one; its workers must
    // not inherit that (select() breaks above 1024).
    c.wrapper = ["prlimit", "--nofile=512:4096"].map(String::from).to_vec();
    c.start();
    let pid = c.pid();
    let corrald_limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = corrald_limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    assert_eq!(open_files.split_whitespace().collect::<Vec<_>>()[3..5], ["4096", "4096"], "{open_files}");
    let text = written(&out).await;
    assert_eq!(text, "512\n4096\nEND\n");
    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_runs_as_its_configured_user() {
    needs_root("corrald switches the workers to another user");
    let mut c = Corrald::new("");
    // The worker writes where nobody may; corrald's own directory stays
    // writable by root alone (corrald refuses a socket directory others
    // could write to).
    chmod(c.dir.path(), 0o755);
    let shared = c.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let out = shared.join("id.out");
    c.write_config(&format!(
        "[groups.low]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"(id -u; id -g; id -G; echo END) > {out}.tmp; mv {out}.tmp {out}; exec sleep 600\"]\n\
         user = \"nobody\"\ngroup = \"nogroup\"\nstop_mode = \"signal\"\nready_after = \"10ms\"\n",
        out = out.display()
    ));
    c.start();
    let text = written(&out).await;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{text}");
    assert_eq!(lines[1], nogroup.gid.to_string(), "{text}");
    // Root's supplementary groups must not be kept.
    assert!(!lines[2].split_whitespace().any(|g| g == "0"), "{text}");

    c.shutdown_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_start_after_their_dependencies_are_ready_and_stop_before_them() {
    let groups =
        [demo_group("db", 2, &["--ready-delay-ms", "300"], ""), demo_group("app", 2, &[], "after = [\"db\"]\n")];
    let mut c = Corrald::new(&groups.concat());
    c.start();
    c.wait_ready("app", 2).await;
    c.shutdown_ok().await;

    let log = std::fs::read_to_string(&c.log).unwrap();
    let events: Vec<(&str, &str)> = log
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            matches!(f[0], "ready" | "exit").then(|| (f[0], f[1]))
        })
        .collect();
    let pos = |ev: &str, group: &str| -> Vec<usize> {
        events.iter().enumerate().filter(|(_, (e, w))| *e == ev && w.starts_with(group)).map(|(i, _)| i).collect()
    };
    let (db_ready, app_ready) = (pos("ready", "db-"), pos("ready", "app-"));
    let (db_exit, app_exit) = (pos("exit", "db-"), pos("exit", "app-"));
    assert_eq!((db_ready.len(), app_ready.len(), db_exit.len(), app_exit.len()), (2, 2, 2, 2), "{log}");
    assert!(db_ready.iter().max() < app_ready.iter().min(), "app became ready before db was: {log}");
    assert!(app_exit.iter().max() < db_exit.iter().min(), "db stopped before app: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bus_corrald_runs_without_scopes_and_says_so_once() {
    let group = demo_group("w", 2, &[], "");
    // A bus address where no bus is: the same as a host without systemd.
    let no_bus = ("DBUS_SYSTEM_BUS_ADDRESS".to_string(), "unix:path=/nonexistent/corral-test-bus".to_string());
    let mut c = Corrald::new(&format!("bus = \"system\"\n{group}"));
    c.env.push(no_bus.clone());
    c.start();
    c.wait_ready("w", 2).await;
    assert!(!c.status().await.scopes_active);
    let (code, out, err) = c.ctl(&["status"]);
    assert!(code == Some(0) && out.contains("scopes: inactive"), "{out}{err}");
    c.shutdown_ok().await;
    assert_eq!(c.stderr().matches("running WITHOUT scopes").count(), 1, "{}", c.stderr());

    let mut c = Corrald::new(&format!("bus = \"system\"\nscopes = \"required\"\n{group}"));
    let out = run_bounded(std::process::Command::new(CORRALD).arg("--config").arg(&c.config).env(&no_bus.0, &no_bus.1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("scopes = \"required\""), "{stderr}");
    assert!(stderr.contains(&path_str(&c.config)), "{stderr}");
    assert!(!c.socket.exists(), "a refused start must not leave a socket");
    c.child = None;
}
