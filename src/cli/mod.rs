//! The command lines of corrald and corralctl, as clap definitions.
//!
//! They live in the library rather than in the binaries so that one
//! definition serves the programs, their man pages and their shell
//! completions (the corral-docs example renders both): the documentation
//! cannot describe an option the program does not have.

pub mod complete;
pub mod corralctl;
pub mod corrald;
