//! `tsc`: bring up, inspect and tear down a time-sync cluster.
//!
//! Commands are written once against [`crate::runtime::Runtime`], so they behave the same on
//! Docker and as local processes. Cluster facts come from two places: the runtime (which nodes
//! exist and run) and Redis (what clients report, who is master, server counters). Tables are
//! for people; `--json` prints one JSON document for scripts. Exit codes are in
//! [`output::exit`].
//!
//! This file is the command line and its dispatch; each command group has a file of its own:
//! [`lifecycle`] (init, bootstrap, teardown), [`clients`], [`servers`], [`redis`], [`status`] (status,
//! wait), [`report`], [`tail`], [`events`], [`keys`], [`dashboard`] (a web page with controls);
//! [`operator`] carries commands to the replicas' HTTP API. [`snapshot`] reads a running cluster, [`view`] joins what it
//! read into rows, and [`verdict`] judges health and sync.

pub mod brokers;
pub mod clients;
pub mod dashboard;
pub mod events;
pub mod keys;
pub mod lifecycle;
pub mod operator;
pub mod output;
pub mod redis;
pub mod report;
pub mod servers;
pub mod snapshot;
pub mod status;
pub mod tail;
pub mod verdict;
pub mod view;

use crate::error::Error;
use crate::runtime::cluster::{self, ClusterConfig, RuntimeKind, State};
use clap::{Parser, Subcommand};
use output::{exit, CliResult, Failure, Out};
use std::path::PathBuf;
use std::time::Duration;

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
        /// Workers per server replica (default: cluster.toml's server.workers).
        #[arg(short = 'w', long = "workers")]
        workers: Option<usize>,
        /// Redis replicas (up to 2); with any, three Sentinels fail Redis over when its
        /// primary dies, and everyone follows.
        #[arg(long = "redis-replicas", default_value_t = 0)]
        redis_replicas: usize,
        /// RabbitMQ nodes (default: cluster.toml's broker.nodes, 1): 3 form a cluster whose
        /// reports queue is a quorum queue; everyone fails over between its nodes.
        #[arg(long = "brokers")]
        brokers: Option<usize>,
    },
    /// Inspect and manage clients.
    Clients {
        #[command(subcommand)]
        command: clients::ClientsCommand,
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
    /// Inspect the RabbitMQ nodes; kill and start one (drills).
    Brokers {
        #[command(subcommand)]
        command: brokers::BrokersCommand,
    },
    /// Inspect the Redis servers and Sentinels; kill and start a server (drills).
    Redis {
        #[command(subcommand)]
        command: redis::RedisCommand,
    },
    /// Services, server, clients, master and health; exit code 6 when unhealthy.
    Status,
    /// Wait until every client follows the master within a bound; exit code 6 on timeout.
    Wait {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Largest acceptable error to the master, in milliseconds (see `--by`).
        #[arg(long, default_value_t = 5.0)]
        bound_ms: f64,
        /// What must be within the bound: `true`, the true error (exact when every client
        /// shares this host's clock), or `eps`, each client's own error bound ε
        /// (`max_error_us`), which needs no shared clock.
        #[arg(long, value_enum, default_value_t = status::Measure::True)]
        by: status::Measure,
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
    /// The cluster's event log in causal order (-f: follow; --explain-master: the master's story).
    Events(events::EventsArgs),
    /// Serve a live web page of the cluster, with controls (ctrl-c stops it).
    Dashboard(dashboard::DashboardArgs),
    /// Rotate the cluster's keys without stopping it.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Remove every container, network, process, vhost the cluster created (nothing else).
    Teardown,
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Show a server replica's log (default: the leader's).
    Tail(tail::ServerTailArgs),
}

/// Runs one tsc command; `Ok` carries the exit code for commands that report health.
pub async fn run(cli: Cli) -> CliResult<u8> {
    let out = Out::new(cli.json);
    let home = cluster::resolve_home(cli.home.as_deref());
    if let Command::Init { path } = &cli.command {
        let target = path.clone().unwrap_or(home);
        return lifecycle::init(&target, cli.home.is_none(), &out);
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
            redis_replicas,
            brokers,
        } => {
            let n = lifecycle::Sizes {
                clients,
                servers,
                workers,
                redis_replicas,
                brokers: brokers.unwrap_or(cfg.broker.nodes),
            };
            let bootstrap = lifecycle::bootstrap(&cfg, &mut state, cli.runtime, n, &out);
            tokio::select! {
                // First, so that the handler is installed before bootstrap's first step runs.
                biased;
                _ = tokio::signal::ctrl_c() => {
                    // The half-done bootstrap is dropped here; what it started is in `state`
                    // and carries the cluster's labels, so teardown finds all of it.
                    out.line("Interrupted: removing what bootstrap started..");
                    let message = match lifecycle::teardown(&cfg, &mut state, cli.runtime, &out).await {
                        Ok(()) => "bootstrap interrupted; nothing it started is left".to_string(),
                        Err(f) => format!(
                            "bootstrap interrupted, and removing what it started failed: {}\n`tsc teardown` tries again",
                            f.message
                        ),
                    };
                    Err(Failure::new(exit::INTERRUPTED, message))
                }
                done = bootstrap => done.map(|()| 0),
            }
        }
        Command::Teardown => {
            lifecycle::teardown(&cfg, &mut state, cli.runtime, &out).await?;
            Ok(0)
        }
        Command::Keys { command } => keys::keys(&cfg, command, &out).await,
        command => {
            if let Command::Dashboard(a) = &command {
                dashboard::check_addr(&a.addr, &cfg.credentials.operator_token)?;
            }
            let rt = snapshot::open(&cfg, &state).await?;
            match command {
                Command::Clients { command } => {
                    clients::clients(&cfg, &mut state, &rt, command, &out).await
                }
                Command::Server {
                    command: ServerCommand::Tail(a),
                } => {
                    tail::server_tail(&cfg, &rt, &state, &a).await?;
                    Ok(0)
                }
                Command::Servers { command } => {
                    servers::servers(&cfg, &mut state, &rt, command, &out).await
                }
                Command::Redis { command } => redis::redis(&mut state, &rt, command, &out).await,
                Command::Brokers { command } => {
                    brokers::brokers(&mut state, &rt, command, &out).await
                }
                Command::Status => status::status(&cfg, &state, &rt, &out).await,
                Command::Wait {
                    timeout,
                    bound_ms,
                    by,
                } => {
                    let timeout = Duration::from_secs(timeout);
                    let how = status::WaitFor {
                        alg: cfg.server.algorithm,
                        interval: cfg.client.interval(),
                        timeout,
                        bound_ms,
                        by,
                    };
                    status::wait(&state, &rt, how, &out).await
                }
                Command::Report { duration, plot } => {
                    let duration = Duration::from_secs(duration);
                    report::report(&cfg, &state, &rt, duration, plot, &out).await
                }
                Command::Events(args) => events::events(&rt, &state, args, &out).await,
                Command::Dashboard(args) => {
                    dashboard::dashboard(&cfg, rt, &state, args, &out).await
                }
                Command::Init { .. }
                | Command::Bootstrap { .. }
                | Command::Teardown
                | Command::Keys { .. } => unreachable!("handled above"),
            }
        }
    }
}
