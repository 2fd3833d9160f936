//! The Berkeley algorithm (Gusella & Zatti's TEMPO): a coordinator polls every clock, averages
//! them fault-tolerantly, and tells each how far to move.
//!
//! - [`mod@average`]: the pure arithmetic of one round (round-trip compensation, the largest
//!   agreeing cluster, per-clock adjustments).
//! - [`mod@round`]: the coordinator's schedule as a state machine (polls, fastest answer per
//!   client, closing a round).

pub mod average;
pub mod round;

pub use average::{
    average, offset_from_poll, Average, BerkeleyConfig, Reading, DEFAULT_INCLUDE_COORDINATOR,
    DEFAULT_MAX_RTT_US, DEFAULT_MAX_SPREAD_US,
};
pub use round::{Coordinator, Output, RoundConfig, DEFAULT_POLLS, DEFAULT_SPACING};
