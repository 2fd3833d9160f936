//! A replica's counters: one list, from which every view is generated.
//!
//! [`Counter`] names every counter once, with its Prometheus name, labels and help text. The
//! same list feeds the `ts:stats:<server_id>` hash in Redis (written at every heartbeat, read by
//! `tsc status` and tests), the HTTP API's `GET /metrics` ([`Metrics::exposition`]) and the
//! process's closing log line, so a counter cannot be counted without being exported. Counters
//! live in atomics: workers must not contend on a lock per message.

use crate::core::protocol::DecodeError;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($variant:ident => $key:literal, $metric:literal, $labels:literal, $help:literal;)*) => {
        /// Every counter a replica keeps, monotonic since it started.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            /// Every counter, in the order they are shown.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// Its field in the Redis stats hash and in `tsc status --json`.
            pub fn key(self) -> &'static str {
                match self { $(Counter::$variant => $key,)* }
            }

            /// Its Prometheus metric name.
            pub fn metric(self) -> &'static str {
                match self { $(Counter::$variant => $metric,)* }
            }

            /// Its Prometheus labels (`{reason="malformed"}`), or empty.
            pub fn labels(self) -> &'static str {
                match self { $(Counter::$variant => $labels,)* }
            }

            /// What it counts (the metric's HELP line).
            pub fn help(self) -> &'static str {
                match self { $(Counter::$variant => $help,)* }
            }
        }
    };
}

counters! {
    ReportsStored => "reports_stored", "ts_reports_stored_total", "",
        "Reports stored in Redis by this replica.";
    RejectedMalformed => "rejected_malformed", "ts_rejected_messages_total", "{reason=\"malformed\"}",
        "Messages rejected by this replica, by reason.";
    RejectedTooLarge => "rejected_too_large", "ts_rejected_messages_total", "{reason=\"too_large\"}",
        "Messages rejected by this replica, by reason.";
    RejectedBadVersion => "rejected_bad_version", "ts_rejected_messages_total", "{reason=\"bad_version\"}",
        "Messages rejected by this replica, by reason.";
    RejectedUnsigned => "rejected_unsigned", "ts_rejected_messages_total", "{reason=\"unsigned\"}",
        "Messages rejected by this replica, by reason.";
    RejectedUnknownKey => "rejected_unknown_key", "ts_rejected_messages_total", "{reason=\"unknown_key\"}",
        "Messages rejected by this replica, by reason.";
    RejectedBadSignature => "rejected_bad_signature", "ts_rejected_messages_total", "{reason=\"bad_signature\"}",
        "Messages rejected by this replica, by reason.";
    RejectedReplay => "rejected_replay", "ts_rejected_messages_total", "{reason=\"replay\"}",
        "Messages rejected by this replica, by reason.";
    RejectedBadReplyTo => "rejected_bad_reply_to", "ts_rejected_messages_total", "{reason=\"bad_reply_to\"}",
        "Messages rejected by this replica, by reason.";
    StoreErrors => "store_errors", "ts_store_errors_total", "",
        "Failed Redis writes.";
    UpdatesPublished => "updates_published", "ts_updates_published_total", "",
        "Master updates broadcast by this replica.";
    MasterChanges => "master_changes", "ts_master_changes_total", "",
        "Master elections made by this replica while leading.";
    ProbesAnswered => "probes_answered", "ts_probes_answered_total", "",
        "Offset probes answered by this replica.";
    BerkeleyRounds => "berkeley_rounds", "ts_berkeley_rounds_total", "",
        "Berkeley rounds this replica closed with an average.";
    Elections => "elections", "ts_elections_total", "",
        "Leader elections this replica started.";
    TermsLed => "terms_led", "ts_terms_led_total", "",
        "Leader terms this replica won.";
    ControlRejected => "control_rejected", "ts_control_rejected_total", "",
        "Control messages rejected (also counted in ts_rejected_messages_total).";
    HlcRefused => "hlc_refused", "ts_hlc_refused_total", "",
        "Remote hybrid logical timestamps refused for being too far ahead.";
    EventsWritten => "events_written", "ts_events_written_total", "",
        "Events this replica added to the cluster's event log.";
    OperatorCommands => "operator_commands", "ts_operator_commands_total", "",
        "Operator commands this replica carried out.";
    Unauthorized => "unauthorized", "ts_unauthorized_requests_total", "",
        "HTTP requests refused for a missing or wrong operator token.";
}

/// A replica's counters, plus the one measured rate.
#[derive(Debug)]
pub struct Metrics {
    counters: Vec<AtomicU64>,
    /// Reports stored per second over the last heartbeat interval (`f64` bits).
    rate_bits: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counters: Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            rate_bits: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    fn cell(&self, c: Counter) -> &AtomicU64 {
        &self.counters[c as usize]
    }

