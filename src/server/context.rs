//! What every task of one replica shares.

use super::metrics::Metrics;
use crate::settings::ServerConfig;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The replica's configuration, identity, store, clock, counters and shutdown signal.
pub(crate) struct ServerContext<S, C> {
    pub cfg: ServerConfig,
    /// This process's id, new at every start: it names the sender of every message.
    pub server_id: Uuid,
    pub store: S,
    pub clock: C,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}
