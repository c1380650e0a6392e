//! corral-docs: writes corral's man pages and shell completions under the
//! directory it is given, for the package to install:
//!
//! ```text
//! OUTDIR/man/corrald.8  OUTDIR/man/corralctl.1  OUTDIR/man/corral.toml.5
//! OUTDIR/completions/corralctl.bash  OUTDIR/completions/_corralctl  OUTDIR/completions/corralctl.fish
//! ```

mod docs;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(outdir), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example corral-docs -- OUTDIR");
        return ExitCode::from(2);
    };
    match docs::write(&PathBuf::from(outdir)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("corral-docs: {err}");
            ExitCode::FAILURE
        }
    }
}
