//! Hears the replicas' broadcasts on `ts.control` for the election timeline
//! ([`super::elections`]), as tsc's broker user, on a queue of its own that the broker deletes
//! with the connection. Every message is opened with tsc's copy of the replica key before it is
//! shown: a forged ELECTION never reaches the page. The keys are read again when a message does
//! not open (they may have been rotated since the dashboard started).

use super::elections::Timeline;
use crate::broker;
use crate::core::clock::{Clock, SystemClock};
use crate::core::keyring::KeyRing;
use crate::keys::ClusterKeys;
use crate::Result;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Listens until `shutdown`, reconnecting with the nodes' backoff when the broker goes away.
pub async fn run(
    amqp_url: String,
    keys_dir: PathBuf,
    timeline: Arc<Mutex<Timeline>>,
    shutdown: CancellationToken,
) {
    let name = "tsc dashboard (elections)";
    broker::run_sessions(&amqp_url, name, &shutdown, |conn| {
        let (keys_dir, timeline, shutdown) = (keys_dir.clone(), timeline.clone(), shutdown.clone());
        async move { session(&conn, &keys_dir, &timeline, &shutdown).await }
    })
    .await;
}

fn ring(keys_dir: &Path) -> Option<KeyRing> {
    ClusterKeys::load(keys_dir).ok().map(|k| k.server_ring())
}

async fn session(
    conn: &lapin::Connection,
    keys_dir: &Path,
    timeline: &Mutex<Timeline>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    let queue = broker::declare_control_observer(&ch).await?;
    let mut consumer = broker::consume_no_ack(&ch, &queue, "tsc-dashboard").await?;
    let mut keys = ring(keys_dir);
    loop {
        let d = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            d = consumer.next() => match d {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(crate::Error::Runtime("the broker cancelled the dashboard's consumer".into())),
            },
        };
        let at_us = SystemClock.now_us();
        let mut opened = keys.as_ref().map(|k| k.open_control(&d.data));
        if !matches!(opened, Some(Ok(_))) {
            keys = ring(keys_dir);
            opened = keys.as_ref().map(|k| k.open_control(&d.data));
        }
        match opened {
            Some(Ok(msg)) => timeline.lock().expect("not poisoned").message(at_us, &msg),
            Some(Err(e)) => debug!(error = %e, "a control message did not open; not shown"),
            None => debug!("no replica key in tsc's home; control messages are not shown"),
        }
    }
}
