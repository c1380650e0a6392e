//! Resource properties as operators write them (`MemoryMax = "512M"`,
//! `CPUQuota = "50%"`) converted to the names and D-Bus types systemd's
//! `StartTransientUnit` and `SetUnitProperties` expect, and back again for
//! reports.

use zbus::{OwnedVariant, Variant};

/// One property, ready for D-Bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// The name on the wire (`CPUQuotaPerSecUSec` for `CPUQuota`).
    pub dbus_name: &'static str,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    U64(u64),
    /// A CPU set as systemd's little-endian bit mask.
    Bytes(Vec<u8>),
}

impl Property {
    pub fn to_variant(&self) -> OwnedVariant {
        match &self.value {
            Value::U64(v) => OwnedVariant::from(*v),
            Value::Bytes(b) => {
                OwnedVariant::try_from(Variant::from(b.clone())).expect("a byte array is a valid variant")
            }
        }
    }
}

/// The keys corral accepts, as systemd names them in unit files.
pub const KEYS: &[&str] = &["MemoryMax", "MemoryHigh", "CPUWeight", "CPUQuota", "TasksMax", "IOWeight", "AllowedCPUs"];

/// The longest value accepted: far more than any real value needs, and it
/// bounds the work a CPU list from a client can cause.
pub const MAX_VALUE_LEN: usize = 4096;

/// The highest CPU number `AllowedCPUs` accepts (systemd's CPU sets are
/// sized for 8192 CPUs).
pub const MAX_CPU: usize = 8191;

/// The largest `CPUQuota`: 10000 CPUs' worth, far beyond any host, and
/// 10^10 microseconds per second still fits comfortably in systemd's u64.
pub const MAX_CPU_QUOTA_PERCENT: u64 = 1_000_000;

/// Parses `key = value` as systemd would read it in a unit file.
pub fn parse(key: &str, value: &str) -> Result<Property, String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!("the value of {key:?} is {} bytes long (at most {MAX_VALUE_LEN})", value.len()));
    }
    let value = value.trim();
    let prop = |dbus_name, value| Ok(Property { dbus_name, value });
    match key {
        "MemoryMax" => prop("MemoryMax", Value::U64(bytes(value)?)),
        "MemoryHigh" => prop("MemoryHigh", Value::U64(bytes(value)?)),
        "TasksMax" => prop("TasksMax", Value::U64(tasks(value)?)),
        "CPUWeight" => prop("CPUWeight", Value::U64(weight(value)?)),
        "IOWeight" => prop("IOWeight", Value::U64(weight(value)?)),
        "CPUQuota" => prop("CPUQuotaPerSecUSec", Value::U64(quota(value)?)),
        "AllowedCPUs" => prop("AllowedCPUs", Value::Bytes(cpu_set(value)?)),
        _ => Err(format!("unknown resource property {key:?} (known: {})", KEYS.join(", "))),
    }
}

/// A plain decimal number: only ASCII digits, because `u64::from_str` would
/// also take a sign.
fn number(text: &str) -> Option<Result<u64, ()>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().map_err(|_| ()))
}

/// Sizes as systemd writes them (`512`, `64K`, `1.5G`, `64 M`: suffixes B,
/// K, M, G, T, P, E, each a power of 1024), and as operators also write
/// them: in lower case and as `KiB` or `KB`, which count in powers of 1024
/// too, as every size in systemd does. "infinity" is u64::MAX. A fraction
/// needs a suffix: there is no half a byte.
pub(crate) fn bytes(text: &str) -> Result<u64, String> {
    if text == "infinity" {
        return Ok(u64::MAX);
    }
    let invalid = || format!("invalid size {text:?} (e.g. \"512M\", \"64k\", \"1.5G\", \"infinity\")");
    let too_large = || format!("size {text:?} is too large (at most 16E, or \"infinity\")");
    let end = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let shift = match unit.trim_start_matches(' ').to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        "E" | "EB" | "EIB" => 60,
        _ => return Err(format!("invalid size suffix in {text:?} (B, K, M, G, T, P or E, any case, or KiB ...)")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(invalid());
    }
    if number.contains('.') && (shift == 0 || fraction.is_empty()) {
        return Err(invalid());
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
    // Past 19 digits a fraction adds nothing a u64 can hold.
    let fraction = &fraction[..fraction.len().min(19)];
    let part: u128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| invalid())? };
    let scale = 10u128.pow(fraction.len() as u32);
    let total =
        whole.checked_shl(shift).filter(|t| t >> shift == whole).ok_or_else(too_large)? + (part << shift) / scale;
    u64::try_from(total).map_err(|_| too_large())
}

