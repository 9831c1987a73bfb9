//! The units users write limits in, both ways: `7d`, `12h`, `100GiB` parsed
//! from flags, and durations and sizes shown back the same way (`7d`,
//! `100 GiB`), so what `stream update` answers reads like what was typed;
//! and points in time, shown in UTC (`2026-12-01 10:31:47.123Z`).
//!
//! Owns the unit tables; a command must never format a duration or a byte
//! count for a user by hand.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Duration units, largest first: (suffix, milliseconds).
const TIME_UNITS: [(&str, u64); 4] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
];

/// Size units, largest first: (suffix, bytes).
const SIZE_UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Above this many of a unit, an exact value also gets an approximation in
/// the largest unit (`90061s (~1.0d)`), so long numbers stay readable.
const APPROX_ABOVE: u64 = 1000;

/// Splits `7d` / `100 GiB` into its number and unit.
fn split_number(s: &str) -> (&str, &str) {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(at);
    (num, unit.trim_start())
}

/// `7d`, `12h`, `30m`, `45s` (or `0`) to milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration: use a number with s, m, h or d, e.g. 7d");
    let (num, unit) = split_number(s);
    let n: u64 = num.parse().map_err(|_| bad())?;
    if n == 0 && unit.is_empty() {
        return Ok(0);
    }
    let (_, ms) = TIME_UNITS
        .iter()
        .find(|(suffix, _)| *suffix == unit)
        .ok_or_else(bad)?;
    n.checked_mul(*ms)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// `100GiB`, `512 MiB`, `4096` (bytes) to bytes.
pub fn parse_size_bytes(s: &str) -> Result<u64, String> {
    let bad =
        || format!("{s:?} is not a size: use a number with B, KiB, MiB, GiB or TiB, e.g. 100GiB");
    let (num, unit) = split_number(s);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = if unit.is_empty() { "B" } else { unit };
    let (_, bytes) = SIZE_UNITS
        .iter()
        .find(|(suffix, _)| *suffix == unit)
        .ok_or_else(bad)?;
    n.checked_mul(*bytes)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Shows `value` exactly, in the largest unit of `units` that divides it
/// (`604800000` ms as `7d`); a long exact number also gets its size in the
/// largest unit that fits, rounded (`~1.0d`). `sep` goes between number and
/// unit. `units` ends with the unit of `value` itself.
fn format_in(value: u64, units: &[(&str, u64)], sep: &str) -> String {
    let Some(&(smallest, _)) = units.last() else {
        return value.to_string();
    };
    let (suffix, per) = units
        .iter()
        .find(|(_, per)| value.is_multiple_of(*per))
        .copied()
        .unwrap_or((smallest, 1));
    let exact = format!("{}{sep}{suffix}", value / per);
    let largest = units.iter().find(|(_, p)| value >= *p);
    match largest {
        Some(&(big, big_per)) if value / per >= APPROX_ABOVE && big_per > per => {
            // Display only: the float's rounding does not matter.
            let approx = value as f64 / big_per as f64;
            format!("{exact} (~{approx:.1}{sep}{big})")
        }
        _ => exact,
    }
}

/// A duration as a user writes it: `7d`, `90s`, `1h`; below a second,
/// `1500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_string();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    format_in(ms, &TIME_UNITS, "")
}

/// A byte count as a user writes it: `100 GiB`, `512 KiB`, `1000 B`.
pub fn format_bytes(bytes: u64) -> String {
    format_in(bytes, &SIZE_UNITS, " ")
}

/// A point in time in UTC, to the millisecond: `2026-12-01 10:31:47.123Z`
/// (before 1970: the Unix epoch).
pub fn format_utc(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, for
    // days >= 0).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (h, m, sec, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{sec:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_utc() {
        let at = |ms| format_utc(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29 00:00:00.000Z");
        assert_eq!(at(1_700_000_000_123), "2023-11-14 22:13:20.123Z");
        assert_eq!(at(1_767_225_599_999), "2025-12-31 23:59:59.999Z");
    }

    #[test]
    fn parses_retention_durations_and_sizes() {
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("7 days").is_err());
        assert!(parse_duration_ms("7").is_err());
        assert!(parse_duration_ms("99999999999999999d").is_err());
        assert_eq!(parse_size_bytes("100GiB"), Ok(100 << 30));
        assert_eq!(parse_size_bytes("100 GiB"), Ok(100 << 30));
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert!(parse_size_bytes("1PB").is_err());
        assert!(parse_size_bytes("GiB").is_err());
    }

    #[test]
    fn durations_show_as_written() {
        let s = Duration::from_secs;
        assert_eq!(format_duration(s(604_800)), "7d");
        assert_eq!(format_duration(s(90)), "90s");
        assert_eq!(format_duration(s(3600)), "1h");
        assert_eq!(format_duration(s(36 * 3600)), "36h");
        assert_eq!(format_duration(s(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        // Not round in any unit: exact, and roughly in days.
        assert_eq!(format_duration(s(90_061)), "90061s (~1.0d)");
    }

    #[test]
    fn sizes_show_as_written() {
        assert_eq!(format_bytes(107_374_182_400), "100 GiB");
        assert_eq!(format_bytes(128 * 1024), "128 KiB");
        assert_eq!(format_bytes(1 << 40), "1 TiB");
        assert_eq!(format_bytes(1000), "1000 B");
        assert_eq!(format_bytes(1536 << 20), "1536 MiB (~1.5 GiB)");
        assert_eq!(format_bytes(123_456_789), "123456789 B (~117.7 MiB)");
    }

    #[test]
    fn what_is_shown_parses_back() {
        for bytes in [107_374_182_400, 128 * 1024, 1000, 1536 << 20] {
            let shown = format_bytes(bytes);
            let exact = shown.split(" (").next().unwrap();
            assert_eq!(parse_size_bytes(exact), Ok(bytes), "{shown}");
        }
        for secs in [604_800, 90, 3600, 90_061] {
            let shown = format_duration(Duration::from_secs(secs));
            let exact = shown.split(" (").next().unwrap();
            assert_eq!(parse_duration_ms(exact), Ok(secs * 1000), "{shown}");
        }
    }
}