    /// Adds one.
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    pub fn add(&self, c: Counter, n: u64) {
        self.cell(c).fetch_add(n, Relaxed);
    }

    /// Sets a counter that is computed elsewhere (elections, counted by the state machine).
    pub fn set(&self, c: Counter, n: u64) {
        self.cell(c).store(n, Relaxed);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.cell(c).load(Relaxed)
    }

    /// The counter of one reason for rejecting a message.
    pub fn rejection(e: &DecodeError) -> Counter {
        match e {
            DecodeError::TooLarge(_) => Counter::RejectedTooLarge,
            DecodeError::Version(_) => Counter::RejectedBadVersion,
            DecodeError::Unsigned(_) => Counter::RejectedUnsigned,
            DecodeError::UnknownKey(_) => Counter::RejectedUnknownKey,
            DecodeError::BadSignature => Counter::RejectedBadSignature,
            DecodeError::Replay(_) => Counter::RejectedReplay,
            DecodeError::BadReplyTo(_) => Counter::RejectedBadReplyTo,
            _ => Counter::RejectedMalformed,
        }
    }

    /// Counts one rejected message under its reason.
    pub fn rejected(&self, e: &DecodeError) {
        self.inc(Self::rejection(e));
    }

    /// All rejected messages, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.metric() == "ts_rejected_messages_total")
            .map(|c| self.get(*c))
            .sum()
    }

    /// Records the storage rate measured over the last interval.
    pub fn set_reports_per_second(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Relaxed);
    }

    /// The storage rate last recorded.
    pub fn reports_per_second(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Relaxed))
    }

    /// `(key, value)` of every counter plus `rejected_total`: the Redis stats hash.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> = Counter::ALL
            .iter()
            .map(|c| (c.key(), self.get(*c)))
            .collect();
        v.push(("rejected_total", self.rejected_total()));
        v
    }

    /// Prometheus text exposition of every counter, the storage rate, and `gauges` (name, help,
    /// value) that the caller measures (live clients, epoch, leadership).
    pub fn exposition(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let mut described: Vec<&str> = Vec::new();
        for c in Counter::ALL {
            if !described.contains(&c.metric()) {
                described.push(c.metric());
                let _ = writeln!(
                    out,
                    "# HELP {m} {}\n# TYPE {m} counter",
                    c.help(),
                    m = c.metric()
                );
                for same in Counter::ALL.iter().filter(|x| x.metric() == c.metric()) {
                    let _ = writeln!(
                        out,
                        "{}{} {}",
                        same.metric(),
                        same.labels(),
                        self.get(*same)
                    );
                }
            }
        }
        let rate = (
            "ts_reports_per_second",
            "Reports stored per second by this replica, over the last heartbeat interval.",
            self.reports_per_second(),
        );
        for (name, help, value) in std::iter::once(&rate).chain(gauges) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_counted_by_reason() {
        let m = Metrics::default();
        m.rejected(&DecodeError::TooLarge(9000));
        m.rejected(&DecodeError::Malformed("x".into()));
        m.rejected(&DecodeError::Malformed("y".into()));
        assert_eq!(m.rejected_total(), 3);
        let snap: std::collections::HashMap<_, _> = m.snapshot().into_iter().collect();
        assert_eq!(snap["rejected_malformed"], 2);
        assert_eq!(snap["rejected_too_large"], 1);
        assert_eq!(snap["rejected_bad_version"], 0);
        assert_eq!(snap["rejected_total"], 3);
    }

    /// Every counter reaches the stats hash and `/metrics`, each under a distinct sample.
    #[test]
    fn every_counter_is_exported() {
        let m = Metrics::default();
        for (i, c) in Counter::ALL.iter().enumerate() {
            m.add(*c, 1000 + i as u64);
        }
        let text = m.exposition(&[("ts_epoch", "Leader epoch.", 7.0)]);
        let snap: std::collections::HashMap<_, _> = m.snapshot().into_iter().collect();
        for (i, c) in Counter::ALL.iter().enumerate() {
            let sample = format!("\n{}{} {}\n", c.metric(), c.labels(), 1000 + i);
            assert!(
                text.contains(&sample),
                "{c:?} missing from /metrics:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {} counter", c.metric())),
                "{c:?}"
            );
            assert_eq!(
                snap[c.key()],
                1000 + i as u64,
                "{c:?} missing from the stats hash"
            );
        }
        let keys: std::collections::HashSet<_> = Counter::ALL.iter().map(|c| c.key()).collect();
        assert_eq!(keys.len(), Counter::ALL.len(), "keys are distinct");
        assert!(text.contains("\nts_epoch 7\n"), "{text}");
        assert!(
            text.contains("# TYPE ts_reports_per_second gauge"),
            "{text}"
        );
        assert_eq!(
            text.matches("# HELP ts_rejected_messages_total").count(),
            1,
            "one HELP per metric name"
        );
    }
}
