//! `tsc`: bring up, inspect and tear down a time-sync cluster.
//!
//! Commands are written once against [`crate::runtime::Runtime`], so they behave the same on
//! Docker and as local processes. Cluster facts come from two places: the runtime (which nodes
//! exist and run) and Redis (what clients report, who is master, server counters). Tables are
//! for people; `--json` prints one JSON document for scripts. Exit codes are in [`exit`].

pub mod cluster;
pub mod plot;
pub mod report;
pub mod servers;
mod tail;
pub mod view;

use crate::cache::{RedisStore, ReportStore};
use crate::clock::{format_us, Clock, SystemClock};
use crate::error::Error;
use crate::protocol::{MasterRecord, StoredReport};
use crate::runtime::{Node, Role, Runtime};
use clap::{Args, Parser, Subcommand};
use cluster::{ClusterConfig, RuntimeKind, State};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use view::{client_rows, ms, ClientRow};

/// Exit codes.
pub mod exit {
    /// Something failed (a service, the runtime, a file).
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// An id that is not in the cluster.
    pub const NOT_FOUND: u8 = 3;
    /// No cluster: not initialized, or not bootstrapped.
    pub const NO_CLUSTER: u8 = 4;
    /// `bootstrap` over an existing cluster.
    pub const CLUSTER_EXISTS: u8 = 5;
    /// `status` or `wait` found the cluster unhealthy or not in sync.
    pub const UNHEALTHY: u8 = 6;
}

/// How long tsc waits for Redis before saying it is unreachable.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// time-sync cluster CLI.
#[derive(Parser, Debug)]
#[command(name = "tsc", version, about, propagate_version = true)]
pub struct Cli {
    /// tsc home: cluster.toml and state.json (default: set by `tsc init -p`, else ~/.tsc).
    #[arg(long, global = true, env = "TSC_HOME")]
    pub home: Option<PathBuf>,
    /// Where nodes run (default: cluster.toml's `runtime`, normally auto).
    #[arg(long, global = true, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the cluster configuration and credentials, create the log directories.
    Init {
        /// Directory for cluster.toml and state (becomes tsc's home).
        #[arg(short = 'p', long = "path")]
        path: Option<PathBuf>,
    },
    /// Build images if needed, start Redis, RabbitMQ, the server replicas and N clients.
    Bootstrap {
        /// Number of clients.
        #[arg(short = 'c', long = "clients", default_value_t = 4)]
        clients: usize,
        /// Number of server replicas (one leads, elected by Bully; up to 10).
        #[arg(short = 's', long = "servers", default_value_t = 1)]
        servers: u64,
        /// Workers per server replica.
        #[arg(short = 'w', long = "workers", default_value_t = 4)]
        workers: usize,
    },
    /// Inspect and manage clients.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Inspect a server replica's log.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Inspect and manage the server replicas (leader election, failures).
    Servers {
        #[command(subcommand)]
        command: servers::ServersCommand,
    },
    /// Services, server, clients, master and health; exit code 6 when unhealthy.
    Status,
    /// Wait until every client follows the master within a bound; exit code 6 on timeout.
    Wait {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Largest acceptable |true error| to the master, in milliseconds.
        #[arg(long, default_value_t = 5.0)]
        bound_ms: f64,
    },
    /// Measure every client's error against the reference for a while (true errors: exact when
    /// all clients share one host clock).
    Report {
        /// Seconds to sample for.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Also draw every client's error over time into this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Remove every container, network, process, vhost the cluster created (nothing else).
    Teardown,
}

#[derive(Subcommand, Debug)]
pub enum ClientsCommand {
    /// List clients (ids; -v: a table with clocks and offsets).
    List {
        #[arg(short, long)]
        verbose: bool,
    },
    /// Show one client.
    Get {
        #[arg(short = 'c', long = "client")]
        client: String,
    },
    /// Show the master client.
    GetMaster {
        #[arg(short, long)]
        verbose: bool,
    },
    /// Start N more clients.
    Add {
        #[arg(short = 'n', long = "number", default_value_t = 1)]
        number: usize,
    },
    /// Stop and remove a client.
    Remove {
        #[arg(short = 'c', long = "client")]
        client: String,
    },
    /// Show a client's log.
    Tail(TailArgs),
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Show a server replica's log (default: the leader's).
    Tail(ServerTailArgs),
}

