//! corral: a systemd-native process supervisor.
//!
//! The library holds everything the three binaries share. Requests flow one
//! way: [`command`] (socket, framing) -> [`supervisor`] (spawn, restart,
//! fan-out). [`ctl`] is the client side of the command socket and [`worker`]
//! the worker side of the worker channel; both speak the [`proto`] types over
//! [`frame`]s.

pub mod audit;
pub mod command;
pub mod config;
pub mod ctl;
pub mod files;
pub mod frame;
pub mod journal;
pub mod procfs;
pub mod sanitise;
pub mod supervisor;
pub mod systemd;
pub mod target;
pub mod worker;

/// Types generated from `proto/corral.proto`, the single source of the wire format.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/corral.v1.rs"));
}
