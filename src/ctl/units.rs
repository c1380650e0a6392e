//! Figures as corralctl's tables show them, the same in `workers`,
//! `status` and `top`.

use std::time::Duration;

/// A duration in its two largest units ("3d 4h", "5m 12s"): precise enough
/// to tell a fresh restart from a long-lived worker, short enough for a column.
pub fn age(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins, secs) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{mins}m {secs}s"),
        (0, _, _) => format!("{hours}h {mins}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Bytes in binary units with one decimal ("48.1M"), as systemctl shows memory.
pub fn bytes(n: u64) -> String {
    let units = [(1u64 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    match units.iter().find(|(size, _)| n >= *size) {
        Some((size, unit)) => format!("{:.1}{unit}", n as f64 / *size as f64),
        None => format!("{n}B"),
    }
}

/// A share of one CPU ("12.5%").
pub fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_the_tables_show_them() {
        assert_eq!(age(Duration::from_secs(59)), "59s");
        assert_eq!(age(Duration::from_secs(312)), "5m 12s");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 60)), "3h 1m");
        assert_eq!(age(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d 4h");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(50_436_506), "48.1M");
        assert_eq!(percent(12.46), "12.5%");
    }
}
