//! `tsc keys rotate`: new keys for a running cluster, with no restart and no lost message.
//!
//! The rotation ([`crate::keys::rotate`]) writes every node's key directory three times:
//! first the new keys are accepted everywhere (the old ones still seal), then they seal (the
//! old ones still open), then the old ones go. Between the steps it waits a grace period, so
//! every node has reloaded its directory (they look every second) and every message sealed with
//! an old key has been delivered or has expired.

use super::output::{CliResult, Failure, Out};
use crate::keys::{rotate, ClusterKeys, RotationStep};
use crate::runtime::cluster::ClusterConfig;
use crate::runtime::write_all_keys;
use clap::Subcommand;
use serde_json::json;
use std::time::{Duration, Instant};

/// Default wait between the steps of a rotation (s): nodes reload their keys within a second,
/// and every message expires from its queue within two.
pub const DEFAULT_GRACE_SECS: u64 = 5;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Replace the leader key, the replica key and the cluster secret (and so every client's
    /// key) without stopping anything.
    Rotate {
        /// Seconds between the steps (accept, prefer, drop).
        #[arg(long, default_value_t = DEFAULT_GRACE_SECS)]
        grace: u64,
        /// Replace the operator token too (cluster.toml is updated).
        #[arg(long)]
        operator_token: bool,
    },
}

/// `tsc keys …`.
pub async fn keys(cfg: &ClusterConfig, cmd: KeysCommand, out: &Out) -> CliResult<u8> {
    let KeysCommand::Rotate {
        grace,
        operator_token,
    } = cmd;
    if grace == 0 {
        return Err(Failure::usage("--grace must be at least 1 second"));
    }
    let old = ClusterKeys::load(&cfg.keys_dir())?;
    let t0 = Instant::now();
    let token =
        operator_token.then(|| hex::encode(crate::core::auth::random_key(&mut rand::thread_rng())));
    let mut nodes = 0;
    let new = rotate(
        &old,
        token.as_deref(),
        Duration::from_secs(grace),
        |step, keys| {
            let n = write_all_keys(cfg, &keys);
            if let Ok(n) = n {
                nodes = n;
            }
            let what = match step {
                RotationStep::Accepted => "new keys accepted everywhere",
                RotationStep::Preferred => "new keys in use",
                RotationStep::Dropped => "old keys dropped",
            };
            out.line(&format!(
                "{what} ({} node key directories)",
                n.as_ref().map_or(0, |n| *n)
            ));
            async move { n.map(|_| ()) }
        },
    )
    .await?;
    if let Some(t) = &token {
        let mut c = cfg.clone();
        c.credentials.operator_token = t.clone();
        c.save()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    if out.json {
        out.json(json!({
            "leader_kid": new.leader[0].kid, "replica_kid": new.replica[0].kid,
            "cluster_kid": new.cluster[0].kid, "nodes": nodes, "seconds": secs,
            "operator_token_rotated": token.is_some(),
        }));
    } else {
        out.line(&format!(
            "Keys rotated in {secs:.1}s: leader key {}, replica key {}, cluster secret {}",
            new.leader[0].kid, new.replica[0].kid, new.cluster[0].kid
        ));
    }
    Ok(0)
}
