//! The workers.json a previous corrald left in the state directory, which a
//! new one reads at start to adopt running workers. Whatever is in it, the
//! parser returns workers (and the fleet's shape) or an error, and what it
//! returns survives being written back.
#![no_main]

use libfuzzer_sys::fuzz_target;

use corral::supervisor::runtime::{self, Runtime};

fuzz_target!(|data: &[u8]| {
    let Ok(runtime) = runtime::parse(data) else { return };
    let saved = serde_json::to_vec(&runtime).expect("a runtime file encodes");
    let again: Runtime = runtime::parse(&saved).expect("a saved runtime file parses");
    assert_eq!(serde_json::to_value(&runtime).unwrap(), serde_json::to_value(&again).unwrap());
});
