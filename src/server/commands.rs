//! Operator commands on their way from the HTTP API to the leader's tasks.
//!
//! The API takes a command on any replica, checks the operator token, and (if this replica
//! leads) hands it to the task that carries it out: a time change to the scheduler, which
//! publishes it to clients; a Berkeley round to the reference. The answer comes back on a
//! oneshot channel, so the operator gets the exact outcome.

use crate::core::logical::Stamp;
use crate::core::protocol::TimeChange;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// "Set this client's time."
pub(crate) struct SetTimeRequest {
    pub client_id: Uuid,
    pub change: TimeChange,
    pub op_id: Uuid,
    /// The operator's stamp (tsc's Lamport counter), the cause of what follows.
    pub cause: Stamp,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// "Run a Berkeley round now"; answered with the round's number.
pub(crate) type RoundRequest = oneshot::Sender<Result<u64, String>>;

/// One channel per kind of command; the leader's task of each term takes the receiver.
pub(crate) struct Commands {
    pub set_time: mpsc::UnboundedSender<SetTimeRequest>,
    pub set_time_rx: Mutex<mpsc::UnboundedReceiver<SetTimeRequest>>,
    pub round: mpsc::UnboundedSender<RoundRequest>,
    pub round_rx: Mutex<mpsc::UnboundedReceiver<RoundRequest>>,
}

impl Default for Commands {
    fn default() -> Self {
        let (set_time, set_time_rx) = mpsc::unbounded_channel();
        let (round, round_rx) = mpsc::unbounded_channel();
        Commands {
            set_time,
            set_time_rx: Mutex::new(set_time_rx),
            round,
            round_rx: Mutex::new(round_rx),
        }
    }
}