#[derive(Args, Debug)]
pub struct TailArgs {
    #[arg(short = 'c', long = "client")]
    client: String,
    #[command(flatten)]
    opts: TailOpts,
}

#[derive(Args, Debug)]
pub struct ServerTailArgs {
    /// Replica id (`2` or `server-2`); default: the current leader.
    #[arg(short = 's', long = "server")]
    server: Option<String>,
    #[command(flatten)]
    opts: TailOpts,
}

#[derive(Args, Debug)]
pub struct TailOpts {
    /// Keep printing new lines.
    #[arg(short, long)]
    follow: bool,
    /// Raw JSON lines with every field.
    #[arg(short, long)]
    verbose: bool,
    /// Lines of history to show first.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: usize,
}

/// A failed command: a message for people and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub(super) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::NotFound(_) => exit::NOT_FOUND,
            _ => exit::FAILURE,
        };
        Failure::new(code, e.to_string())
    }
}

pub(super) type CliResult<T = ()> = Result<T, Failure>;

/// What a command prints: lines for people, or one JSON value.
pub(super) struct Out {
    json: bool,
}

impl Out {
    pub(super) fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
    pub(super) fn json(&self, v: serde_json::Value) {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    }
}

/// Runs one tsc command; `Ok` carries the exit code for commands that report health.
pub async fn run(cli: Cli) -> CliResult<u8> {
    let out = Out { json: cli.json };
    let explicit_home = cli.home.clone();
    let home = cluster::resolve_home(explicit_home.as_deref());
    if let Command::Init { path } = &cli.command {
        let target = path.clone().unwrap_or(home);
        let record = explicit_home.is_none();
        let (cfg, fresh) = cluster::init(&target, record)?;
        if out.json {
            out.json(json!({"home": cfg.home, "config": cfg.home.join(cluster::CONFIG_FILE), "created": fresh}));
        } else {
            out.line("Initializing Time-Sync CLI local env.");
            if fresh {
                out.line(&format!(
                    "Wrote {} (credentials generated)",
                    cfg.home.join(cluster::CONFIG_FILE).display()
                ));
            } else {
                out.line(&format!(
                    "Kept existing {}",
                    cfg.home.join(cluster::CONFIG_FILE).display()
                ));
            }
            out.line(&format!(
                "Logs: {} and {}",
                cfg.client_log_dir.display(),
                cfg.server_log_dir.display()
            ));
            out.line("Time-Sync CLI environment initialized successfully.");
        }
        return Ok(0);
    }
    let cfg = ClusterConfig::load(&home).map_err(|e| match e {
        Error::NotFound(m) => Failure::new(exit::NO_CLUSTER, m),
        e => e.into(),
    })?;
    let mut state = State::load(&cfg.home)?;
    match cli.command {
        Command::Init { .. } => unreachable!("handled above"),
        Command::Bootstrap {
            clients,
            servers,
            workers,
        } => {
            let n = Sizes {
                clients,
                servers,
                workers,
            };
            bootstrap(&cfg, &mut state, cli.runtime, n, &out).await?;
            Ok(0)
        }
        Command::Teardown => {
            teardown(&cfg, &mut state, cli.runtime, &out).await?;
            Ok(0)
        }
        command => {
            let rt = open(&cfg, &state).await?;
            match command {
                Command::Clients { command } => clients(&cfg, &mut state, &rt, command, &out).await,
                Command::Server {
                    command: ServerCommand::Tail(a),
                } => {
                    let id = server_to_tail(&rt, &state, a.server.as_deref()).await?;
                    let path = cfg.server_log_dir.join(format!("server-{id}.json"));
                    tail_file(&path, &a.opts).await?;
                    Ok(0)
                }
                Command::Servers { command } => {
                    servers::servers(&cfg, &mut state, &rt, command, &out).await
                }
                Command::Status => status(&cfg, &state, &rt, &out).await,
                Command::Wait { timeout, bound_ms } => {
                    let alg = cfg.server.algorithm;
                    wait(
                        &state,
                        &rt,
                        alg,
                        Duration::from_secs(timeout),
                        bound_ms,
                        &out,
                    )
                    .await
                }
                Command::Report { duration, plot } => {
                    report(&cfg, &state, &rt, Duration::from_secs(duration), plot, &out).await
                }
                _ => unreachable!("handled above"),
            }
        }
    }
}

