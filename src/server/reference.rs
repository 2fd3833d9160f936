//! The reference clock: answers offset probes and coordinates Berkeley rounds.
//!
//! Both need *one* clock to measure against, so one task of the server consumes the RPC queue
//! and stamps everything with the server's clock. A probe is answered immediately: `t2` is
//! taken when the delivery arrives, `t3` just before the reply is published, so whatever the
//! task does in between is excluded from the measured delay. Probes are consumed without
//! acknowledgements: an answer that is lost costs one sample, and acks would add latency.
//!
//! Berkeley: every interval the coordinator broadcasts a poll through the updates exchange,
//! collects readings for a short window, computes the fault-tolerant average
//! ([`crate::clock::berkeley`]) and sends each client its own adjustment.

use super::ServerContext;
use crate::broker;
use crate::cache::ReportStore;
use crate::clock::berkeley::{self, Reading};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::protocol::{
    self, Algorithm, BerkeleyAdjust, BerkeleyPoll, ProbeReply, ToClient, ToServer,
    PROTOCOL_VERSION, RPC_QUEUE, UPDATES_EXCHANGE,
};
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;
use uuid::Uuid;

/// A probe reply or adjustment older than this is useless to its client.
const REPLY_EXPIRY: Duration = Duration::from_secs(1);
/// Polls per Berkeley round. A poll reaches every client through the fanout exchange one after
/// another and the answers queue on the way back, so one poll's round trips are lopsided by
/// milliseconds; of several polls, each client's fastest answer is the one to trust (TEMPO, too,
/// measures each slave several times).
pub const BERKELEY_POLLS: u32 = 5;
/// Time between the polls of a round.
pub const BERKELEY_POLL_SPACING: Duration = Duration::from_millis(50);

/// A reading and the queue its adjustment goes to.
type Answer = (Reading, String);

/// An open Berkeley round.
struct Open {
    /// Send time (server clock) of each poll sent so far.
    sent: Vec<i64>,
    next_poll: Instant,
    close_at: Instant,
    /// Each client's fastest answer so far.
    best: std::collections::HashMap<Uuid, Answer>,
}

/// Berkeley round state that outlives broker sessions.
#[derive(Default)]
pub(super) struct Rounds {
    round: u64,
    open: Option<Open>,
}

