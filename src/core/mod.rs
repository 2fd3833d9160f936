//! The I/O-free core: everything time-sync *decides*, as plain values and state machines.
//!
//! Nothing here opens a socket, reads Redis, talks to the broker or parses a command line: the
//! wire format, the clocks and their discipline, the master election, the replicas' leader
//! election, the client's decisions and the Berkeley round all take their inputs (messages,
//! host-clock readings, elapsed time) as arguments and hand back what should happen. That keeps
//! them testable without any service, table-driven and on simulated networks, and it keeps the
//! I/O layers ([`crate::server`], [`crate::client`], [`crate::broker`], [`crate::cache`]) thin:
//! they only carry inputs in and outputs out.
//!
//! - [`protocol`]: messages, their one encode/decode point, and the names of queues, exchanges
//!   and keys.
//! - [`clock`]: the injected source of "now", the client's virtual clock, offset estimation and
//!   the step/slew discipline.
//! - [`master_election`]: which client is master (lowest IP, compared numerically).
//! - [`leader_election`]: which server replica leads (Bully with fenced epochs).
//! - [`client`]: a client's decisions: what to report and probe, how to apply what it hears.
//! - [`berkeley`]: the Berkeley algorithm: the fault-tolerant average and the coordinator's round.
//! - [`auth`], [`keyring`]: keys, and sealing and opening messages with them.
//! - [`logical`]: Lamport, vector and hybrid logical clocks.
//! - [`ntp`]: NTPv4 packets and the answer to each request a client's NTP service gets;
//!   [`upstream`]: following NTP servers (per-server estimates, falseticker rejection).

pub mod auth;
pub mod berkeley;
pub mod client;
pub mod clock;
pub mod keyring;
pub mod leader_election;
pub mod logical;
pub mod master_election;
pub mod ntp;
pub mod protocol;
pub mod upstream;

/// A setting that cannot work, with a message naming it and saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);
