//! The reference clock: answers offset probes and carries the Berkeley coordinator's messages.
//!
//! Both need *one* clock to measure against, so one task of the leader consumes the RPC queue
//! and stamps everything with the server's clock. A probe is answered at once: `t2` is taken
//! when the delivery arrives, `t3` just before the reply is published, so whatever the task
//! does in between is excluded from the measured delay. Probes are consumed without
//! acknowledgements: an answer that is lost costs one sample, and acks would add latency.
//!
//! The Berkeley rounds are [`crate::core::berkeley::Coordinator`]'s: this task wakes it when it
//! asks, hands it the readings, and publishes the polls and adjustments it returns.
//!
//! A request counts only if it is sealed with the key of the client it names, and an answer
//! goes only to a client's own queue (`amq.gen-…`): a probe cannot make the server publish into
//! its own input queues. Every answer is signed with the leader key.

use super::context::{EventData, ServerContext};
use super::metrics::Counter;
use crate::broker;
use crate::cache::ReportStore;
use crate::core::berkeley::{Coordinator, Output};
use crate::core::clock::Clock;
use crate::core::protocol::{
    Algorithm, DecodeError, EventKind, ProbeReply, Stamp, ToClient, ToServer, PROTOCOL_VERSION,
    RPC_QUEUE, UPDATES_EXCHANGE,
};
use crate::error::{Error, Result};
use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Connection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;
use uuid::Uuid;

/// A probe reply or adjustment older than this is useless to its client.
const REPLY_EXPIRY: Duration = Duration::from_secs(1);