/// The runtime of the bootstrapped cluster, or exit code 4.
async fn open(cfg: &ClusterConfig, state: &State) -> CliResult<Runtime> {
    let Some(kind) = state.runtime else {
        return Err(Failure::new(
            exit::NO_CLUSTER,
            "no cluster is running; start one with `tsc bootstrap`",
        ));
    };
    Ok(Runtime::open(cfg, kind).await?)
}

/// How big a cluster `bootstrap` makes.
struct Sizes {
    clients: usize,
    servers: u64,
    workers: usize,
}

/// The replica whose log `server tail` shows: the one named, else the leader, else the lowest.
async fn server_to_tail(rt: &Runtime, state: &State, arg: Option<&str>) -> CliResult<u64> {
    let rows = servers::rows(rt, state).await?;
    let id = match arg {
        Some(a) => {
            let want = a.strip_prefix("server-").unwrap_or(a);
            rows.iter().find(|r| r.id.to_string() == want).map(|r| r.id)
        }
        None => servers::current_leader(&rows)
            .or(rows.first())
            .map(|r| r.id),
    };
    id.ok_or_else(|| {
        Failure::new(
            exit::NOT_FOUND,
            match arg {
                Some(a) => {
                    format!("no server replica {a:?} in this cluster (see `tsc servers list`)")
                }
                None => "no server replica in this cluster".into(),
            },
        )
    })
}

async fn bootstrap(
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
    } = n;
    if !(1..=crate::runtime::MAX_REPLICAS).contains(&servers) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--servers must be between 1 and {}",
                crate::runtime::MAX_REPLICAS
            ),
        ));
    }
    if !(1..=256).contains(&workers) {
        return Err(Failure::new(
            exit::USAGE,
            "--workers must be between 1 and 256",
        ));
    }
    if clients > 235 {
        return Err(Failure::new(
            exit::USAGE,
            "--clients must be at most 235 (one /24)",
        ));
    }
    if let Some(kind) = state.runtime {
        let n = match Runtime::open(cfg, kind).await {
            Ok(rt) => rt.nodes(state).await.map(|n| n.len()).unwrap_or(0),
            Err(_) => 0,
        };
        return Err(Failure::new(
            exit::CLUSTER_EXISTS,
            format!("a cluster is already running here ({n} nodes on the {} runtime); run `tsc teardown` first", kind_name(kind)),
        ));
    }
    let kind = flag.unwrap_or(cfg.runtime);
    let rt = Runtime::open(cfg, kind).await.map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot use the {} runtime: {e}", kind_name(kind)),
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
        kind_name(rt.kind()),
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
    rt.start_services(state, &mut progress)
        .await
        .map_err(fail)?;
    state.save(&cfg.home)?;
    out.line(&format!(
        "Starting {servers} server replica(s) ({workers} workers each).."
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
    servers::add_servers(&rt, state, servers, workers, out)
        .await
        .map_err(unfinished)?;
    state.save(&cfg.home)?;
    add_clients(&rt, state, clients, out)
        .await
        .map_err(unfinished)?;
    state.save(&cfg.home)?;
    let secs = t0.elapsed().as_secs_f64();
    if out.json {
        out.json(
            json!({"runtime": kind_name(rt.kind()), "cluster_id": cfg.cluster_id, "seconds": secs}),
        );
    } else {
        out.line(&format!("Cluster is up in {secs:.1}s. `tsc wait` waits for synced clocks; `tsc clients list -v` shows them."));
    }
    Ok(())
}

pub(super) fn kind_name(k: RuntimeKind) -> &'static str {
    match k {
        RuntimeKind::Docker => "docker",
        RuntimeKind::Local => "local",
        RuntimeKind::Auto => "auto",
    }
}

