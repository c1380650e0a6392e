//! The man pages and completions, rendered from the clap definitions
//! (`corral::cli`) and the config reference (`corral::config::reference`).
//! Shared by the corral-docs example and tests/cli_docs.rs, which checks
//! what it writes.

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use clap_mangen::Man;
use roff::{bold, italic, roman, Inline, Roff};

use corral::cli::corralctl::{self, Cli, COMPLETE_ENV, EXIT_STATUSES, SOCKET_ENV};
use corral::cli::corrald::Args;
use corral::config::reference::{Default, KEYS};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MANUAL: &str = "corral";

/// The example of corral.toml(5), which the tests parse.
pub const CONFIG_EXAMPLE: &str = r#"[groups.web]
command = "/usr/local/bin/web-worker"
args = ["--port-base", "8000"]
count = 4
stop_mode = "protocol"
user = "web"

[groups.web.resources]
MemoryMax = "2G"

[groups.web.ping]
interval = "5s"

[groups.web.health.liveness]
http = "http://127.0.0.1:8000/healthz"
failure_threshold = 3
"#;

/// Writes every page and completion under `outdir`; returns their paths.
pub fn write(outdir: &Path) -> io::Result<Vec<PathBuf>> {
    let files = [
        ("man/corrald.8", corrald_page()?),
        ("man/corralctl.1", corralctl_page()?),
        ("man/corral.toml.5", config_page()?),
        ("completions/corralctl.bash", completion(&Bash)?),
        ("completions/_corralctl", zsh_completion()?),
        ("completions/corralctl.fish", completion(&Fish)?),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = outdir.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// The registration script of clap_complete's env-based completion: the
/// shell runs `corralctl` (found in PATH) with COMPLETE_ENV set for every
/// completion, so corralctl answers from its own clap definition and asks
/// corrald for group and worker names.
fn completion(shell: &dyn EnvCompleter) -> io::Result<String> {
    let mut buf = Vec::new();
    shell.write_registration(COMPLETE_ENV, "corralctl", "corralctl", "corralctl", &mut buf)?;
    String::from_utf8(buf).map_err(io::Error::other)
}

/// zsh loads `_corralctl` from its fpath as the body of a function that
/// must complete at once; the registration script only defines the
/// completer and `compdef`s it, which would leave the first TAB empty. So
/// its `compdef` line becomes a call when zsh autoloads the file.
fn zsh_completion() -> io::Result<String> {
    let script = completion(&Zsh)?;
    let compdef = "compdef _clap_dynamic_completer_corralctl corralctl";
    if !script.trim_end().ends_with(compdef) {
        return Err(io::Error::other(format!("clap_complete's zsh script no longer ends with `{compdef}`")));
    }
    let body = script.trim_end().strip_suffix(compdef).unwrap_or_default();
    Ok(format!(
        "{body}if [[ $funcstack[1] == _corralctl ]]; then\n    _clap_dynamic_completer_corralctl \"$@\"\nelse\n    \
         {compdef}\nfi\n"
    ))
}

fn man(cmd: clap::Command, section: &str) -> Man {
    Man::new(cmd).section(section).manual(MANUAL).source(format!("corral {VERSION}"))
}

/// A page's title, NAME and SYNOPSIS, as clap_mangen renders them.
fn opening(man: &Man) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    Ok(out)
}

/// A section of paragraphs.
fn section(roff: &mut Roff, title: &str, paragraphs: &[&str]) {
    roff.control("SH", [title]);
    for (i, text) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(*text)]);
    }
}

/// A tagged list: each item's tag in bold, then its text.
fn tagged(roff: &mut Roff, items: &[(String, String)]) {
    for (tag, text) in items {
        roff.control("TP", []);
        roff.text([bold(tag.as_str())]);
        roff.text([roman(text.as_str())]);
    }
}

/// A clap_mangen section without its `.SH` line, to be placed under a
/// heading of our own.
fn body(render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<String> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    let text = String::from_utf8(buf).map_err(io::Error::other)?;
    Ok(text.lines().filter(|line| !line.starts_with(".SH ")).map(|line| format!("{line}\n")).collect())
}

/// Every rendering starts with the same definition of the apostrophe
/// string; a page needs it once, before its title.
fn page(parts: Vec<u8>) -> io::Result<String> {
    let text = String::from_utf8(parts).map_err(io::Error::other)?;
    let preamble = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];
    let rest: String = text.lines().filter(|line| !preamble.contains(line)).map(|line| format!("{line}\n")).collect();
    Ok(format!("{}\n{}\n{rest}", preamble[0], preamble[1]))
}

fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    tagged(
        roff,
        &[
            ("/etc/corral/corral.toml".into(), "The configuration corrald.service runs; see corral.toml(5).".into()),
            (
                "/run/corral/corrald.sock".into(),
                "The command socket, for root's corrald (other users': $XDG_RUNTIME_DIR/corral/corrald.sock).".into(),
            ),
            (
                "/var/lib/corral".into(),
                "The state directory: workers.json, which a restarted corrald adopts its workers from, and saved/, \
                 the files of save-state and load-state."
                    .into(),
            ),
            ("/var/log/corral".into(), "The audit logs, where the configuration puts them.".into()),
        ],
    );
}

