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
//! - [`protocol`]: queue, exchange and key names; the two messages; the one encode/decode point.
//! - [`clock`]: the injected [`clock::Clock`], the client's [`clock::VirtualClock`], and the
//!   step/slew [`clock::Discipline`].
//! - [`election`]: lowest-IP master election and the scheduler's decision (pure).
//! - [`broker`]: RabbitMQ connection with backoff, topology, reconnecting sessions.
//! - [`cache`]: the report store: Redis, and an in-memory twin for unit tests.
//! - [`leader`]: Bully leader election of the server replicas, as an I/O-free state machine.
//! - [`server`]: one replica: report workers, election driver, leader-only scheduler and
//!   reference clock, HTTP API, counters.
//! - [`client`]: the client's decisions ([`client::ClientCore`]) and its broker session.
//! - [`cli`]: `tsc` commands, cluster config and state, views, log tailing.
//! - [`runtime`]: where nodes run: Docker containers via bollard, or local processes; images.
//! - [`config`], [`backoff`], [`logging`], [`shutdown`], [`error`]: plumbing.

pub mod backoff;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod election;
pub mod error;
pub mod leader;
pub mod logging;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod shutdown;

pub use error::{Error, Result};