async fn add_clients(rt: &Runtime, state: &mut State, n: usize, out: &Out) -> CliResult<Vec<Node>> {
    let what = if rt.kind() == RuntimeKind::Docker {
        "containers"
    } else {
        "processes"
    };
    out.line(&format!("Starting {n} client {what}.."));
    let mut started = Vec::new();
    for _ in 0..n {
        let node = rt.start_client(state).await?;
        out.line(&format!("Started new client at {}", node.ip));
        started.push(node);
    }
    Ok(started)
}

async fn teardown(
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

/// Redis as seen from the host, failing fast.
pub(super) async fn redis(rt: &Runtime, state: &State) -> CliResult<RedisStore> {
    let url = rt.endpoints(state).redis_url;
    let ep = crate::config::endpoint_of(&url);
    let token = CancellationToken::new();
    match tokio::time::timeout(REDIS_TIMEOUT, RedisStore::connect(&url, &token)).await {
        Ok(Ok(Some(s))) => Ok(s),
        _ => Err(Failure::new(
            exit::FAILURE,
            format!("cannot reach the cluster's Redis at {ep}; is it running? (`tsc status`)"),
        )),
    }
}

struct Snapshot {
    nodes: Vec<Node>,
    rows: Vec<ClientRow>,
    master: Option<MasterRecord>,
    reports: Vec<StoredReport>,
}

async fn snapshot(rt: &Runtime, state: &State) -> CliResult<Snapshot> {
    let nodes = rt.nodes(state).await?;
    let store = redis(rt, state).await?;
    let reports = store.live_reports().await?;
    let master = store.master().await?;
    let rows = client_rows(&nodes, &reports, master.as_ref(), SystemClock.now_us());
    Ok(Snapshot {
        nodes,
        rows,
        master,
        reports,
    })
}

fn client_table(rows: &[ClientRow]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "ID",
        "IP",
        "STATE",
        "TIME (UTC)",
        "MASTER",
        "OFFSET ms",
        "TRUE ERR ms",
        "AGE s",
    ]);
    for r in rows {
        t.add_row([
            r.id.clone(),
            r.ip.to_string(),
            r.state.clone(),
            r.time_us.map_or_else(|| "-".into(), format_us),
            if r.is_master {
                "(master)".into()
            } else {
                r.master_id.map_or_else(|| "-".into(), |m| m.to_string())
            },
            ms(r.offset_to_master_us),
            ms(r.true_error_us),
            r.last_report_age_ms
                .map_or_else(|| "-".into(), |a| format!("{:.1}", a as f64 / 1000.0)),
        ]);
    }
    t
}

fn detail(r: &ClientRow) -> String {
    format!(
        "Client ID: {}, IP Address {}, State {}, Time {}, Master Client ID {}{}, Offset to master {} ms, True error {} ms, Last report {} ms ago",
        r.id,
        r.ip,
        r.state,
        r.time_us.map_or_else(|| "-".into(), format_us),
        r.master_id.map_or_else(|| "None".into(), |m| m.to_string()),
        if r.is_master { " (this client)" } else { "" },
        ms(r.offset_to_master_us),
        ms(r.true_error_us),
        r.last_report_age_ms.map_or_else(|| "-".into(), |a| a.to_string()),
    )
}