fn see_also(roff: &mut Roff, pages: &str) {
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(pages)]);
}

fn corrald_page() -> io::Result<String> {
    let cmd = Args::command().name("corrald");
    let man = man(cmd, "8");
    let mut out = opening(&man)?;
    let mut roff = Roff::new();
    section(
        &mut roff,
        "DESCRIPTION",
        &[
            "corrald starts the worker groups of its configuration, keeps them running with restart policies and \
             backoff, and drains them on a soft stop. It is controlled through one command socket that speaks \
             protobuf, with corralctl(1) as its client; privileged requests are audited before they run.",
            "Under systemd it runs as corrald.service (Type=notify, socket-activated by corrald.socket): each \
             worker is placed in a transient scope under corral.slice, worker output goes to the journal with \
             corral's fields, and a restarted corrald adopts the workers the previous one left running. Without \
             a service manager it supervises just the same.",
        ],
    );
    out.extend(roff.render().into_bytes());
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["SIGNALS"]);
    tagged(
        &mut roff,
        &[
            (
                "SIGTERM".into(),
                "Drain every worker softly and exit; when systemd is restarting corrald.service, exit and leave the \
                 workers running for the next corrald to adopt."
                    .into(),
            ),
            ("SIGINT".into(), "Drain every worker softly and exit.".into()),
            ("SIGHUP".into(), "Reopen the audit logs and reload the configuration.".into()),
        ],
    );
    roff.control("SH", ["ENVIRONMENT"]);
    tagged(
        &mut roff,
        &[(
            "CORRAL_LOG".into(),
            "corrald's own log filter, in tracing's EnvFilter syntax (e.g. debug, or corral=debug).".into(),
        )],
    );
    section(
        &mut roff,
        "EXIT STATUS",
        &["0 after a clean shutdown, a hand-over to a restarted corrald, or a valid --check-config; 1 when the \
           configuration is refused, startup fails, or workers could not be drained."],
    );
    files(&mut roff);
    see_also(&mut roff, "corralctl(1), corral.toml(5), systemd.scope(5), systemd.resource-control(5), journalctl(1)");
    out.extend(roff.render().into_bytes());
    man.render_version_section(&mut out)?;
    page(out)
}

