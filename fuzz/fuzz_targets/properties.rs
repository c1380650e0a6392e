//! A resource property, `KEY=VALUE`, as it reaches corrald from a config
//! file or from any client allowed to send `Limit`. A property that parses
//! renders back, as `corralctl` shows it, to text that parses to the same
//! value.
#![no_main]

use libfuzzer_sys::fuzz_target;

use corral::systemd::properties::{self, Value};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (key, value) = text.split_once('=').unwrap_or((&text, ""));
    let Ok(property) = properties::parse(key, value) else { return };
    let shown = properties::render(&property.to_variant());
    match &property.value {
        Value::Bytes(mask) => {
            assert!(!mask.is_empty() && mask.len() <= 1024, "{} bytes", mask.len());
            assert_eq!(properties::parse(key, &shown.replace(' ', ",")), Ok(property.clone()), "{shown:?}");
        }
        Value::U64(_) if key != "CPUQuota" => {
            assert_eq!(properties::parse(key, &shown), Ok(property.clone()), "{shown:?}");
        }
        Value::U64(usec) => assert_eq!(usec % 10_000, 0, "a quota is whole percent"),
    }
});
