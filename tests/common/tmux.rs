//! A real terminal for the tests of what people see: a tmux server of the
//! test's own (its socket in the test's directory, killed with it), whose
//! screen is read with capture-pane.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{poll_blocking, run_bounded, PATIENCE};

pub struct Tmux {
    server: PathBuf,
}

impl Tmux {
    /// Runs `command` (through sh) in a `width` x `height` window with no
    /// status line, so the program has the whole window.
    pub fn start(dir: &Path, width: u16, height: u16, command: &str) -> Tmux {
        let tmux = Tmux { server: dir.join("tmux.sock") };
        let (width, height) = (width.to_string(), height.to_string());
        tmux.run(&["-f", "/dev/null", "new-session", "-d", "-x", &width, "-y", &height, command]);
        tmux.run(&["set-option", "-g", "status", "off"]);
        tmux
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = run_bounded(Command::new("tmux").arg("-S").arg(&self.server).args(args));
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Presses keys by tmux's names (`Down`, `C-c`, `q`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Types `text` as it is.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-l", text]);
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    /// The screen once `done` holds of it; the failure shows the last one.
    #[track_caller]
    pub fn screen_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        poll_blocking(what, PATIENCE, || {
            let screen = self.screen();
            if done(&screen) {
                Ok(screen)
            } else {
                Err(format!("\n{screen}"))
            }
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.server).arg("kill-server").output();
    }
}
