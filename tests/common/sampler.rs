//! A sampler of a running cluster's reports: every 100 ms, the largest true error of any synced
//! client to the master, the largest step any client reports, and whether every client is in
//! sync with the leader. The fault suites measure "largest error during a fault" with it.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time_sync::cache::{RedisStore, ReportStore};
use time_sync::core::clock::{Clock, SystemClock};
use time_sync::core::protocol::ReplicaRole;

/// The limit on any client's error, during and after any fault.
pub const MAX_ERROR_US: i64 = 1000;
/// A report older than this is not evidence of anything now (two intervals, plus transit).
pub const FRESH_US: i64 = 2_200_000;

/// What the sampler saw at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// Largest |true error| to the master among fresh reports (none: no fresh master report).
    pub max_err_us: Option<i64>,
    /// That error and whose it is.
    pub worst: Option<(i64, String)>,
    /// Largest `max_step_us` any client reports (steps after its first sync).
    pub max_step_us: i64,
    /// Every client reports freshly, follows the master, and is within the bound.
    pub in_sync: bool,
    pub master_ip: Option<String>,
    /// When the newest report was stored (µs, wall clock).
    pub newest_us: i64,
}

/// Reads the cluster's reports every 100 ms, until dropped.
pub struct Sampler {
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub bound_us: Arc<AtomicI64>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(store: RedisStore, clients: usize) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let bound_us = Arc::new(AtomicI64::new(MAX_ERROR_US));
        let (s, b) = (samples.clone(), bound_us.clone());
        let task = tokio::spawn(async move {
            loop {
                let sample = look(&store, clients, b.load(Relaxed)).await;
                s.lock().unwrap().push(sample);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Sampler {
            samples,
            bound_us,
            task,
        }
    }

    pub fn since(&self, t: Instant) -> Vec<Sample> {
        let all = self.samples.lock().unwrap();
        all.iter().filter(|s| s.at >= t).cloned().collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn look(store: &RedisStore, clients: usize, bound_us: i64) -> Sample {
    let at = Instant::now();
    let now = SystemClock.now_us();
    let (reports, master, replicas) =
        tokio::join!(store.live_reports(), store.master(), store.replicas());
    let (reports, master) = (reports.unwrap_or_default(), master.ok().flatten());
    let leading = replicas
        .unwrap_or_default()
        .iter()
        .filter(|r| r.role == ReplicaRole::Leader)
        .map(|r| r.epoch)
        .max();
    let max_step_us = reports
        .iter()
        .filter_map(|r| r.report.max_step_us)
        .max()
        .unwrap_or(0);
    let fresh: Vec<_> = reports
        .iter()
        .filter(|r| now - r.received_at_us <= FRESH_US)
        .collect();
    let master_report = master
        .as_ref()
        .and_then(|m| fresh.iter().find(|r| r.report.id == m.id));
    // Clients that follow the master and are synced (a report has `max_step_us` only then; the
    // master counts as it is the reference). A client that just started is still converging:
    // its error is not a fault's, but it is not back in sync either.
    let errors: Vec<(i64, String)> = match master_report {
        Some(m) => fresh
            .iter()
            .filter(|r| {
                r.report.id == m.report.id
                    || (r.report.master_id == Some(m.report.id) && r.report.max_step_us.is_some())
            })
            .filter_map(|r| {
                let e = r.report.true_offset_us? - m.report.true_offset_us?;
                Some((e.abs(), r.report.ip.to_string()))
            })
            .collect(),
        None => vec![],
    };
    let worst = errors.iter().max().cloned();
    let max_err_us = worst.as_ref().map(|w| w.0);
    // Following the leader: a client that refuses its epoch holds over and looks in sync.
    let follow_leader = leading.is_some() && fresh.iter().all(|r| r.report.epoch == leading);
    let in_sync = fresh.len() == clients
        && follow_leader
        && errors.len() == clients
        && max_err_us.is_some_and(|e| e <= bound_us);
    Sample {
        at,
        worst,
        max_err_us,
        max_step_us,
        in_sync,
        master_ip: master.map(|m| m.ip.to_string()),
        newest_us: reports.iter().map(|r| r.received_at_us).max().unwrap_or(0),
    }
}