async fn clients(
    cfg: &ClusterConfig,
    state: &mut State,
    rt: &Runtime,
    cmd: ClientsCommand,
    out: &Out,
) -> CliResult<u8> {
    match cmd {
        ClientsCommand::List { verbose } => {
            let s = snapshot(rt, state).await?;
            if out.json {
                out.json(json!({"clients": s.rows, "master": s.master}));
            } else {
                if verbose {
                    out.line(&format!("Found {} clients in cluster:", s.rows.len()));
                    out.line(&client_table(&s.rows).to_string());
                } else {
                    let shown: Vec<&ClientRow> =
                        s.rows.iter().filter(|r| r.state != "silent").collect();
                    out.line(&format!("Found {} clients in cluster:", shown.len()));
                    for r in shown {
                        out.line(&r.id);
                    }
                }
            }
        }
        ClientsCommand::Get { client } => {
            let s = snapshot(rt, state).await?;
            let r = view::find(&s.rows, &client).map_err(|m| Failure::new(exit::NOT_FOUND, m))?;
            if out.json {
                let report = s.reports.iter().find(|x| x.report.id.to_string() == r.id);
                out.json(json!({"client": r, "last_report": report}));
            } else {
                out.line(&detail(r));
            }
        }
        ClientsCommand::GetMaster { verbose } => {
            let s = snapshot(rt, state).await?;
            let Some(m) = &s.master else {
                return Err(Failure::new(
                    exit::NOT_FOUND,
                    "no master elected yet (no client has reported)",
                ));
            };
            let row = s.rows.iter().find(|r| r.id == m.id.to_string());
            if out.json {
                out.json(json!({"master": m, "client": row}));
            } else if verbose {
                match row {
                    Some(r) => out.line(&detail(r)),
                    None => out.line(&format!(
                        "Master Client ID: {} (IP {}; no live report)",
                        m.id, m.ip
                    )),
                }
            } else {
                out.line(&format!("Master Client ID: {}", m.id));
            }
        }
        ClientsCommand::Add { number } => {
            if number == 0 || number > 235 {
                return Err(Failure::new(exit::USAGE, "-n must be between 1 and 235"));
            }
            let nodes = add_clients(rt, state, number, out).await?;
            state.save(&cfg.home)?;
            if out.json {
                out.json(json!({"started": nodes}));
            }
        }
        ClientsCommand::Remove { client } => {
            let nodes = rt.nodes(state).await?;
            let clients: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Client).collect();
            let node = match clients
                .iter()
                .filter(|n| n.id == client || n.id.starts_with(&client))
                .collect::<Vec<_>>()
                .as_slice()
            {
                [one] if !client.is_empty() => (**one).clone(),
                [] | [_] => {
                    return Err(Failure::new(
                        exit::NOT_FOUND,
                        format!(
                            "no client with id {client:?} in this cluster (see `tsc clients list`)"
                        ),
                    ))
                }
                many => {
                    return Err(Failure::new(
                        exit::NOT_FOUND,
                        format!(
                            "{client:?} matches {} clients; give more of the id",
                            many.len()
                        ),
                    ))
                }
            };
            out.line(&format!("Attempting to remove client with ID {}", node.id));
            rt.remove(state, &node).await?;
            if out.json {
                out.json(json!({"removed": node}));
            } else {
                out.line(&format!("Client at IP {} removed successfully", node.ip));
            }
        }
        ClientsCommand::Tail(a) => {
            let nodes = rt.nodes(state).await?;
            let ids: Vec<&str> = nodes
                .iter()
                .filter(|n| n.role == Role::Client)
                .map(|n| n.id.as_str())
                .collect();
            let id = match ids
                .iter()
                .filter(|i| **i == a.client || i.starts_with(&a.client))
                .collect::<Vec<_>>()
                .as_slice()
            {
                [one] if !a.client.is_empty() => one.to_string(),
                _ => {
                    return Err(Failure::new(
                        exit::NOT_FOUND,
                        format!(
                            "no client with id {:?} in this cluster (see `tsc clients list`)",
                            a.client
                        ),
                    ))
                }
            };
            tail_file(&cfg.client_log_dir.join(id), &a.opts).await?;
        }
    }
    Ok(0)
}

