//! A saved state file, as `corralctl load-state PATH` makes corrald (root)
//! read it: the path is the client's choice, so the content may be anything.
//! A file that parses must say what it meant: saving it again and parsing
//! that gives the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;

use corral::supervisor::state;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = state::parse(data) else { return };
    assert_eq!(parsed.version, state::STATE_VERSION);
    let saved = serde_json::to_vec(&parsed).expect("a parsed state encodes");
    let again = state::parse(&saved).expect("a saved state parses");
    assert_eq!(serde_json::to_value(&parsed).unwrap(), serde_json::to_value(&again).unwrap());
});
