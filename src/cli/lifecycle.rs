//! A cluster's life: `tsc init`, `tsc bootstrap`, `tsc teardown`.

use super::output::{exit, CliResult, Failure, Out};
use super::{clients, servers};
use crate::error::Error;
use crate::runtime::cluster::{
    self, check_brokers, ClusterConfig, RuntimeKind, State, MAX_BROKERS,
};
use crate::runtime::node::MAX_CLIENTS;
use crate::runtime::{Runtime, MAX_REDIS_REPLICAS, MAX_REPLICAS};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// `tsc init`: writes cluster.toml (credentials generated) unless one exists, and makes the log
/// directories. `record` remembers `home` as the default for later commands.
pub fn init(home: &Path, record: bool, out: &Out) -> CliResult<u8> {
    let (cfg, fresh) = cluster::init(home, record)?;
    let config = cfg.home.join(cluster::CONFIG_FILE);
    if out.json {
        out.json(json!({"home": cfg.home, "config": config, "created": fresh}));
        return Ok(0);
    }
    out.line("Initializing Time-Sync CLI local env.");
    if fresh {
        out.line(&format!(
            "Wrote {} (credentials generated)",
            config.display()
        ));
    } else {
        out.line(&format!("Kept existing {}", config.display()));
    }
    out.line(&format!(
        "Logs: {} and {}",
        cfg.client_log_dir.display(),
        cfg.server_log_dir.display()
    ));
    out.line("Time-Sync CLI environment initialized successfully.");
    Ok(0)
}

/// How big a cluster `bootstrap` makes.
pub struct Sizes {
    pub clients: usize,
    pub servers: u64,
    /// Workers per replica; `None`: cluster.toml's `server.workers`.
    pub workers: Option<usize>,
    /// Redis replicas (with Sentinels when above 0).
    pub redis_replicas: usize,
    /// RabbitMQ nodes (a cluster when above 1).
    pub brokers: usize,
}

/// `tsc bootstrap`: images, network, services, replicas and clients.
pub async fn bootstrap(
    cfg: &ClusterConfig,
    state: &mut State,
    flag: Option<RuntimeKind>,
    n: Sizes,
    out: &Out,
) -> CliResult {
    let Sizes {
        clients,
        servers,
        workers,
        redis_replicas,
        brokers,
    } = n;
    check_brokers(brokers).map_err(|_| {
        Failure::usage(format!(
            "--brokers must be 1 or {MAX_BROKERS} (a quorum queue needs a majority of the \
             nodes, so two survive no loss)"
        ))
    })?;
    if redis_replicas > MAX_REDIS_REPLICAS {
        return Err(Failure::usage(format!(
            "--redis-replicas must be at most {MAX_REDIS_REPLICAS}"
        )));
    }
    if !(1..=MAX_REPLICAS).contains(&servers) {
        return Err(Failure::usage(format!(
            "--servers must be between 1 and {MAX_REPLICAS}"
        )));
    }
    let settings = servers::settings(cfg, workers)?;
    if clients > MAX_CLIENTS {
        return Err(Failure::usage(format!(
            "--clients must be at most {MAX_CLIENTS} (one /24)"
        )));
    }
    if let Some(kind) = state.runtime {
        let n = match Runtime::open(cfg, kind).await {
            Ok(rt) => rt.nodes(state).await.map(|n| n.len()).unwrap_or(0),
            Err(_) => 0,
        };
        return Err(Failure::new(
            exit::CLUSTER_EXISTS,
            format!("a cluster is already running here ({n} nodes on the {} runtime); run `tsc teardown` first", kind.as_str()),
        ));
    }
    let kind = flag.unwrap_or(cfg.runtime);
    let rt = Runtime::open(cfg, kind).await.map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot use the {} runtime: {e}", kind.as_str()),
        )
    })?;
    let existing = rt.nodes(state).await?;
    if !existing.is_empty() {
        return Err(Failure::new(
            exit::CLUSTER_EXISTS,
            format!(
                "a cluster is already running here ({} nodes); run `tsc teardown` first",
                existing.len()
            ),
        ));
    }
    let t0 = Instant::now();
    out.line(&format!(
        "Bootstrapping on the {} runtime (cluster {})",
        rt.kind().as_str(),
        cfg.cluster_id
    ));
    state.runtime = Some(rt.kind());
    state.save(&cfg.home)?;
    let mut progress = |s: &str| out.line(s);
    let fail = |e: Error| {
        Failure::new(
            exit::FAILURE,
            format!("{e}\nbootstrap did not finish; `tsc teardown` removes what it started"),
        )
    };
    rt.start_services(state, redis_replicas, brokers, &mut progress)
        .await
        .map_err(fail)?;
    state.save(&cfg.home)?;
    out.line(&format!(
        "Starting {servers} server replica(s) ({} workers each)..",
        settings.workers
    ));
    let unfinished = |f: Failure| {
        Failure::new(
            f.code,
            format!(
                "{}\nbootstrap did not finish; `tsc teardown` removes what it started",
                f.message
            ),
        )
    };
    servers::add_servers(&rt, state, servers, &settings, out)
        .await
        .map_err(unfinished)?;
    state.save(&cfg.home)?;
    clients::add_clients(&rt, state, clients, out)
        .await
        .map_err(unfinished)?;
    state.save(&cfg.home)?;
    let secs = t0.elapsed().as_secs_f64();
    if out.json {
        out.json(
            json!({"runtime": rt.kind().as_str(), "cluster_id": cfg.cluster_id, "seconds": secs}),
        );
    } else {
        out.line(&format!("Cluster is up in {secs:.1}s. `tsc wait` waits for synced clocks; `tsc clients list -v` shows them."));
    }
    Ok(())
}

/// `tsc teardown`: removes everything the cluster created, and nothing else.
pub async fn teardown(
    cfg: &ClusterConfig,
    state: &mut State,
    flag: Option<RuntimeKind>,
    out: &Out,
) -> CliResult {
    let kind = state.runtime.or(flag).unwrap_or(cfg.runtime);
    let rt = Runtime::open(cfg, kind).await?;
    let nodes = rt.nodes(state).await?;
    if state.runtime.is_none() && nodes.is_empty() {
        out.line("Nothing to tear down.");
        return Ok(());
    }
    let mut progress = |s: &str| out.line(s);
    rt.teardown(state, &mut progress).await?;
    state.runtime = None;
    state.local = Default::default();
    state.save(&cfg.home)?;
    out.line("Cluster removed.");
    Ok(())
}
