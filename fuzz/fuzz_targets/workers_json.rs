//! The workers.json a previous corrald left in the state directory, which a
//! new one reads at start to adopt running workers. Whatever is in it, the
//! parser returns workers or an error, and what it returns survives being
//! written back.
#![no_main]

use libfuzzer_sys::fuzz_target;

use corral::supervisor::runtime::{self, Runtime};

fuzz_target!(|data: &[u8]| {
    let Ok(workers) = runtime::parse(data) else { return };
    let saved = serde_json::to_vec(&Runtime { version: 1, workers: workers.clone() }).expect("workers encode");
    let again = runtime::parse(&saved).expect("saved workers parse");
    assert_eq!(serde_json::to_value(&workers).unwrap(), serde_json::to_value(&again).unwrap());
});
