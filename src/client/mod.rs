//! `ts-client`: report the virtual clock every interval, follow the master's updates.
//!
//! One broker session carries both directions on one channel: a timer publishes reports to the
//! reports queue, and a consumer reads updates from this client's own server-named, exclusive,
//! auto-delete queue bound to the updates fanout exchange (so a client that goes away leaves no
//! queue behind). The reports queue is declared before the first publish so no early report is
//! dropped. Decisions live in [`ClientCore`]; this module only moves messages.

mod core;

pub use self::core::{ClientCore, ClientStats, UpdateOutcome};

use crate::backoff::Backoff;
use crate::broker;
use crate::clock::{Action, Clock, Discipline, SystemClock, VirtualClock};
use crate::config::{endpoint_of, ClientConfig};
use crate::error::{Error, Result};
use crate::protocol::{self, MasterUpdate, REPORTS_QUEUE};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use rand::{Rng, SeedableRng};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// AMQP port assumed when the URL names none.
const AMQP_DEFAULT_PORT: u16 = 5672;

/// The initial offset of the clock in µs: fixed, or uniform in ±skew (seeded if asked).
pub fn initial_offset_us(cfg: &ClientConfig) -> i64 {
    if let Some(ms) = cfg.initial_offset_ms {
        return ms.saturating_mul(1000);
    }
    let bound = (cfg.skew * 1e6) as i64;
    if bound == 0 {
        return 0;
    }
    let mut rng = match cfg.seed {
        Some(seed) => rand::rngs::SmallRng::seed_from_u64(seed),
        None => rand::rngs::SmallRng::from_entropy(),
    };
    rng.gen_range(-bound..=bound)
}

/// The local address this host uses to reach `endpoint` (`host:port`). A UDP `connect` only
/// consults the routing table; nothing is sent.
pub async fn local_ip_toward(endpoint: &str) -> std::io::Result<IpAddr> {
    let target = if endpoint
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        endpoint.to_string()
    } else {
        format!("{endpoint}:{AMQP_DEFAULT_PORT}")
    };
    let addr = tokio::net::lookup_host(&target)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{target} resolves to nothing")))?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    Ok(sock.local_addr()?.ip())
}

/// Runs a client until `shutdown`. `cfg.id` must be set (the binary picks one before logging
/// starts, since the log file is named after it).
pub async fn run(cfg: ClientConfig, shutdown: CancellationToken) -> Result<()> {
    cfg.validate()?;
    let id = cfg.id.unwrap_or_else(Uuid::new_v4);
    let Some(ip) = advertised_ip(&cfg, &shutdown).await else {
        return Ok(());
    };
    let clock = SystemClock;
    let offset = initial_offset_us(&cfg);
    let core = ClientCore::new(
        id,
        ip,
        VirtualClock::new(clock.now_us(), offset, cfg.drift_ppm),
        Discipline::new(cfg.discipline()),
    );
    info!(
        client_id = %id,
        %ip,
        initial_offset_us = offset,
        drift_ppm = cfg.drift_ppm,
        "ts-client starting"
    );
    let core = Arc::new(Mutex::new(core));
    broker::run_sessions(&cfg.endpoints.amqp_url, "ts-client", &shutdown, |conn| {
        session(conn, core.clone(), &cfg, clock, &shutdown)
    })
    .await;
    let stats = core.lock().expect("not poisoned").stats;
    info!(
        reports_sent = stats.reports_sent,
        updates_applied = stats.updates_applied,
        updates_rejected = stats.updates_rejected,
        "ts-client stopped"
    );
    Ok(())
}

async fn advertised_ip(cfg: &ClientConfig, shutdown: &CancellationToken) -> Option<IpAddr> {
    if let Some(ip) = cfg.ip {
        return Some(ip);
    }
    let endpoint = endpoint_of(&cfg.endpoints.amqp_url);
    let mut backoff = Backoff::default();
    loop {
        match local_ip_toward(&endpoint).await {
            Ok(ip) => return Some(ip),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, "cannot find the address toward {endpoint}, retrying in {}s", delay.as_secs());
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn session<C: Clock>(
    conn: Arc<Connection>,
    core: Arc<Mutex<ClientCore>>,
    cfg: &ClientConfig,
    clock: C,
    shutdown: &CancellationToken,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    broker::declare_reports_queue(&ch).await?;
    let queue = broker::declare_update_listener(&ch).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    debug!(%queue, "listening for master updates");
    let mut ticker = tokio::time::interval(cfg.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let report = core.lock().expect("not poisoned").report(clock.now_us());
                broker::publish(&ch, "", REPORTS_QUEUE, &report, Some(broker::expiry_for(cfg.interval()))).await?;
            }
            next = consumer.next() => {
                let d = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(Error::Runtime("the broker cancelled the update consumer".into())),
                };
                let host_us = clock.now_us();
                match protocol::decode::<MasterUpdate>(&d.data) {
                    Ok(update) => {
                        let outcome = core.lock().expect("not poisoned").on_update(&update, host_us);
                        log_outcome(&update, outcome);
                        d.acker.ack(BasicAckOptions::default()).await?;
                    }
                    Err(e) => {
                        core.lock().expect("not poisoned").stats.updates_rejected += 1;
                        warn!(reason = e.kind(), bytes = d.data.len(), "rejected update: {e}");
                        d.acker.reject(BasicRejectOptions { requeue: false }).await?;
                    }
                }
            }
        }
    }
    let tag = consumer.tag();
    let _ = ch.basic_cancel(tag, BasicCancelOptions::default()).await;
    let _ = ch.close(200, "shutdown".into()).await;
    Ok(())
}

fn log_outcome(u: &MasterUpdate, outcome: UpdateOutcome) {
    match outcome {
        UpdateOutcome::IAmMaster => {
            debug!(seq = u.seq, "update names this client as master")
        }
        UpdateOutcome::Applied {
            offset_us,
            action: Action::Step(delta),
        } => info!(
            master_id = %u.master_id,
            offset_us,
            step_us = delta,
            "stepped clock to master"
        ),
        UpdateOutcome::Applied { offset_us, .. } => info!(
            master_id = %u.master_id,
            offset_us,
            "slewing toward master"
        ),
        UpdateOutcome::Stale => debug!(seq = u.seq, "ignored stale update"),
    }
}