/// systemd refuses a TasksMax of 0, and u64::MAX is how it spells
/// "infinity", so only the word means that.
fn tasks(text: &str) -> Result<u64, String> {
    if text == "infinity" {
        return Ok(u64::MAX);
    }
    match number(text) {
        Some(Ok(n)) if n > 0 && n < u64::MAX => Ok(n),
        _ => Err(format!("invalid count {text:?} (1 to {} or \"infinity\")", u64::MAX - 1)),
    }
}

fn weight(text: &str) -> Result<u64, String> {
    match number(text) {
        Some(Ok(n)) if (1..=10000).contains(&n) => Ok(n),
        _ => Err(format!("invalid weight {text:?} (1 to 10000)")),
    }
}

/// `CPUQuota = "150%"` is 1.5 s of CPU time per second, in microseconds.
fn quota(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid CPU quota {text:?} (a whole percentage from 1% to {MAX_CPU_QUOTA_PERCENT}%, such as \"50%\")")
    };
    match text.strip_suffix('%').and_then(number) {
        Some(Ok(pct)) if (1..=MAX_CPU_QUOTA_PERCENT).contains(&pct) => pct.checked_mul(10_000).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// "0-2,5" as a bit mask: bit n of byte n/8 set for each CPU n.
fn cpu_set(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("invalid CPU list {text:?} (CPU numbers 0 to {MAX_CPU}, e.g. \"0-3,6\")");
    let cpu = |t: &str| match number(t) {
        Some(Ok(n)) if n <= MAX_CPU as u64 => Ok(n as usize),
        _ => Err(bad()),
    };
    let mut mask: Vec<u8> = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (cpu(lo)?, cpu(hi)?),
            None => (cpu(part)?, cpu(part)?),
        };
        if lo > hi {
            return Err(bad());
        }
        if mask.len() <= hi / 8 {
            mask.resize(hi / 8 + 1, 0);
        }
        for n in lo..=hi {
            mask[n / 8] |= 1 << (n % 8);
        }
    }
    if mask.is_empty() {
        return Err(bad());
    }
    Ok(mask)
}

/// Renders a value read back from systemd the way `systemctl show` does.
pub fn render(value: &OwnedVariant) -> String {
    match &**value {
        Variant::U64(u64::MAX) => "infinity".into(),
        Variant::U64(v) => v.to_string(),
        Variant::Array(a) => {
            let bytes: Vec<u8> =
                a.iter().filter_map(|v| if let Variant::U8(b) = v { Some(*b) } else { None }).collect();
            cpu_ranges(&bytes)
        }
        other => format!("{other:?}"),
    }
}

