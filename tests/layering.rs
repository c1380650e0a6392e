//! The rule ARCHITECTURE.md states, checked on the source: data flows one
//! way (command -> audit -> supervisor -> systemd), so the modules at the
//! bottom name nothing above them, audit names neither the socket layer nor
//! the supervisor, the supervisor names neither of them, the fleet (the
//! rules, no I/O) names nothing of the actor that carries them out, and the
//! command lines (`cli`) name nothing of the daemon.

use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Every .rs file under `path` (a file or a directory).
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        let entry = entry.unwrap().path();
        if entry.is_dir() {
            found.extend(sources(&entry));
        } else if entry.extension().is_some_and(|e| e == "rs") {
            found.push(entry);
        }
    }
    found
}

/// Where under `modules` any of `forbidden` is named.
fn naming(modules: &[&str], forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for module in modules {
        // A module is its file, its directory of submodules, or both
        // (`config.rs` and `config/reference.rs`).
        let path = Path::new(SRC).join(module);
        let file = path.with_extension("rs");
        let files: Vec<PathBuf> = [&path, &file].into_iter().filter(|p| p.exists()).flat_map(|p| sources(p)).collect();
        assert!(!files.is_empty(), "no source for {module}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for name in forbidden {
                    if line.contains(name) {
                        found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_bottom_layers_name_nothing_above_them() {
    let bottom = [
        "config", "events", "target", "procfs", "usage", "frame", "sanitise", "files", "journal", "systemd", "worker",
        "ctl",
    ];
    let above = ["crate::command", "crate::audit", "crate::supervisor", "crate::cli"];
    assert_eq!(naming(&bottom, &above), Vec::<String>::new());
}

/// The command lines are the programs' front: they use the client and the
/// config's defaults, and nothing of the daemon's insides.
#[test]
fn the_command_lines_name_nothing_of_the_daemon() {
    let daemon = ["crate::command", "crate::audit", "crate::supervisor", "crate::systemd"];
    assert_eq!(naming(&["cli"], &daemon), Vec::<String>::new());
}

#[test]
fn audit_and_the_supervisor_name_nothing_above_them() {
    assert_eq!(naming(&["audit"], &["crate::command", "crate::supervisor"]), Vec::<String>::new());
    assert_eq!(naming(&["supervisor"], &["crate::command", "crate::audit"]), Vec::<String>::new());
}

#[test]
fn the_fleet_names_nothing_of_the_actor() {
    let actor = [
        "supervisor::actor",
        "supervisor::slots",
        "supervisor::requests",
        "supervisor::reload",
        "supervisor::adopt",
        "supervisor::report",
        "supervisor::process",
        "supervisor::launch",
        "supervisor::orchestrate",
        "supervisor::fanout",
        "super::super",
    ];
    assert_eq!(naming(&["supervisor/fleet"], &actor), Vec::<String>::new());
}