async fn tail_file(path: &std::path::Path, o: &TailOpts) -> CliResult {
    let stop = CancellationToken::new();
    if o.follow {
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            s.cancel();
        });
    }
    let mut print = |l: &str| println!("{l}");
    tail::tail(path, o.lines, o.follow, o.verbose, stop, &mut print).await?;
    Ok(())
}

/// Problems that make the cluster unhealthy; empty when all is well.
fn health(
    nodes: &[Node],
    rows: &[ClientRow],
    master: Option<&MasterRecord>,
    servers_reporting: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    for role in [Role::Redis, Role::Rabbitmq, Role::Server] {
        let n: Vec<&Node> = nodes.iter().filter(|n| n.role == role).collect();
        if n.is_empty() {
            problems.push(format!("no {} node", role.as_str()));
        }
        for x in n.iter().filter(|x| !x.running()) {
            problems.push(format!("{} {} is {}", role.as_str(), x.id, x.state));
        }
    }
    if servers_reporting == 0 {
        problems.push("no server has written its counters to Redis".into());
    }
    for r in rows.iter().filter(|r| r.state != "external") {
        if r.state != "running" {
            problems.push(format!("client {} is {}", r.id, r.state));
        } else if r.time_us.is_none() {
            problems.push(format!("client {} has not reported", r.id));
        }
    }
    if master.is_none() && !rows.is_empty() {
        problems.push("no master elected".into());
    }
    problems
}

async fn status(cfg: &ClusterConfig, state: &State, rt: &Runtime, out: &Out) -> CliResult<u8> {
    let nodes = rt.nodes(state).await?;
    let redis_ok = redis(rt, state).await;
    let (rows, master, stats) = match &redis_ok {
        Ok(store) => {
            let reports = store.live_reports().await.unwrap_or_default();
            let master = store.master().await.ok().flatten();
            let rows = client_rows(&nodes, &reports, master.as_ref(), SystemClock.now_us());
            (rows, master, store.server_stats().await.unwrap_or_default())
        }
        Err(_) => (client_rows(&nodes, &[], None, 0), None, vec![]),
    };
    let replicas = servers::rows(rt, state).await?;
    let leader = servers::current_leader(&replicas).map(|r| r.id);
    let mut problems = health(&nodes, &rows, master.as_ref(), stats.len());
    if leader.is_none() && replicas.iter().any(|r| r.state == "running") {
        problems.push("no server replica leads".into());
    }
    if let Err(f) = &redis_ok {
        problems.insert(0, f.message.clone());
    }
    let max_err = rows
        .iter()
        .filter_map(|r| r.true_error_us.map(i64::abs))
        .max();
    let code = if problems.is_empty() {
        0
    } else {
        exit::UNHEALTHY
    };
    if out.json {
        out.json(json!({
            "runtime": kind_name(rt.kind()), "cluster_id": cfg.cluster_id, "nodes": nodes,
            "clients": rows, "master": master, "replicas": replicas, "leader": leader,
            "servers": stats.iter().map(|(id, h)| json!({"id": id, "stats": h})).collect::<Vec<_>>(),
            "max_true_error_us": max_err, "healthy": problems.is_empty(), "problems": problems,
        }));
        return Ok(code);
    }
    out.line(&format!(
        "Runtime:  {} (cluster {})",
        kind_name(rt.kind()),
        cfg.cluster_id
    ));
    for n in nodes
        .iter()
        .filter(|n| n.role != Role::Client && n.role != Role::Server)
    {
        out.line(&format!(
            "{:<9} {:<15} {:<8} {}",
            format!("{}:", n.role.as_str()),
            n.ip,
            n.state,
            n.handle
        ));
    }
    for r in &replicas {
        out.line(&format!(
            "{:<9} {:<15} {:<8} {} epoch {}{}",
            format!("server {}:", r.id),
            r.ip,
            r.state,
            r.role,
            r.epoch.map_or_else(|| "-".into(), |e| e.to_string()),
            r.heartbeat_age_ms.map_or_else(String::new, |a| format!(
                ", heartbeat {:.1}s ago",
                a as f64 / 1000.0
            ))
        ));
    }
    for (id, h) in &stats {
        let g = |k: &str| h.get(k).copied().unwrap_or(0);
        out.line(&format!(
            "server {id}: reports_stored={} rejected={} updates_published={} master_changes={}",
            g("reports_stored"),
            g("rejected_total"),
            g("updates_published"),
            g("master_changes")
        ));
    }
    let running = rows.iter().filter(|r| r.state == "running").count();
    let reporting = rows.iter().filter(|r| r.time_us.is_some()).count();
    out.line(&format!(
        "Clients:  {} ({running} running, {reporting} reporting)",
        rows.len()
    ));
    match &master {
        Some(m) => out.line(&format!("Master:   {} ({})", m.id, m.ip)),
        None => out.line("Master:   none"),
    }
    out.line(&format!("Sync:     max |true error| {} ms", ms(max_err)));
    if problems.is_empty() {
        out.line("Health:   OK");
    } else {
        out.line(&format!("Health:   DEGRADED: {}", problems.join("; ")));
    }
    Ok(code)
}

