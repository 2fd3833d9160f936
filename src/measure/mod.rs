//! Measuring running clocks against the truth: true errors, their percentiles, convergence,
//! and charts.
//!
//! Every process and container on one host reads the same host clock, so the `true_offset_us`
//! a client reports (its clock minus the host's) is exact, and so is the difference between two
//! clients. `tsc report`, the benchmarks and the integration tests all measure with this module,
//! so they agree on what "error" means.
//!
//! - [`offsets`]: [`TrueOffsets`], every client's true offset over time, read from Redis; errors
//!   against the master (or the clients' mean, for `berkeley`) at the same instant; convergence.
//! - [`stats`]: median, p99 and max of absolute errors.
//! - [`plot`]: an SVG line chart of errors over time, as a string.

pub mod offsets;
pub mod plot;
pub mod stats;

pub use offsets::{plot_lines, Coverage, TrueOffsets};
pub use stats::{percentile, Stats};
