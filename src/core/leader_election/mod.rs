//! Server replicas' leader election (Bully) with fenced terms.
//!
//! Several `ts-server` replicas run at once. All of them consume and store reports; only the
//! leader runs the scheduler (master election and broadcasts) and the reference clock (probe
//! answers, Berkeley rounds), because those need *one* clock and *one* voice.
//!
//! [`Bully`] decides, without I/O; [`crate::server`] carries its messages over the
//! `ts.control` exchange and takes epochs from Redis. Every leader term has its own epoch,
//! stamped on everything the leader sends; clients and replicas ignore lower epochs, so a
//! leader that was paused and wakes up cannot move anyone's clock.

mod bully;
mod timing;

pub use bully::{Bully, BullyConfig, ElectionStatus, Output, Peer, Rank};
pub use timing::{ANSWER_TIMEOUT, COORDINATOR_TIMEOUT, HEARTBEAT_INTERVAL, LEADER_TIMEOUT};
