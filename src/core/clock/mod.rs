//! Clocks: the injected source of "now", the client's virtual clock, and its discipline.
//!
//! Every container and process on one host reads the same kernel realtime clock, so a client
//! cannot really own a clock. It owns a [`VirtualClock`] instead: host time plus an offset that
//! drifts and that the client steps or slews. Because the host clock is shared, the *true* error
//! of every client is known exactly (its offset minus the master's), which is what the tests and
//! benchmarks measure.
//!
//! All code that needs "now" takes a [`Clock`], so decision logic can be driven by a
//! [`ManualClock`] in tests.

mod discipline;
pub mod estimator;
mod filter;
mod virtual_clock;

pub use discipline::{
    Action, Discipline, DisciplineConfig, DEFAULT_MAX_SLEW_PPM, DEFAULT_STEP_THRESHOLD_US,
    INITIAL_SYNC_US,
};
pub use estimator::{Estimate, OffsetEstimator, Sample};
pub use filter::{MinDelayFilter, FILTER_WINDOW};
pub use virtual_clock::VirtualClock;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_us(&self) -> i64;
}

/// The host's realtime clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("host clock is after 1970");
        d.as_micros() as i64
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start_us: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start_us)))
    }
    pub fn advance_us(&self, by: i64) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
    pub fn set_us(&self, to: i64) {
        self.0.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Formats µs since epoch as RFC 3339 UTC with microseconds, for people.
pub fn format_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian): days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 time (`2026-11-27T16:04:50Z`, with an optional fraction of up to six
/// digits and a `Z` or `±HH:MM` offset) to µs since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, u32, u32) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (time, offset_s) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
        (t, sign * (oh * 3600 + om * 60))
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (h, mi, sec): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = format!("{frac:0<6}").parse().ok()?;
    let days = days_from_civil(y, m, day);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_us(1_485_069_026_060_000),
            "2017-01-22T07:10:26.060000Z"
        );
        assert_eq!(
            format_us(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(format_us(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn parses_what_it_formats() {
        for us in [
            0,
            1_485_069_026_060_000,
            951_782_400_000_001,
            -1,
            1_796_000_000_123_456,
        ] {
            assert_eq!(parse_rfc3339(&format_us(us)), Some(us), "{}", format_us(us));
        }
        assert_eq!(
            parse_rfc3339("2017-01-22T08:10:26.06+01:00"),
            Some(1_485_069_026_060_000)
        );
        assert_eq!(
            parse_rfc3339("2017-01-22T07:10:26Z"),
            Some(1_485_069_026_000_000)
        );
        for bad in [
            "",
            "2017-01-22",
            "2017-13-01T00:00:00Z",
            "2017-01-22T07:10:26.1234567Z",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(10);
        assert_eq!(c.now_us(), 10);
        c.advance_us(5);
        assert_eq!(c.now_us(), 15);
        c.set_us(1);
        assert_eq!(c.now_us(), 1);
    }
}
