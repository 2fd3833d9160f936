//! A report worker: consume from the reports queue, validate, store in batches, acknowledge.
//!
//! Throughput comes from batching, not from more tasks: a worker takes the first delivery, then
//! everything that arrives within [`BATCH_LINGER`] (up to the prefetch), writes the valid
//! reports to Redis in one pipelined round trip and acknowledges them with one `multiple` ack.
//! Invalid messages are rejected without requeue (requeueing garbage would loop forever),
//! counted, and logged with a rate limit so a flood cannot fill the disk. If Redis fails, the
//! batch is requeued and the worker pauses briefly: nothing valid is lost.
//!
//! A report counts only if it is sealed with the key of the client it says it is from, and if
//! it is later than every report of that client stored before (Redis refuses replays
//! atomically, [`ReportStore::store_reports`]). A client's first stored report, and the events
//! a report carries, go to the cluster's event log.

use super::context::{EventData, ServerContext};
use super::metrics::Counter;
use crate::broker;
use crate::cache::{ReportStore, Stored};
use crate::core::clock::Clock;
use crate::core::protocol::{DecodeError, EventKind, StoredReport, TimeReport, REPORTS_QUEUE};
use crate::error::{Error, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use std::time::Duration;
use tracing::{info, warn};

/// Pause after a failed Redis write before consuming again.
pub const STORE_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long a worker waits for more deliveries after the first before it stores the batch.
/// Thousands of clients report one at a time, spread over the second: without it each report
/// is a batch of one, and the wake-ups and round trips per report (lapin's I/O thread, the
/// worker, Redis, the ack) cost more than the work. A report is stamped when it is delivered,
/// so the wait changes no figure; under a backlog the batch fills at once and nothing waits.
pub const BATCH_LINGER: Duration = Duration::from_millis(5);
/// Runs one worker session on `conn` until shutdown (`Ok`) or a broker failure (`Err`).
pub(super) async fn session<S: ReportStore, C: Clock>(
    idx: usize,
    conn: &Connection,
    ctx: &ServerContext<S, C>,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(ctx.cfg.settings.prefetch, BasicQosOptions::default())
        .await?;
    broker::declare_topology(&ch, ctx.cfg.node.queue_type).await?;
    let tag = format!("ts-server-{}-w{idx}", ctx.server_id.simple());
    let mut consumer = ch
        .basic_consume(
            REPORTS_QUEUE.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(worker = idx, "consuming {REPORTS_QUEUE}");
    let mut rejects = crate::logging::RejectLog::new(format!("worker {idx}"));
    let mut flush = tokio::time::interval(crate::logging::RejectLog::window());
    let max_batch = usize::from(ctx.cfg.settings.prefetch);
    let mut batch: Vec<(Delivery, i64)> = Vec::with_capacity(max_batch);
    let mut failure = None;
    loop {
        let next = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            d = consumer.next() => d,
            _ = flush.tick() => {
                rejects.flush();
                continue;
            }
        };
        match next {
            Some(Ok(d)) => batch.push((d, ctx.clock.now_us())),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Runtime("the broker cancelled the consumer".into())),
        }
        // Take what arrives within the linger: one Redis round trip for all of it.
        let linger = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.len() < max_batch {
            // `timeout_at` polls the delivery first: what is buffered is taken without a timer.
            let Ok(next) = tokio::time::timeout_at(linger, consumer.next()).await else {
                break;
            };
            match next {
                Some(Ok(d)) => batch.push((d, ctx.clock.now_us())),
                Some(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                None => break,
            }
        }
        process(idx, &mut batch, ctx, &mut rejects).await?;
        if let Some(e) = failure {
            return Err(e.into());
        }
    }
    // Shutdown: stop deliveries, then close; anything prefetched but unacked is requeued by the
    // broker for another worker or the next server.
    let _ = ch
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = ch.close(200, "shutdown".into()).await;
    Ok(())
}

/// Validates, stores and acknowledges one batch (emptying it).
async fn process<S: ReportStore, C: Clock>(
    idx: usize,
    batch: &mut Vec<(Delivery, i64)>,
    ctx: &ServerContext<S, C>,
    rejects: &mut crate::logging::RejectLog,
) -> Result<()> {
    let keys = ctx.keys.get();
    let mut good = Vec::with_capacity(batch.len());
    let mut last_good = None;
    for (d, received_at_us) in batch.drain(..) {
        match keys.open_from_client::<TimeReport>(&d.data) {
            Ok(report) => {
                good.push(StoredReport {
                    report,
                    received_at_us,
                });
                last_good = Some(d.acker);
            }
            Err(e) => {
                ctx.metrics.rejected(&e);
                rejects.record(&e, d.data.len());
                d.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
    }
    let Some(acker) = last_good else {
        return Ok(());
    };
    match ctx.store.store_reports(&good, ctx.cfg.settings.ttl()).await {
        Ok(outcomes) => {
            acker.ack(BasicAckOptions { multiple: true }).await?;
            for (r, outcome) in good.into_iter().zip(outcomes) {
                accepted(ctx, r, outcome, rejects);
            }
        }
        Err(e) => {
            ctx.metrics.inc(Counter::StoreErrors);
            warn!(worker = idx, error = %e, reports = good.len(), "could not store reports; requeued them");
            acker
                .nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                })
                .await?;
            tokio::select! {
                _ = ctx.shutdown.cancelled() => {}
                _ = tokio::time::sleep(STORE_RETRY_DELAY) => {}
            }
        }
    }
    Ok(())
}

/// What follows from one report Redis took or refused: counters, logical clocks, the epoch
/// floor, and the event log.
fn accepted<S, C: Clock>(
    ctx: &ServerContext<S, C>,
    r: StoredReport,
    outcome: Stored,
    rejects: &mut crate::logging::RejectLog,
) {
    let report = r.report;
    if outcome == Stored::Replay {
        let e = DecodeError::Replay(format!(
            "report {}:{} of client {} is not later than one stored",
            report.boot_us, report.seq, report.id
        ));
        ctx.metrics.rejected(&e);
        rejects.record(&e, 0);
        return;
    }
    ctx.metrics.inc(Counter::ReportsStored);
    ctx.observe_client(&report.stamp);
    if let Some(epoch) = report.epoch {
        ctx.saw_epoch(report.id, epoch);
    }
    if outcome == Stored::New {
        let data = EventData::from([
            ("client_id".to_string(), report.id.to_string().into()),
            ("ip".to_string(), report.ip.to_string().into()),
        ]);
        let text = format!("client {} ({}) joined", report.id, report.ip);
        ctx.record(
            EventKind::ClientJoined,
            text,
            data,
            Some(report.stamp.clone()),
        );
    }
    // The client's own events, under its own name (the seal proved who it is), without any
    // vector clock (those are the replicas').
    for mut e in report.events {
        e.node = format!("client-{}", report.id);
        e.stamp.vc = None;
        if let Some(c) = e.cause.as_mut() {
            c.vc = None;
        }
        let _ = ctx.events.send(e);
    }
}