/// Runs one session of the reference task on `conn`.
pub(super) async fn session<S: ReportStore, C: Clock>(
    conn: &Connection,
    ctx: &ServerContext<S, C>,
    rounds: &mut Rounds,
    epoch: u64,
    stop: &CancellationToken,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    broker::declare_rpc_queue(&ch).await?;
    broker::declare_updates_exchange(&ch).await?;
    let tag = format!("ts-server-{}-reference", ctx.server_id.simple());
    let mut consumer = ch
        .basic_consume(
            RPC_QUEUE.into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let berkeley = ctx.cfg.algorithm == Algorithm::Berkeley;
    let period = Duration::from_millis(ctx.cfg.berkeley_interval_ms);
    let mut rejects = crate::logging::RejectLog::new("reference".into());
    let mut polls = tokio::time::interval(period);
    polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let close_at = rounds.open.as_ref().map(|o| o.close_at);
        let next_poll = rounds
            .open
            .as_ref()
            .filter(|o| (o.sent.len() as u32) < BERKELEY_POLLS)
            .map(|o| o.next_poll);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = consumer.next() => {
                let d = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(Error::Runtime("the broker cancelled the RPC consumer".into())),
                };
                let t2 = ctx.clock.now_us();
                let reply_to = d.properties.reply_to().as_ref().map(|q| q.to_string());
                match (protocol::decode::<ToServer>(&d.data), reply_to) {
                    (Ok(ToServer::Probe(p)), Some(to)) => {
                        let reply = ToClient::ProbeReply(ProbeReply {
                            v: PROTOCOL_VERSION,
                            server_id: ctx.server_id,
                            epoch,
                            seq: p.seq,
                            t1_us: p.t1_us,
                            t2_us: t2,
                            t3_us: ctx.clock.now_us(),
                        });
                        broker::publish(&ch, "", &to, &reply, Some(REPLY_EXPIRY)).await?;
                        ctx.metrics.probes_answered.fetch_add(1, Relaxed);
                    }
                    (Ok(ToServer::BerkeleyReading(r)), Some(to)) => {
                        if let Some(open) = rounds.open.as_mut() {
                            if let (true, Some(sent)) = (r.round == rounds.round && r.epoch == epoch, open.sent.get(r.poll as usize)) {
                                let (polled, rtt_us) = berkeley::offset_from_poll(*sent, r.time_us, t2);
                                let offset_us = r.ref_offset_us.unwrap_or(polled);
                                let faster = open.best.get(&r.id).is_none_or(|(b, _)| rtt_us < b.rtt_us);
                                if faster {
                                    open.best.insert(r.id, (Reading { id: r.id, offset_us, rtt_us }, to));
                                }
                            }
                        }
                    }
                    (Ok(_), None) => {
                        ctx.metrics.rejected(&protocol::DecodeError::Malformed("no reply_to".into()));
                    }
                    (Err(e), _) => {
                        ctx.metrics.rejected(&e);
                        rejects.record(&e, d.data.len());
                    }
                }
            }
            _ = polls.tick(), if berkeley && rounds.open.is_none() => {
                rounds.round += 1;
                let collect = Duration::from_millis(ctx.cfg.berkeley_collect_ms);
                rounds.open = Some(Open {
                    sent: Vec::new(),
                    next_poll: Instant::now(),
                    close_at: Instant::now() + BERKELEY_POLL_SPACING * BERKELEY_POLLS + collect,
                    best: Default::default(),
                });
            }
            _ = sleep_until(next_poll), if next_poll.is_some() => {
                let open = rounds.open.as_mut().expect("open round");
                let poll = ToClient::BerkeleyPoll(BerkeleyPoll {
                    v: PROTOCOL_VERSION,
                    server_id: ctx.server_id,
                    epoch,
                    round: rounds.round,
                    poll: open.sent.len() as u32,
                });
                open.sent.push(ctx.clock.now_us());
                open.next_poll += BERKELEY_POLL_SPACING;
                broker::publish(&ch, UPDATES_EXCHANGE, "", &poll, Some(period)).await?;
            }
            _ = sleep_until(close_at), if close_at.is_some() => {
                let open = rounds.open.take().expect("open round");
                finish_round(&ch, ctx, epoch, rounds.round, open.best.into_values().collect()).await?;
            }
        }
    }
    let _ = ch
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = ch.close(200, "shutdown".into()).await;
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn finish_round<S: ReportStore, C: Clock>(
    ch: &Channel,
    ctx: &ServerContext<S, C>,
    epoch: u64,
    round: u64,
    readings: Vec<Answer>,
) -> Result<()> {
    let only: Vec<Reading> = readings.iter().map(|(r, _)| *r).collect();
    let Some(result) = berkeley::round(&only, &ctx.cfg.berkeley()) else {
        info!(
            round,
            readings = readings.len(),
            "berkeley round: no usable reading"
        );
        return Ok(());
    };
    let discarded: std::collections::HashSet<Uuid> = result.discarded.iter().copied().collect();
    for (id, adjust_us) in &result.adjustments {
        let Some((_, to)) = readings.iter().find(|(r, _)| r.id == *id) else {
            continue;
        };
        let msg = ToClient::BerkeleyAdjust(BerkeleyAdjust {
            v: PROTOCOL_VERSION,
            server_id: ctx.server_id,
            epoch,
            round,
            adjust_us: *adjust_us,
            outlier: discarded.contains(id),
        });
        broker::publish(ch, "", to, &msg, Some(REPLY_EXPIRY)).await?;
    }
    ctx.metrics.berkeley_rounds.fetch_add(1, Relaxed);
    info!(
        round,
        readings = readings.len(),
        used = result.used.len(),
        discarded = result.discarded.len(),
        average_us = result.average_us,
        "berkeley round"
    );
    Ok(())
}