/// Whether `queue` can be a client's own queue: the broker names those `amq.gen-` and 22
/// URL-safe base64 characters.
pub fn is_client_queue(queue: &str) -> bool {
    queue.strip_prefix("amq.gen-").is_some_and(|rest| {
        (16..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Runs the reference clock for leadership term `epoch` until `term` is cancelled.
pub(crate) async fn run<S: ReportStore, C: Clock>(
    ctx: Arc<ServerContext<S, C>>,
    epoch: u64,
    term: CancellationToken,
) {
    // Berkeley rounds outlive broker sessions within the term, not the term.
    let origin = Instant::now();
    let rounds = (ctx.cfg.settings.algorithm == Algorithm::Berkeley).then(|| {
        Arc::new(Mutex::new(Coordinator::new(
            ctx.cfg.settings.berkeley(),
            ctx.server_id,
            epoch,
            Duration::ZERO,
        )))
    });
    let url = ctx.cfg.node.amqp_url.clone();
    broker::run_sessions(&url, "ts-server reference", &term, |conn| {
        let (ctx, rounds, term) = (ctx.clone(), rounds.clone(), term.clone());
        async move {
            let mut rounds = match &rounds {
                Some(r) => Some(r.lock().await),
                None => None,
            };
            let berkeley = rounds.as_deref_mut().map(|c| (c, origin));
            session(&conn, &ctx, berkeley, epoch, &term).await
        }
    })
    .await;
}

/// One broker session of the reference task.
async fn session<S: ReportStore, C: Clock>(
    conn: &Connection,
    ctx: &ServerContext<S, C>,
    mut berkeley: Option<(&mut Coordinator, Instant)>,
    epoch: u64,
    stop: &CancellationToken,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    broker::declare_rpc_queue(&ch, ctx.cfg.node.queue_type).await?;
    broker::declare_updates_exchange(&ch).await?;
    let tag = format!("ts-server-{}-reference", ctx.server_id.simple());
    let mut consumer = broker::consume_no_ack(&ch, RPC_QUEUE, &tag).await?;
    let poll_expiry = ctx.cfg.settings.berkeley().interval;
    let mut rejects = crate::logging::RejectLog::new("reference".into());
    let mut flush = tokio::time::interval(crate::logging::RejectLog::window());
    let mut requests = ctx.commands.round_rx.lock().await;
    loop {
        let wake = berkeley
            .as_ref()
            .map(|(c, origin)| *origin + c.next_wakeup());
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
                let reply_to: Option<String> = d.properties.reply_to().as_ref().map(|q| q.to_string());
                let opened = ctx.keys.get().open_from_client::<ToServer>(&d.data);
                let checked = match (opened, reply_to) {
                    (Ok(m), Some(to)) if is_client_queue(&to) => Ok((m, to)),
                    (Ok(_), to) => Err(DecodeError::BadReplyTo(to.unwrap_or_default())),
                    (Err(e), _) => Err(e),
                };
                match checked {
                    Ok((ToServer::Probe(p), to)) => {
                        let mut reply = ProbeReply {
                            v: PROTOCOL_VERSION,
                            server_id: ctx.server_id,
                            epoch,
                            client_id: p.id,
                            seq: p.seq,
                            t1_us: p.t1_us,
                            t2_us: t2,
                            t3_us: 0,
                            stamp: Stamp::default(),
                        };
                        ctx.observe_client(&p.stamp);
                        // t3 as late as possible: only the signature follows it.
                        reply.t3_us = ctx.clock.now_us();
                        let sealed = ctx.seal_to_clients(ToClient::ProbeReply(reply))?;
                        broker::publish_raw(&ch, "", &to, &sealed, Some(REPLY_EXPIRY)).await?;
                        ctx.metrics.inc(Counter::ProbesAnswered);
                    }
                    Ok((ToServer::BerkeleyReading(r), to)) => {
                        ctx.observe_client(&r.stamp);
                        if let Some((c, _)) = berkeley.as_mut() {
                            c.on_reading(&r, &to, t2);
                        }
                    }
                    Err(e) => {
                        ctx.metrics.rejected(&e);
                        rejects.record(&e, d.data.len());
                    }
                }
            }
            _ = flush.tick() => rejects.flush(),
            Some(reply) = requests.recv() => {
                if reply.is_closed() {
                    continue; // the operator was already told 503
                }
                let answer = match berkeley.as_mut() {
                    None => Err("the cluster does not run the berkeley algorithm".to_string()),
                    Some((c, origin)) => {
                        if c.request_round(origin.elapsed()) {
                            ctx.metrics.inc(Counter::OperatorCommands);
                            Ok(c.round() + 1)
                        } else {
                            Err("a Berkeley round is already running".to_string())
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            _ = sleep_until(wake), if wake.is_some() => {
                let (c, origin) = berkeley.as_mut().expect("a coordinator");
                let outputs = c.tick(origin.elapsed(), ctx.clock.now_us());
                carry(&ch, ctx, outputs, poll_expiry).await?;
            }
        }
    }
    let _ = ch
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = ch.close(200, "shutdown".into()).await;
    Ok(())
}

/// Publishes what the coordinator asked for.
async fn carry<S, C: Clock>(
    ch: &Channel,
    ctx: &ServerContext<S, C>,
    outputs: Vec<Output>,
    poll_expiry: Duration,
) -> Result<()> {
    for out in outputs {
        match out {
            Output::Poll(p) => {
                let sealed = ctx.seal_to_clients(ToClient::BerkeleyPoll(p))?;
                broker::publish_raw(ch, UPDATES_EXCHANGE, "", &sealed, Some(poll_expiry)).await?;
            }
            Output::Adjust { reply_to, adjust } => {
                let sealed = ctx.seal_to_clients(ToClient::BerkeleyAdjust(adjust))?;
                broker::publish_raw(ch, "", &reply_to, &sealed, Some(REPLY_EXPIRY)).await?;
            }
            Output::Closed {
                round,
                readings,
                average: None,
            } => info!(round, readings, "berkeley round: no usable reading"),
            Output::Closed {
                round,
                readings,
                average: Some(avg),
            } => {
                ctx.metrics.inc(Counter::BerkeleyRounds);
                info!(
                    round,
                    readings,
                    used = avg.used.len(),
                    discarded = avg.discarded.len(),
                    average_us = avg.average_us,
                    "berkeley round"
                );
                let mut data = EventData::from([
                    ("round".to_string(), round.into()),
                    ("readings".to_string(), readings.into()),
                    ("used".to_string(), avg.used.len().into()),
                    ("average_us".to_string(), avg.average_us.into()),
                ]);
                data.extend(adjustment_data(&avg.adjustments));
                let text = format!(
                    "berkeley round {round}: {} of {readings} clocks averaged, outliers adjusted too",
                    avg.used.len()
                );
                ctx.record(EventKind::BerkeleyRound, text, data, None);
            }
        }
    }
    Ok(())
}

/// The largest adjustments a `berkeley_round` event lists, client by client.
const EVENT_ADJUSTMENTS: usize = 32;

/// A round's adjustments for its event: the [`EVENT_ADJUSTMENTS`] largest in size, by client
/// id, how many were left out, and the largest size.
fn adjustment_data(adjustments: &[(Uuid, i64)]) -> EventData {
    let mut by_size: Vec<&(Uuid, i64)> = adjustments.iter().collect();
    by_size.sort_by_key(|(id, a)| (std::cmp::Reverse(a.unsigned_abs()), *id));
    let listed: serde_json::Map<String, serde_json::Value> = by_size
        .iter()
        .take(EVENT_ADJUSTMENTS)
        .map(|(id, a)| (id.to_string(), (*a).into()))
        .collect();
    let max = by_size.first().map_or(0, |(_, a)| a.unsigned_abs());
    EventData::from([
        ("adjustments".to_string(), listed.into()),
        (
            "adjustments_omitted".to_string(),
            adjustments.len().saturating_sub(EVENT_ADJUSTMENTS).into(),
        ),
        ("max_adjust_us".to_string(), max.into()),
    ])
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_event_lists_the_largest_adjustments_and_counts_the_rest() {
        let adjustments: Vec<(Uuid, i64)> = (0..40)
            .map(|i| {
                (
                    Uuid::from_u128(i),
                    if i % 2 == 0 { i as i64 } else { -(i as i64) },
                )
            })
            .collect();
        let d = adjustment_data(&adjustments);
        let listed = d["adjustments"].as_object().unwrap();
        assert_eq!(listed.len(), EVENT_ADJUSTMENTS);
        assert_eq!(listed[&Uuid::from_u128(39).to_string()], -39);
        assert!(
            !listed.contains_key(&Uuid::from_u128(7).to_string()),
            "a small one left out"
        );
        assert_eq!(d["adjustments_omitted"], 8);
        assert_eq!(d["max_adjust_us"], 39);
        let none = adjustment_data(&[]);
        assert_eq!(none["adjustments_omitted"], 0);
        assert_eq!(none["max_adjust_us"], 0);
    }
}
