//! In-memory [`ReportStore`] with TTLs against an injected clock, for unit tests.

use super::{ReportStore, Stored};
use crate::core::clock::Clock;
use crate::core::master_election::live_member;
use crate::core::protocol::{MasterRecord, StoredReport};
use crate::error::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// A map of reports with expiry times, plus the master record.
#[derive(Clone)]
pub struct MemoryStore<C: Clock + Clone> {
    clock: C,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    reports: HashMap<Uuid, (StoredReport, i64)>,
    master: Option<MasterRecord>,
    stats: Vec<(&'static str, u64)>,
    orders: HashMap<Uuid, (i64, u64)>,
}

impl<C: Clock + Clone> MemoryStore<C> {
    pub fn new(clock: C) -> Self {
        MemoryStore {
            clock,
            inner: Arc::default(),
        }
    }
}

impl<C: Clock + Clone> ReportStore for MemoryStore<C> {
    async fn store_reports(&self, reports: &[StoredReport], ttl: Duration) -> Result<Vec<Stored>> {
        let now = self.clock.now_us();
        let expires = now + ttl.as_micros() as i64;
        let mut inner = self.inner.lock().expect("not poisoned");
        let mut out = Vec::with_capacity(reports.len());
        for r in reports {
            let id = r.report.id;
            if inner
                .orders
                .get(&id)
                .is_some_and(|o| *o >= r.report.order())
            {
                out.push(Stored::Replay);
                continue;
            }
            inner.orders.insert(id, r.report.order());
            let live = inner.reports.get(&id).is_some_and(|(_, exp)| *exp > now);
            inner.reports.insert(id, (r.clone(), expires));
            out.push(if live { Stored::Updated } else { Stored::New });
        }
        Ok(out)
    }

    async fn report(&self, id: &Uuid) -> Result<Option<StoredReport>> {
        let now = self.clock.now_us();
        let inner = self.inner.lock().expect("not poisoned");
        Ok(inner
            .reports
            .get(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(r, _)| r.clone()))
    }

    async fn live_reports(&self) -> Result<Vec<StoredReport>> {
        let now = self.clock.now_us();
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.reports.retain(|_, (_, exp)| *exp > now);
        Ok(inner.reports.values().map(|(r, _)| r.clone()).collect())
    }

    async fn live_after(&self, after: Option<&str>, n: usize) -> Result<Vec<StoredReport>> {
        let mut live: Vec<(String, StoredReport)> = self
            .live_reports()
            .await?
            .into_iter()
            .map(|r| (live_member(&r.report.id, &r.report.ip), r))
            .filter(|(m, _)| after.is_none_or(|a| m.as_str() > a))
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(live.into_iter().take(n).map(|(_, r)| r).collect())
    }

    async fn live_count(&self, _ttl: Duration) -> Result<usize> {
        Ok(self.live_reports().await?.len())
    }

    async fn trim_live(&self, _ttl: Duration) -> Result<usize> {
        // Expired reports are never listed here: nothing to trim.
        Ok(0)
    }

    async fn master(&self) -> Result<Option<MasterRecord>> {
        Ok(self.inner.lock().expect("not poisoned").master.clone())
    }

    async fn set_master(&self, master: &MasterRecord) -> Result<bool> {
        let mut inner = self.inner.lock().expect("not poisoned");
        if inner
            .master
            .as_ref()
            .is_some_and(|m| m.epoch > master.epoch)
        {
            return Ok(false);
        }
        inner.master = Some(master.clone());
        Ok(true)
    }

    async fn write_stats(
        &self,
        _server_id: &Uuid,
        stats: &[(&'static str, u64)],
        _ttl: Duration,
    ) -> Result<()> {
        self.inner.lock().expect("not poisoned").stats = stats.to_vec();
        Ok(())
    }
}
