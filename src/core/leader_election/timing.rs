//! A replica's identity and election timing: the defaults and the rules that make them work.

use super::bully::Rank;
use crate::core::InvalidSetting;
use std::time::Duration;

/// Default time between heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default silence after which a follower gives its leader up.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Default wait for an ANSWER before claiming leadership. Replicas answer in about a
/// millisecond through the broker; the margin is for loaded machines.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// Default wait, after an ANSWER, for the winner's COORDINATOR before starting over.
pub const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(2);
/// Timing and identity of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct BullyConfig {
    pub id: u64,
    pub priority: u64,
    pub heartbeat: Duration,
    pub leader_timeout: Duration,
    pub answer_timeout: Duration,
    pub coordinator_timeout: Duration,
}

impl BullyConfig {
    /// Default timing for replica `id`.
    pub fn new(id: u64, priority: u64) -> Self {
        BullyConfig {
            id,
            priority,
            heartbeat: HEARTBEAT_INTERVAL,
            leader_timeout: LEADER_TIMEOUT,
            answer_timeout: ANSWER_TIMEOUT,
            coordinator_timeout: COORDINATOR_TIMEOUT,
        }
    }

    /// Rejects timing that cannot work: a timeout no longer than the heartbeat would depose
    /// healthy leaders.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.heartbeat.is_zero() || self.answer_timeout.is_zero() {
            return Err(InvalidSetting(
                "heartbeat and answer timeout must be positive".into(),
            ));
        }
        if self.leader_timeout < self.heartbeat * 2 {
            return Err(InvalidSetting(format!(
                "leader timeout ({} ms) must be at least twice the heartbeat interval ({} ms)",
                self.leader_timeout.as_millis(),
                self.heartbeat.as_millis()
            )));
        }
        if self.coordinator_timeout < self.answer_timeout {
            return Err(InvalidSetting(
                "coordinator timeout must not be shorter than the answer timeout".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn rank(&self) -> Rank {
        Rank {
            priority: self.priority,
            id: self.id,
        }
    }
}