/// corralctl's whole command set in one page, as systemctl(1) has it: the
/// commands are short, and one page is what `man corralctl` finds.
fn corralctl_page() -> io::Result<String> {
    let cmd = Cli::command().mut_arg("socket", |a| a.help(corralctl::socket_help_for_everyone()));
    let man = man(cmd.clone(), "1");
    let mut out = opening(&man)?;
    let mut roff = Roff::new();
    section(
        &mut roff,
        "DESCRIPTION",
        &[
            "corralctl sends one request to corrald(8) on its command socket and waits for the final answer, \
             printing progress on the way: on a terminal a progress bar follows drains, otherwise each step is a \
             line. Whatever corrald sends is escaped before it is printed.",
            "A TARGET is \"all\", a group name, or a worker id such as web-3. corralctl waits 5s for corrald to \
             begin answering status or workers and 30s for anything else (--timeout changes it); once an answer \
             has begun, a drain reports for as long as it takes.",
        ],
    );
    out.extend(roff.render().into_bytes());
    man.render_options_section(&mut out)?;
    out.extend(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        commands(&mut out, sub, "corralctl")?;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    tagged(&mut roff, &EXIT_STATUSES.map(|(code, text)| (code.to_string(), text.to_string())));
    roff.control("SH", ["ENVIRONMENT"]);
    tagged(
        &mut roff,
        &[
            (SOCKET_ENV.into(), "The socket to use when --socket is not given.".into()),
            (
                COMPLETE_ENV.into(),
                "Set by the shell completion scripts: corralctl then answers a completion request instead of \
                 running a command."
                    .into(),
            ),
        ],
    );
    files(&mut roff);
    section(
        &mut roff,
        "EXAMPLES",
        &["corralctl status; corralctl stop web (drain the group web); corralctl restart web --rolling; corralctl \
           scale web 8; corralctl limit web MemoryMax=512M CPUQuota=150%; corralctl --json workers --group web."],
    );
    see_also(&mut roff, "corrald(8), corral.toml(5), systemctl(1), journalctl(1)");
    out.extend(roff.render().into_bytes());
    man.render_version_section(&mut out)?;
    page(out)
}

/// One subcommand as a subsection: its synopsis, what it does, its
/// arguments and options; a command with commands of its own, each of them.
fn commands(out: &mut Vec<u8>, sub: &clap::Command, parent: &str) -> io::Result<()> {
    let name = format!("{parent} {}", sub.get_name());
    if sub.has_subcommands() {
        for inner in sub.get_subcommands() {
            commands(out, inner, &name)?;
        }
        return Ok(());
    }
    // The global options and --help are documented once, above.
    let cmd = sub.clone().bin_name(&name).disable_help_flag(true);
    let man = Man::new(cmd.clone());
    let mut roff = Roff::new();
    roff.control("SS", [name.strip_prefix("corralctl ").unwrap_or(&name)]);
    out.extend(roff.render().into_bytes());
    out.extend(body(|buf| man.render_synopsis_section(buf))?.into_bytes());
    let mut roff = Roff::new();
    roff.control("PP", []);
    let about = cmd.get_long_about().or(cmd.get_about()).map(|a| a.to_string()).unwrap_or_default();
    roff.text([roman(about)]);
    out.extend(roff.render().into_bytes());
    if cmd.get_arguments().next().is_some() {
        out.extend(body(|buf| man.render_options_section(buf))?.into_bytes());
    }
    Ok(())
}

/// corral.toml(5), from the config reference alone.
fn config_page() -> io::Result<String> {
    let mut roff = Roff::new();
    roff.control("TH", ["corral.toml", "5", "", &format!("corral {VERSION}"), MANUAL]);
    section(&mut roff, "NAME", &["corral.toml - configuration of the corral supervisor, corrald(8)"]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([roman("/etc/corral/corral.toml")]);
    section(
        &mut roff,
        "DESCRIPTION",
        &[
            "corrald reads one TOML file, named by --config. Parsing is strict: an unknown key or a bad value is \
             an error naming the file and the key's path (groups.web.stop_timeout), and corrald --check-config \
             FILE checks a file without running it. corralctl reload, or SIGHUP, reads it again.",
            "Sizes are a number of bytes or text with a suffix as systemd writes them (64K, 512M, 1.5G), also in \
             lower case and as KiB or KB: every suffix is a power of 1024. Durations are written as \"250ms\", \
             \"5s\", \"1m 30s\", \"1day\". Relative paths are taken from the config file's directory.",
            "Each key below gives its type, its default and its bounds. The keys of [limits] bound what clients \
             and files can make corrald grow; each [groups.NAME] table is one group of workers, and its \
             [groups.NAME.resources] table holds systemd resource properties for its scopes, its \
             [groups.NAME.ping] table turns on pings over the worker channel, and its \
             [groups.NAME.health.liveness] and [groups.NAME.health.readiness] tables (PROBE below) are its \
             probes.",
        ],
    );
    let headings = [
        ("", "KEYS"),
        ("limits.", "[limits]"),
        ("groups.NAME.resources.", "[groups.NAME.resources]"),
        ("groups.NAME.ping.", "[groups.NAME.ping]"),
        ("groups.NAME.health.PROBE.", "[groups.NAME.health.PROBE]"),
        ("groups.NAME.health.", "[groups.NAME.health]"),
        ("groups.NAME.", "[groups.NAME]"),
    ];
    let heading_of = |path: &str| {
        headings.iter().find(|(prefix, _)| !prefix.is_empty() && path.starts_with(prefix)).map_or("KEYS", |(_, h)| *h)
    };
    let mut current = "";
    for key in KEYS {
        let heading = heading_of(key.path);
        if heading != current {
            if heading == "KEYS" {
                roff.control("SH", ["KEYS"]);
            } else {
                roff.control("SH", [heading]);
            }
            current = heading;
        }
        let short = key.path.rsplit_once('.').map_or(key.path, |(_, last)| last);
        let short = if heading == "KEYS" { key.path } else { short };
        roff.control("TP", []);
        roff.text([bold(short), roman(" ("), italic(key.kind.text()), roman(")")]);
        roff.text([roman(key.description)]);
        let default = match &key.default {
            Default::Required => "Required.".to_string(),
            other => format!("Default: {}.", other.text()),
        };
        let mut facts: Vec<Inline> = vec![roman(default)];
        if !key.bounds.is_empty() {
            facts.push(roman(format!(" Bounds: {}.", key.bounds)));
        }
        roff.control("br", []);
        roff.text(facts);
    }
    section(
        &mut roff,
        "EXAMPLE",
        &["A group of four workers, drained softly over the worker protocol, its scope limited to 2G of memory, \
          pinged every 5 s, and each worker restarted when the health endpoint the workers share fails three times in a row:"],
    );
    roff.control("PP", []);
    roff.control("nf", []);
    roff.control("RS", ["4"]);
    for line in CONFIG_EXAMPLE.lines() {
        roff.text([roman(line)]);
    }
    roff.control("RE", []);
    roff.control("fi", []);
    roff.control("SH", ["FILES"]);
    tagged(&mut roff, &[("/etc/corral/corral.toml".into(), "The configuration corrald.service runs.".into())]);
    see_also(&mut roff, "corrald(8), corralctl(1), systemd.resource-control(5), systemd.scope(5)");
    page(roff.render().into_bytes())
}
