//! The wall clock, read in one place: the engine is handed time, never reads it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::Nanos;

/// Nanoseconds since the Unix epoch.
pub fn now() -> Nanos {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as Nanos)
}

/// `ns` as UTC in RFC 3339 with nanoseconds, e.g. `2026-11-23T20:30:00.000000001Z`.
pub fn format_nanos(ns: Nanos) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::format_nanos;

    #[test]
    fn formats_utc() {
        assert_eq!(format_nanos(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.5
        assert_eq!(format_nanos(951_827_696_500_000_000), "2000-02-29T12:34:56.500000000Z");
        assert_eq!(format_nanos(1_795_467_600_000_000_001), "2026-11-23T21:00:00.000000001Z");
    }
}
