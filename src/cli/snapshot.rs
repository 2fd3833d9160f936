//! What tsc reads of a running cluster: its runtime, its Redis, and one consistent snapshot of
//! nodes, reports and master that the views and verdicts are computed from.

use super::output::{exit, CliResult, Failure};
use super::view::{client_rows, server_rows, ClientRow, ServerRow};
use crate::cache::{RedisStore, ReportStore};
use crate::core::clock::{Clock, SystemClock};
use crate::core::protocol::{MasterRecord, StoredReport};
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::{Node, Runtime};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long tsc waits for Redis before saying it is unreachable.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime of the bootstrapped cluster, or exit code 4.
pub async fn open(cfg: &ClusterConfig, state: &State) -> CliResult<Runtime> {
    let Some(kind) = state.runtime else {
        return Err(Failure::new(
            exit::NO_CLUSTER,
            "no cluster is running; start one with `tsc bootstrap`",
        ));
    };
    Ok(Runtime::open(cfg, kind).await?)
}

/// Redis as seen from the host, failing fast.
pub async fn redis(rt: &Runtime, state: &State) -> CliResult<RedisStore> {
    let url = rt.endpoints(state).redis_url;
    let ep = crate::net::endpoint_of(&url);
    let token = CancellationToken::new();
    match tokio::time::timeout(REDIS_TIMEOUT, RedisStore::connect(&url, &token)).await {
        Ok(Ok(Some(s))) => Ok(s),
        _ => Err(Failure::new(
            exit::FAILURE,
            format!("cannot reach the cluster's Redis at {ep}; is it running? (`tsc status`)"),
        )),
    }
}

/// Nodes, live reports and master, read together, with the client rows joined from them.
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub rows: Vec<ClientRow>,
    pub master: Option<MasterRecord>,
    pub reports: Vec<StoredReport>,
    /// Host clock when the snapshot was taken (µs).
    pub now_us: i64,
}

/// Reads a snapshot (exit code 1 when Redis is unreachable).
pub async fn snapshot(rt: &Runtime, state: &State) -> CliResult<Snapshot> {
    let nodes = rt.nodes(state).await?;
    let store = redis(rt, state).await?;
    let reports = store.live_reports().await?;
    let master = store.master().await?;
    let now_us = SystemClock.now_us();
    let rows = client_rows(&nodes, &reports, master.as_ref(), now_us);
    Ok(Snapshot {
        nodes,
        rows,
        master,
        reports,
        now_us,
    })
}

/// The replicas as `tsc servers list` shows them (also `status`, `server tail`, the dashboard).
pub async fn replicas(rt: &Runtime, state: &State) -> CliResult<Vec<ServerRow>> {
    let nodes = rt.nodes(state).await?;
    let records = match redis(rt, state).await {
        Ok(store) => store.replicas().await.unwrap_or_default(),
        // Without Redis the runtime's view still says what runs.
        Err(_) => Vec::new(),
    };
    Ok(server_rows(&nodes, &records, SystemClock.now_us()))
}
