//! corral: a systemd-native process supervisor.
//!
//! The library holds everything the three binaries share. Requests flow one
//! way: [`command`] (socket, framing) -> [`supervisor`] (spawn, restart,
//! fan-out). [`ctl`] is the client side of the command socket and [`worker`]
//! the worker side of the worker channel; both speak the [`proto`] types over
//! [`frame`]s.

pub mod audit;
pub mod cli;
pub mod command;
pub mod config;
pub mod ctl;
pub mod events;
pub mod files;
pub mod frame;
pub mod journal;
pub mod metrics;
pub mod procfs;
pub mod sanitise;
pub mod supervisor;
pub mod systemd;
pub mod target;
pub mod usage;
pub mod worker;

/// Types generated from `proto/corral.proto`, the single source of the wire format.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/corral.v1.rs"));

    /// Both spellings of a failure kind, kept side by side so they name the
    /// same kinds.
    impl FailureKind {
        /// In a sentence, as corrald's messages put it: "web-1 (timed out)".
        pub fn text(self) -> &'static str {
            match self {
                FailureKind::Died => "died",
                FailureKind::TimedOut => "timed out",
                FailureKind::Interrupted => "interrupted",
                FailureKind::Failed | FailureKind::Unspecified => "failed",
            }
        }

        /// As a name, for scripts (`corralctl --json`) and corralctl's list
        /// of failed workers: "timed_out". A kind a newer corrald added
        /// reads as "unspecified" (prost's `kind()` gives `Unspecified`).
        pub fn name(self) -> &'static str {
            match self {
                FailureKind::Died => "died",
                FailureKind::TimedOut => "timed_out",
                FailureKind::Interrupted => "interrupted",
                FailureKind::Failed => "failed",
                FailureKind::Unspecified => "unspecified",
            }
        }
    }
}