/// A CPU mask as systemctl shows it, in runs: "0-3 6". A list of every CPU
/// would grow with the mask (8192 CPUs: 40 KB) and no longer parse back
/// under the value length limit.
fn cpu_ranges(mask: &[u8]) -> String {
    let set = |cpu: usize| mask[cpu / 8] & (1 << (cpu % 8)) != 0;
    let mut runs = Vec::new();
    let mut cpu = 0;
    while cpu < mask.len() * 8 {
        if !set(cpu) {
            cpu += 1;
            continue;
        }
        let start = cpu;
        while cpu + 1 < mask.len() * 8 && set(cpu + 1) {
            cpu += 1;
        }
        runs.push(if start == cpu { start.to_string() } else { format!("{start}-{cpu}") });
        cpu += 1;
    }
    runs.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_render_as_runs_that_parse_back() {
        // A mask of 2..=2616 once rendered as 2615 numbers, too long to
        // parse back: found by the properties fuzz target.
        let p = parse("AllowedCPUs", "2-2616").unwrap();
        let shown = render(&p.to_variant());
        assert_eq!(shown, "2-2616");
        assert_eq!(parse("AllowedCPUs", &shown), Ok(p));
        let p = parse("AllowedCPUs", "0,2-3,7,8191").unwrap();
        assert_eq!(render(&p.to_variant()), "0 2-3 7 8191");
    }

    #[test]
    fn conversions_match_systemd() {
        assert_eq!(parse("MemoryMax", "64M").unwrap().value, Value::U64(67108864));
        assert_eq!(parse("MemoryHigh", "infinity").unwrap().value, Value::U64(u64::MAX));
        let q = parse("CPUQuota", "50%").unwrap();
        assert_eq!((q.dbus_name, q.value), ("CPUQuotaPerSecUSec", Value::U64(500_000)));
        assert_eq!(parse("AllowedCPUs", "0-2,9").unwrap().value, Value::Bytes(vec![0b111, 0b10]));
        assert_eq!(parse("TasksMax", "32").unwrap().value, Value::U64(32));
        assert!(parse("CPUWeight", "0").is_err());
        assert!(parse("MemoryMax", "12X").unwrap_err().contains("suffix"));
        assert!(parse("MemoryMaxx", "1").unwrap_err().contains("unknown resource property"));
    }

    fn u64_of(key: &str, value: &str) -> Result<u64, String> {
        parse(key, value).map(|p| match p.value {
            Value::U64(v) => v,
            Value::Bytes(_) => panic!("{key} is not a number"),
        })
    }

    #[test]
    fn sizes_take_every_systemd_suffix_and_never_wrap() {
        assert_eq!(u64_of("MemoryMax", "7B"), Ok(7));
        assert_eq!(u64_of("MemoryMax", "3P"), Ok(3 << 50));
        assert_eq!(u64_of("MemoryMax", "15E"), Ok(15 << 60));
        assert_eq!(u64_of("MemoryMax", " 1G "), Ok(1 << 30));
        assert_eq!(u64_of("MemoryMax", &u64::MAX.to_string()), Ok(u64::MAX));
        for too_large in ["16E", "16384P", "18446744073709551616", "99999999999999999999999K"] {
            assert!(u64_of("MemoryMax", too_large).unwrap_err().contains("too large"), "{too_large}");
        }
        for junk in ["", "M", "+5M", "-5M", "5M ", "1.5", "1.G", ".G", "1..5G", "0x10", "5M5", "５M", "5 MM", "5Ki"] {
            assert!(bytes(junk).is_err(), "{junk:?} accepted");
        }
    }

    /// systemd's own spellings, and the ones operators write besides.
    #[test]
    fn sizes_take_lower_case_and_kib_spellings_in_powers_of_1024() {
        for (text, expected) in [
            ("64k", 64 << 10),
            ("64K", 64 << 10),
            ("64KiB", 64 << 10),
            ("64kib", 64 << 10),
            ("64KB", 64 << 10),
            ("64 K", 64 << 10),
            ("5m", 5 << 20),
            ("5MiB", 5 << 20),
            ("1.5G", 3 << 29),
            ("0.5M", 1 << 19),
            (".5M", 1 << 19),
            ("2t", 2 << 40),
            ("512", 512),
            ("512b", 512),
        ] {
            assert_eq!(bytes(text), Ok(expected), "{text}");
        }
        assert!(bytes("16.0E").unwrap_err().contains("too large"));
    }

    #[test]
    fn quota_is_bounded_before_it_is_scaled() {
        assert_eq!(u64_of("CPUQuota", "1%"), Ok(10_000));
        assert_eq!(u64_of("CPUQuota", "1000000%"), Ok(10_000_000_000));
        // 2012000000000000010% overflowed the conversion: found by the
        // properties fuzz target.
        for bad in [
            "0%",
            "1000001%",
            "1844674407370956%",
            "2012000000000000010%",
            "18446744073709551615%",
            "+50%",
            "50",
            "%",
            "1.5%",
            "50 %",
        ] {
            assert!(u64_of("CPUQuota", bad).unwrap_err().contains("1% to 1000000%"), "{bad:?}");
        }
    }

    #[test]
    fn counts_and_weights_take_plain_numbers_only() {
        assert_eq!(u64_of("TasksMax", "infinity"), Ok(u64::MAX));
        assert_eq!(u64_of("TasksMax", "1"), Ok(1));
        for bad in ["0", "+32", "-1", "18446744073709551615", "18446744073709551616", "", "32 "] {
            assert!(tasks(bad).is_err(), "{bad:?}");
        }
        assert_eq!(u64_of("IOWeight", "10000"), Ok(10000));
        for bad in ["0", "10001", "+100", "100000000000000000000", ""] {
            assert!(u64_of("CPUWeight", bad).unwrap_err().contains("1 to 10000"), "{bad:?}");
        }
    }

    #[test]
    fn cpu_lists_are_bounded_without_allocating_first() {
        let mask = |v: &str| match parse("AllowedCPUs", v).map(|p| p.value) {
            Ok(Value::Bytes(b)) => Ok(b),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(mask("8191").unwrap().len(), 1024);
        assert_eq!(mask("0 2").unwrap(), vec![0b101]);
        for bad in
            ["8192", "0-99999999999", "0-99999999999999999999999", "3-1", "+1", "-1", "1-", "-", "", ",", "1-2-3"]
        {
            assert!(mask(bad).unwrap_err().contains("0 to 8191"), "{bad:?}");
        }
        let long = "0-8191,".repeat(MAX_VALUE_LEN / 7 + 1);
        assert!(mask(&long).unwrap_err().contains("at most 4096"));
    }
}
