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

/// Parses `key = value` as systemd would read it in a unit file.
pub fn parse(key: &str, value: &str) -> Result<Property, String> {
    let value = value.trim();
    let prop = |dbus_name, value| Ok(Property { dbus_name, value });
    match key {
        "MemoryMax" => prop("MemoryMax", Value::U64(bytes(value)?)),
        "MemoryHigh" => prop("MemoryHigh", Value::U64(bytes(value)?)),
        "TasksMax" => prop("TasksMax", Value::U64(count_or_infinity(value)?)),
        "CPUWeight" => prop("CPUWeight", Value::U64(weight(value)?)),
        "IOWeight" => prop("IOWeight", Value::U64(weight(value)?)),
        "CPUQuota" => prop("CPUQuotaPerSecUSec", Value::U64(quota(value)?)),
        "AllowedCPUs" => prop("AllowedCPUs", Value::Bytes(cpu_set(value)?)),
        _ => Err(format!("unknown resource property {key:?} (known: {})", KEYS.join(", "))),
    }
}

/// Sizes with systemd's suffixes, which are powers of 1024.
pub(crate) fn bytes(text: &str) -> Result<u64, String> {
    if text == "infinity" {
        return Ok(u64::MAX);
    }
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("invalid size {text:?} (e.g. \"512M\", \"2G\", \"infinity\")"))?;
    let shift = match unit {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("invalid size suffix in {text:?} (K, M, G or T)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("size {text:?} is too large"))
}

fn count_or_infinity(text: &str) -> Result<u64, String> {
    if text == "infinity" {
        return Ok(u64::MAX);
    }
    text.parse().map_err(|_| format!("invalid count {text:?} (a number or \"infinity\")"))
}

fn weight(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (1..=10000).contains(&n) => Ok(n),
        _ => Err(format!("invalid weight {text:?} (1 to 10000)")),
    }
}

/// `CPUQuota = "150%"` is 1.5 s of CPU time per second, in microseconds.
fn quota(text: &str) -> Result<u64, String> {
    let pct = text
        .strip_suffix('%')
        .and_then(|p| p.parse::<u64>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid CPU quota {text:?} (a percentage such as \"50%\" or \"200%\")"))?;
    pct.checked_mul(10_000).ok_or_else(|| format!("CPU quota {text:?} is too large"))
}

/// "0-2,5" as a bit mask: bit n of byte n/8 set for each CPU n.
fn cpu_set(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("invalid CPU list {text:?} (e.g. \"0-3,6\")");
    let mut mask: Vec<u8> = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().map_err(|_| bad())?, hi.parse::<usize>().map_err(|_| bad())?),
            None => {
                let n = part.parse::<usize>().map_err(|_| bad())?;
                (n, n)
            }
        };
        if lo > hi || hi >= 8192 {
            return Err(bad());
        }
        for cpu in lo..=hi {
            if mask.len() <= cpu / 8 {
                mask.resize(cpu / 8 + 1, 0);
            }
            mask[cpu / 8] |= 1 << (cpu % 8);
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
            let cpus: Vec<String> = (0..bytes.len() * 8)
                .filter(|cpu| bytes[cpu / 8] & (1 << (cpu % 8)) != 0)
                .map(|c| c.to_string())
                .collect();
            cpus.join(" ")
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_quota_too_large_for_microseconds_is_refused_not_wrapped() {
        // Found by the properties fuzz target: the conversion overflowed,
        // a panic in corrald's loop with overflow checks and a tiny quota
        // without them.
        assert!(parse("CPUQuota", "2012000000000000010%").unwrap_err().contains("too large"));
        assert!(parse("CPUQuota", "18446744073709551615%").unwrap_err().contains("too large"));
        let largest = u64::MAX / 10_000;
        assert_eq!(parse("CPUQuota", &format!("{largest}%")).unwrap().value, Value::U64(largest * 10_000));
    }
}
