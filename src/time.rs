//! Time as usher reads and writes it: wall-clock milliseconds since the Unix epoch (the time base
//! of everything that must survive a restart: customers, funnels, cooldowns, objectives) and RFC 3339
//! for people. A leaf module: it imports nothing of usher's.
//!
//! Monotonic time (`Instant`) stays with the code that measures durations; it is passed in, as is
//! the wall clock, so that the math is testable without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch; 0 if the clock reads before it.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the Unix epoch as RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Milliseconds in `d`, saturating: the unit of every wall-clock sum.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert!(wall_ms() > 1_700_000_000_000);
    }
}
