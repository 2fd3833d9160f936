//! time-sync: cluster clock synchronization over RabbitMQ and Redis.
//!
//! Clients keep virtual clocks and report them every second; a server stores the reports in
//! Redis with a TTL, elects the live client with the lowest IP as master, and broadcasts the
//! master's time through a fanout exchange; clients step or slew toward it. Several server
//! replicas may run: all store reports, and the one elected leader (Bully, fenced by epochs)
//! schedules and broadcasts. `tsc` brings a whole cluster up on Docker (or as local processes)
//! and inspects it.
//!
//! # Layout
//! Layers, from the bottom (each imports only layers below it; see `docs/ARCHITECTURE.md`):
//! - [`core`]: the I/O-free core: the wire format ([`core::protocol`]), clocks and their
//!   discipline ([`core::clock`]), the master election, the replicas' leader election (Bully),
//!   the client's decisions, the Berkeley algorithm, NTP packets and answers ([`core::ntp`]).
//!   No sockets, no services, no flags.
//! - [`settings`]: every setting of `ts-server` and `ts-client`, declared once (flags, `TS_*`
//!   variables, cluster.toml, what the runtimes hand a node); [`error`], [`backoff`], [`net`],
//!   [`logging`], [`shutdown`]: plumbing.
//! - [`broker`] (RabbitMQ sessions and topology, over a list of broker nodes) and [`cache`]
//!   (the Redis report store, on one server or on the primary Sentinel names): the two
//!   services, as thin carriers.
//! - [`server`] (one replica: workers, election driver, leader-only scheduler and reference
//!   clock, HTTP API, metrics) and [`client`] (a client's broker session and NTP service).
//! - [`measure`]: true error of running clocks, percentiles, convergence, SVG plots: used by
//!   `tsc report`, the benchmarks and the tests.
//! - [`runtime`]: where a cluster's nodes run (Docker containers or local processes), its model
//!   (`cluster.toml`, `state.json`), its Redis (one server, or a primary, replicas and
//!   Sentinels), images, and private services for tests and benchmarks.
//! - [`cli`]: `tsc`, one file per command group; `cli::dashboard`, its live web page.

pub mod backoff;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod client;
pub mod core;
pub mod error;
pub mod keys;
pub mod logging;
pub mod measure;
pub mod net;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod shutdown;

pub use error::{Error, Result};
