//! Names for the shell to complete, asked of the running corrald.
//!
//! The shell runs corralctl with [`super::corralctl::COMPLETE_ENV`] set;
//! clap_complete then calls these for the argument under the cursor. They
//! ask the socket the completed command would talk to, briefly: a completion that hangs
//! the shell is worse than none, so a corrald that is not there, not
//! answering, or refusing the caller yields no candidates and no message.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap_complete::engine::CompletionCandidate;

use super::corralctl::socket_path;
use crate::ctl::Client;
use crate::proto::{self, request, response};

/// How long the shell may wait for corrald's names.
const PATIENCE: Duration = Duration::from_millis(500);

/// What `stop`, `start` and `restart` act on: everything, a group, a worker.
pub fn targets() -> Vec<CompletionCandidate> {
    let mut all = vec![CompletionCandidate::new("all").help(Some("every group".into()))];
    all.extend(groups_and_workers());
    all
}

/// Groups then workers, for `limit`.
pub fn groups_and_workers() -> Vec<CompletionCandidate> {
    let Some(fleet) = ask(true) else { return Vec::new() };
    let workers = fleet.workers.into_iter().map(|w| {
        let help = format!("worker of {}", w.group);
        CompletionCandidate::new(w.id).help(Some(help.into()))
    });
    group_candidates(fleet.groups).into_iter().chain(workers).collect()
}

/// Group names, for `scale` and `workers --group`.
pub fn groups() -> Vec<CompletionCandidate> {
    ask(false).map(|fleet| group_candidates(fleet.groups)).unwrap_or_default()
}

fn group_candidates(groups: Vec<proto::GroupStatus>) -> Vec<CompletionCandidate> {
    groups
        .into_iter()
        .map(|g| {
            let help = format!("group, {}/{} ready", g.ready, g.desired);
            CompletionCandidate::new(g.name).help(Some(help.into()))
        })
        .collect()
}

struct Fleet {
    groups: Vec<proto::GroupStatus>,
    workers: Vec<proto::WorkerInfo>,
}

/// The `--socket` on the command line being completed, which the shell
/// passes after a `--`: `corralctl -- corralctl --socket S stop w`. The
/// last word is the one under the cursor, not yet a value.
fn socket_typed(args: &[OsString]) -> Option<PathBuf> {
    let line = args.iter().position(|a| a == "--").map_or(&[][..], |i| &args[i + 1..]);
    let typed = line.split_last().map_or(&[][..], |(_, typed)| typed);
    let mut found = None;
    for (i, arg) in typed.iter().enumerate() {
        let text = arg.to_string_lossy();
        if text == "--socket" {
            found = typed.get(i + 1).map(PathBuf::from);
        } else if let Some(path) = text.strip_prefix("--socket=") {
            found = Some(PathBuf::from(path));
        }
    }
    found
}

/// The groups, and the workers when `workers`, of the corrald on the
/// socket the completed command would use; `None` whatever goes wrong.
fn ask(workers: bool) -> Option<Fleet> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let socket = socket_path(socket_typed(&args));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        tokio::time::timeout(PATIENCE, async {
            let mut client = Client::connect(&socket).await.ok()?;
            let status = client.call(request::Command::Status(proto::StatusRequest {}), |_| {}).await.ok()?;
            let Some(response::Content::SupervisorStatus(status)) = status.content else { return None };
            let mut fleet = Fleet { groups: status.groups, workers: Vec::new() };
            if workers {
                // A long listing comes in parts, the last with the final answer.
                let mut parts = Vec::new();
                let command = request::Command::ListWorkers(proto::ListWorkers { group: String::new() });
                let last = client
                    .call(command, |resp| {
                        if let Some(response::Content::Workers(list)) = &resp.content {
                            parts.extend(list.workers.iter().cloned());
                        }
                    })
                    .await
                    .ok()?;
                if let Some(response::Content::Workers(list)) = last.content {
                    parts.extend(list.workers);
                }
                fleet.workers = parts;
            }
            Some(fleet)
        })
        .await
        .ok()
        .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(line: &[&str]) -> Option<PathBuf> {
        let args: Vec<OsString> = ["corralctl", "--"].iter().chain(line).map(OsString::from).collect();
        socket_typed(&args)
    }

    #[test]
    fn the_socket_typed_on_the_line_is_the_one_asked() {
        assert_eq!(typed(&["corralctl", "--socket", "/s", "stop", "w"]), Some("/s".into()));
        assert_eq!(typed(&["corralctl", "stop", "--socket=/s", ""]), Some("/s".into()));
        assert_eq!(typed(&["corralctl", "stop", "w"]), None);
        // Still being typed: no value yet.
        assert_eq!(typed(&["corralctl", "--socket", "/s"]), None);
        assert_eq!(typed(&["corralctl", "--socket=/s"]), None);
    }
}
