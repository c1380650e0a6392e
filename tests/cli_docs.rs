//! The man pages and shell completions the package installs, as the
//! corral-docs example writes them: each page renders with man and no
//! warning and names every command or key; bash (with bash-completion,
//! loading the file under its installed name), fish and an interactive zsh
//! (in tmux) complete corralctl's commands and the names of a running
//! corrald's groups and workers, and stay quiet when no corrald answers.

mod common;

#[path = "../examples/corral-docs/docs.rs"]
mod docs;

use std::collections::BTreeSet;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use common::*;
use corral::cli::corralctl::Cli;
use corral::config::reference::KEYS;
use corral::config::Config;

/// The example's output in a fresh directory.
fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = docs::write(dir.path()).expect("corral-docs writes its files");
    let names: BTreeSet<String> =
        written.iter().map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
    let expected = [
        "man/corrald.8",
        "man/corralctl.1",
        "man/corral.toml.5",
        "completions/corralctl.bash",
        "completions/_corralctl",
        "completions/corralctl.fish",
    ];
    assert_eq!(names, expected.iter().map(|s| s.to_string()).collect(), "the paths the package installs from");
    dir
}

/// A page as `man` shows it, failing on any warning groff gives.
fn man(page: &Path) -> String {
    let out =
        run_bounded(Command::new("man").args(["--warnings", "-E", "UTF-8", "-l"]).arg(page).env("MANWIDTH", "100"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "man -l {}: {}\n{stderr}", page.display(), out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's lines, trimmed.
fn lines(text: &str) -> BTreeSet<String> {
    text.lines().map(|l| l.trim().to_string()).collect()
}

#[test]
fn every_page_renders_without_a_warning() {
    let dir = generated();
    for (page, sections) in [
        ("corrald.8", &["NAME", "SYNOPSIS", "OPTIONS", "SIGNALS", "EXIT STATUS", "FILES", "SEE ALSO"][..]),
        (
            "corralctl.1",
            &["NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"],
        ),
        ("corral.toml.5", &["NAME", "DESCRIPTION", "KEYS", "[limits]", "[groups.NAME]", "[groups.NAME.resources]"]),
    ] {
        let text = man(&dir.path().join("man").join(page));
        let shown = lines(&text);
        for section in sections {
            assert!(shown.contains(*section), "{page} has no {section} section:\n{text}");
        }
        assert!(text.contains("/etc/corral/corral.toml"), "{page} does not name the config file");
    }
}

/// Every command corralctl has, as the page heads it: "status", "audit verify".
fn commands(cmd: &clap::Command, prefix: &str) -> Vec<String> {
    cmd.get_subcommands()
        .flat_map(|sub| {
            let name = format!("{prefix}{}", sub.get_name());
            if sub.has_subcommands() {
                commands(sub, &format!("{name} "))
            } else {
                vec![name]
            }
        })
        .collect()
}

#[test]
fn corralctl_page_names_every_command_and_exit_status() {
    let dir = generated();
    let text = man(&dir.path().join("man/corralctl.1"));
    let shown = lines(&text);
    let all = commands(&Cli::command(), "");
    assert!(all.len() >= 14, "{all:?}");
    for command in all {
        assert!(shown.contains(&command), "no heading for {command}:\n{text}");
        assert!(text.contains(&format!("corralctl {command}")), "no synopsis for {command}");
    }
    let exit_status = text.split("EXIT STATUS").nth(1).unwrap_or_default();
    for code in ["0", "1", "2", "3"] {
        let described = exit_status.lines().map(str::trim).any(|l| l.split_whitespace().next() == Some(code));
        assert!(described, "exit status {code} is not described:\n{text}");
    }
}

#[test]
fn config_page_names_every_key_with_its_default() {
    let dir = generated();
    let text = man(&dir.path().join("man/corral.toml.5"));
    let shown = lines(&text);
    for key in KEYS {
        // A top-level key under its full name, a table's under its own.
        let name = if key.path.contains('.') { key.path.rsplit('.').next().unwrap() } else { key.path };
        let tag = format!("{name} ({})", key.kind.text());
        assert!(shown.iter().any(|l| l.starts_with(&tag)), "no entry for {}:\n{text}", key.path);
    }
    for heading in ["KEYS", "[limits]", "[groups.NAME]", "[groups.NAME.resources]"] {
        assert_eq!(text.lines().filter(|l| *l == heading).count(), 1, "{heading} is not one section:\n{text}");
    }
    let example = Config::parse(docs::CONFIG_EXAMPLE, Path::new("/etc/corral/corral.toml"));
    assert!(example.is_ok(), "the page's example: {example:?}");
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for default in ["Default: 4096.", "Default: \"on-failure\".", "Default: \"10s\".", "Bounds: 1 to 500."] {
        assert!(flat.contains(default), "{default} is not shown");
    }
}

/// Runs `script` in a non-interactive bash with bash-completion loaded
/// and corralctl's completion found under its installed name in `dir`
/// (as /usr/share/bash-completion/completions/corralctl is), corralctl
/// itself in PATH; returns stdout, failing on anything on stderr.
fn bash(dir: &Path, env: &[(&str, &str)], script: &str) -> String {
    let share = dir.join("share");
    let completions = share.join("bash-completion/completions");
    std::fs::create_dir_all(&completions).unwrap();
    std::fs::copy(dir.join("completions/corralctl.bash"), completions.join("corralctl")).unwrap();
    let setup = "set -u\n. /usr/share/bash-completion/bash_completion\n\
                 __load_completion corralctl || { echo 'no completion loaded for corralctl' >&2; exit 3; }\n\
                 complete=$(complete -p corralctl)\nfunction=${complete##*-F }\nfunction=${function%% *}\n\
                 # The words as bash splits the line, the cursor on the last.\n\
                 tab() { COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); COMP_LINE=\"$*\"; COMP_POINT=${#COMP_LINE};\n\
                 COMP_TYPE=9; COMPREPLY=(); \"$function\" corralctl \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\";\n\
                 printf '%s\\n' \"${COMPREPLY[@]}\" | sort; }\n";
    let out = run_bounded(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c"])
            .arg(format!("{setup}{script}"))
            .env("XDG_DATA_HOME", &share)
            .env("PATH", path_with_corralctl())
            .env_remove("CORRAL_SOCKET")
            .envs(env.iter().copied()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "bash: {}\n{stderr}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn words(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

/// The candidates that are not options: on an empty word clap offers the
/// options too.
fn names(text: &str) -> Vec<&str> {
    words(text).into_iter().filter(|w| !w.starts_with('-')).collect()
}

#[test]
fn bash_completes_the_commands() {
    let dir = generated();
    let quiet = dir.path().join("no-corrald.sock");
    let env = [("CORRAL_SOCKET", quiet.to_str().unwrap())];
    assert_eq!(words(&bash(dir.path(), &env, "tab corralctl st")), ["start", "status", "stop"]);
    assert_eq!(words(&bash(dir.path(), &env, "tab corralctl audit v")), ["verify"]);
    assert_eq!(words(&bash(dir.path(), &env, "tab corralctl restart --r")), ["--rolling"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_completes_the_groups_and_workers_of_the_running_corrald() {
    let dir = generated();
    let mut c = Corrald::new(&format!("{}{}", demo_group("web", 2, &[], ""), demo_group("db", 1, &[], "")));
    c.start();
    c.wait_ready("web", 2).await;
    c.wait_ready("db", 1).await;
    let workers: Vec<String> = c.workers().await.into_iter().map(|w| w.id).collect();
    assert_eq!(workers.len(), 3, "{workers:?}");
    // corrald is another process: nothing on this runtime waits while bash runs.
    let env = [("CORRAL_SOCKET", c.socket.to_str().unwrap())];
    let scale = bash(dir.path(), &env, "tab corralctl scale ''");
    let stop = bash(dir.path(), &env, "tab corralctl stop ''");
    let web = bash(dir.path(), &env, "tab corralctl restart we");
    assert_eq!(names(&scale), ["db", "web"]);
    let mut expected: Vec<&str> = ["all", "db", "web"].into_iter().chain(workers.iter().map(String::as_str)).collect();
    expected.sort();
    assert_eq!(names(&stop), expected, "{stop}");
    let mut expected: Vec<&str> = workers.iter().map(String::as_str).filter(|w| w.starts_with("web-")).collect();
    expected.push("web");
    expected.sort();
    assert_eq!(words(&web), expected);
    assert_eq!(fish(dir.path(), &c.socket, "corralctl scale "), ["db", "web"]);
    // A --socket on the line wins over the environment, as when it runs.
    let elsewhere = dir.path().join("no-corrald.sock");
    let line = format!("tab corralctl --socket {} scale ''", c.socket.display());
    assert_eq!(names(&bash(dir.path(), &[("CORRAL_SOCKET", elsewhere.to_str().unwrap())], &line)), ["db", "web"]);
    let zsh = Zsh::start(dir.path(), &c.socket);
    zsh.tab("corralctl scale w", "zsh to complete the group web", |s| s.contains("ready> corralctl scale web"));
    c.shutdown_ok().await;
}

#[test]
fn completion_is_quiet_and_quick_without_a_corrald() {
    let dir = generated();
    let nothing = dir.path().join("nothing-here.sock");
    // A socket that accepts connections (the kernel queues them) but whose
    // owner never answers: a corrald that hangs.
    let hung = dir.path().join("hung.sock");
    let _listener = UnixListener::bind(&hung).expect("bind");
    for socket in [nothing, hung] {
        let env = [("CORRAL_SOCKET", socket.to_str().unwrap())];
        let started = Instant::now();
        assert_eq!(
            names(&bash(dir.path(), &env, "tab corralctl scale ''")),
            Vec::<&str>::new(),
            "{}",
            socket.display()
        );
        assert_eq!(words(&bash(dir.path(), &env, "tab corralctl start w")), Vec::<&str>::new());
        assert!(started.elapsed() < Duration::from_secs(5), "{}: {:?}", socket.display(), started.elapsed());
    }
}

/// fish's own completion of `line`, with corralctl's script sourced: the
/// candidates, without their descriptions.
fn fish(dir: &Path, socket: &Path, line: &str) -> Vec<String> {
    let script = format!(
        "source {}; complete --do-complete {}",
        dir.join("completions/corralctl.fish").display(),
        shell_quote(line)
    );
    let out = run_bounded(
        Command::new("fish")
            .args(["--no-config", "-c", &script])
            .env("PATH", path_with_corralctl())
            .env("CORRAL_SOCKET", socket),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "fish: {}\n{stderr}", out.status);
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .filter(|w| !w.is_empty() && !w.starts_with('-'))
        .collect();
    found.sort();
    found
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn path_with_corralctl() -> String {
    let bin = Path::new(CORRALCTL).parent().unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// An interactive zsh in tmux, with `_corralctl` in its fpath as the
/// package installs it in /usr/share/zsh/vendor-completions.
struct Zsh {
    tmux: Tmux,
}

impl Zsh {
    fn start(dir: &Path, socket: &Path) -> Zsh {
        let fpath = dir.join("completions");
        let shell = format!(
            "env -i HOME={home} TERM=xterm PATH={path} CORRAL_SOCKET={socket} zsh -f",
            home = shell_quote(&dir.display().to_string()),
            path = shell_quote(&path_with_corralctl()),
            socket = shell_quote(&socket.display().to_string()),
        );
        let zsh = Zsh { tmux: Tmux::start(dir, 150, 40, &shell) };
        let setup = format!(
            "fpath=({} $fpath); autoload -Uz compinit; compinit -u -D; PS1='ready> '",
            shell_quote(&fpath.display().to_string())
        );
        zsh.tmux.keys(&[&setup, "Enter"]);
        zsh.tmux.screen_until("zsh's prompt", |screen| screen.lines().any(|l| l.starts_with("ready>")));
        zsh
    }

    /// Types `text` and a TAB, and returns the screen once `done` holds.
    fn tab(&self, text: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.tmux.type_text(text);
        self.tmux.keys(&["Tab"]);
        self.tmux.screen_until(what, done)
    }
}

/// The screen lines that begin with `word` as a listed candidate.
fn listed(screen: &str, word: &str) -> bool {
    screen.lines().any(|l| l.split_whitespace().next() == Some(word))
}

#[test]
fn fish_and_zsh_complete_the_commands() {
    let dir = generated();
    let socket = dir.path().join("no-corrald.sock");
    assert_eq!(fish(dir.path(), &socket, "corralctl st"), ["start", "status", "stop"]);
    assert_eq!(fish(dir.path(), &socket, "corralctl scale "), Vec::<String>::new());
    // The first TAB of a fresh shell already completes: zsh autoloads
    // _corralctl and runs it.
    let zsh = Zsh::start(dir.path(), &socket);
    zsh.tab("corralctl st", "zsh to list start, status and stop", |s| {
        ["start", "status", "stop"].iter().all(|w| listed(s, w))
    });
}
