//! Logical time: what orders the cluster's events when physical clocks cannot.
//!
//! time-sync moves physical clocks all the time: a follower stepped back 3 ms would stamp its
//! next event "before" the event that caused it. Three logical clocks make the cluster's story
//! trustworthy anyway:
//!
//! - [`Lamport`] (every process, every message): if an event may have caused another, the
//!   cause's counter is smaller.
//! - [`VectorClock`] (server replicas, on their control messages): tells *ordered* events from
//!   *concurrent* ones (two elections started at once), which a Lamport counter cannot.
//! - [`Hlc`], a hybrid logical clock (Kulkarni et al., 2014; every event): a physical time in µs
//!   from the node's disciplined clock, plus a counter for ties. It orders causally like
//!   Lamport, never goes backwards when the physical clock is stepped back, and stays within a
//!   bounded distance of physical time, so its timestamps read as times of day.

mod hlc;
mod lamport;
mod node;
mod stamp;
mod vector;

pub use hlc::{Hlc, HlcClock, DEFAULT_MAX_OFFSET_US};
pub use lamport::Lamport;
pub use node::NodeClocks;
pub use stamp::Stamp;
pub use vector::{Causality, VectorClock, MAX_ENTRIES as MAX_VC_ENTRIES};