async fn wait(
    state: &State,
    rt: &Runtime,
    alg: crate::protocol::Algorithm,
    timeout: Duration,
    bound_ms: f64,
    out: &Out,
) -> CliResult<u8> {
    let t0 = Instant::now();
    let bound_us = (bound_ms * 1000.0) as i64;
    loop {
        let s = snapshot(rt, state).await;
        let verdict = match &s {
            Err(f) => Err(f.message.clone()),
            Ok(s) => synced(s, alg, bound_us),
        };
        match verdict {
            Ok(worst) => {
                let s = s.expect("ok");
                let reference = match (&s.master, alg) {
                    (_, crate::protocol::Algorithm::Berkeley) | (None, _) => {
                        "the clients' mean".to_string()
                    }
                    (Some(m), _) => format!("master {} ({})", m.id, m.ip),
                };
                if out.json {
                    out.json(json!({"synced": true, "clients": s.rows.len(), "master": s.master, "reference": reference, "max_true_error_us": worst, "seconds": t0.elapsed().as_secs_f64()}));
                } else {
                    out.line(&format!(
                        "Clocks synced: {} clients within {} ms of {reference} after {:.1}s",
                        s.rows.len(),
                        ms(Some(worst)),
                        t0.elapsed().as_secs_f64()
                    ));
                }
                return Ok(0);
            }
            Err(why) => {
                if t0.elapsed() > timeout {
                    return Err(Failure::new(
                        exit::UNHEALTHY,
                        format!("not in sync after {}s: {why}", timeout.as_secs()),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn report(
    cfg: &ClusterConfig,
    state: &State,
    rt: &Runtime,
    duration: Duration,
    plot: Option<PathBuf>,
    out: &Out,
) -> CliResult<u8> {
    let store = redis(rt, state).await?;
    let alg = cfg.server.algorithm;
    let mut series = report::Series::default();
    let t0 = SystemClock.now_us();
    let until = Instant::now() + duration;
    out.line(&format!(
        "Sampling for {}s ({} algorithm)..",
        duration.as_secs(),
        alg.as_str()
    ));
    while Instant::now() < until {
        series.poll(&store).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let errs = series.errors(alg);
    let overall = report::Stats::of(errs.iter().map(|(_, _, e)| *e));
    let snap = snapshot(rt, state).await?;
    let reference = if alg == crate::protocol::Algorithm::Berkeley {
        "mean of all clients"
    } else {
        "master"
    };
    let mut rows = Vec::new();
    for r in &snap.rows {
        let Ok(id) = r.id.parse::<uuid::Uuid>() else {
            continue;
        };
        let st = report::Stats::of(errs.iter().filter(|(c, _, _)| *c == id).map(|(_, _, e)| *e));
        rows.push((r, st));
    }
    if let Some(path) = &plot {
        let title = format!(
            "{} algorithm, {} clients: true error vs {reference}",
            alg.as_str(),
            series.points.len()
        );
        let svg = plot::svg(&title, "error", &report::plot_series(&series, alg, t0, t0));
        std::fs::write(path, svg).map_err(|e| Error::io(path, e))?;
    }
    if out.json {
        out.json(json!({
            "algorithm": alg.as_str(), "reference": reference, "duration_s": duration.as_secs(),
            "overall": overall,
            "clients": rows.iter().map(|(r, st)| json!({"id": r.id, "ip": r.ip, "is_master": r.is_master,
                "estimated_offset_us": r.offset_to_master_us, "true_error": st})).collect::<Vec<_>>(),
            "plot": plot,
        }));
        return Ok(0);
    }
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "ID",
        "IP",
        "EST OFFSET ms",
        "TRUE ERR median µs",
        "p99 µs",
        "max µs",
        "SAMPLES",
    ]);
    for (r, st) in &rows {
        t.add_row([
            format!("{}{}", r.id, if r.is_master { " (master)" } else { "" }),
            r.ip.to_string(),
            ms(r.offset_to_master_us),
            st.median_us.to_string(),
            st.p99_us.to_string(),
            st.max_us.to_string(),
            st.samples.to_string(),
        ]);
    }
    out.line(&t.to_string());
    out.line(&format!(
        "algorithm={} reference={reference} clients={} median_us={} p99_us={} max_us={} samples={}",
        alg.as_str(),
        rows.len(),
        overall.median_us,
        overall.p99_us,
        overall.max_us,
        overall.samples
    ));
    if let Some(p) = plot {
        out.line(&format!("Plot written to {}", p.display()));
    }
    Ok(0)
}

/// `Ok(worst |true error|)` when every running client follows the master within `bound_us`.
fn synced(s: &Snapshot, alg: crate::protocol::Algorithm, bound_us: i64) -> Result<i64, String> {
    let clients: Vec<&ClientRow> = s.rows.iter().filter(|r| r.state == "running").collect();
    if clients.is_empty() {
        return Err("no running clients".into());
    }
    if s.nodes.iter().filter(|n| n.role == Role::Client).count() != clients.len() {
        return Err("some clients are not running".into());
    }
    let mut worst = 0;
    if alg == crate::protocol::Algorithm::Berkeley {
        // No master: every clock against the mean of all of them.
        let offsets: Vec<i64> = clients
            .iter()
            .map(|r| {
                s.reports
                    .iter()
                    .find(|x| x.report.id.to_string() == r.id)
                    .and_then(|x| x.report.true_offset_us)
                    .ok_or(format!("client {} has not reported yet", r.id))
            })
            .collect::<Result<_, _>>()?;
        let mean = offsets.iter().sum::<i64>() / offsets.len() as i64;
        worst = offsets.iter().map(|o| (o - mean).abs()).max().unwrap_or(0);
    } else {
        let m = s.master.as_ref().ok_or("no master yet")?;
        for r in clients {
            if r.master_id != Some(m.id) {
                return Err(format!("client {} does not follow the master yet", r.id));
            }
            let e = r
                .true_error_us
                .ok_or(format!("client {} has no error figure yet", r.id))?;
            worst = worst.max(e.abs());
        }
    }
    if worst > bound_us {
        return Err(format!(
            "worst error {} ms exceeds {} ms",
            ms(Some(worst)),
            ms(Some(bound_us))
        ));
    }
    Ok(worst)
}
