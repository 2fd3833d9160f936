//! What every task of one replica shares: configuration, identity, store, clock, keys, logical
//! clocks, counters, the event log's inbox and the shutdown signal.

use super::commands::Commands;
use super::metrics::{Counter, Metrics};
use crate::core::clock::Clock;
use crate::core::keyring::MissingKey;
use crate::core::logical::{NodeClocks, Stamp};
use crate::core::protocol::{Event, EventKind, ToClient};
use crate::keys::KeySource;
use crate::settings::ServerConfig;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Facts of an event, for programs.
pub type EventData = BTreeMap<String, serde_json::Value>;

/// The replica's configuration, identity, store, clock, keys, counters and shutdown signal.
pub(crate) struct ServerContext<S, C> {
    pub cfg: ServerConfig,
    /// This process's id, new at every start: it names the sender of every message.
    pub server_id: Uuid,
    pub store: S,
    pub clock: C,
    pub keys: KeySource,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// The replica's Lamport, hybrid and vector clocks.
    pub clocks: Mutex<NodeClocks>,
    /// Events on their way to the log ([`super::events`] writes them).
    pub events: mpsc::UnboundedSender<Event>,
    /// The epoch each client last reported following, and when: their median is the floor of
    /// the next epoch claim ([`ServerContext::epoch_floor`]).
    pub reported_epochs: Mutex<HashMap<Uuid, (u64, Instant)>>,
    /// Operator commands for the leader's tasks.
    pub commands: Commands,
}

impl<S, C: Clock> ServerContext<S, C> {
    /// This replica's name in the event log.
    pub fn node(&self) -> String {
        format!("server-{}", self.cfg.node.replica_id)
    }

    /// Stamps a send or a local event.
    pub fn stamp(&self) -> Stamp {
        let pt = self.clock.now_us();
        self.clocks.lock().expect("not poisoned").tick(Some(pt))
    }

    /// Takes in the stamp of a client's message. Its vector clock, if it has one, is ignored:
    /// vector clocks are the replicas', and a client must not put entries into them.
    pub fn observe_client(&self, remote: &Stamp) -> Stamp {
        self.observe(&Stamp {
            vc: None,
            ..remote.clone()
        })
    }

    /// Takes in the logical clocks of a received (authenticated) message; returns the receive
    /// event's stamp.
    pub fn observe(&self, remote: &Stamp) -> Stamp {
        let pt = self.clock.now_us();
        let mut c = self.clocks.lock().expect("not poisoned");
        let before = c.hlc_refused();
        let stamp = c.observe(remote, Some(pt));
        if c.hlc_refused() > before {
            self.metrics.inc(Counter::HlcRefused);
        }
        stamp
    }

    /// Records an event of this replica in the cluster's log; `cause` is the stamp of the
    /// message that caused it, if one did.
    pub fn record(&self, kind: EventKind, text: String, data: EventData, cause: Option<Stamp>) {
        self.record_at(self.stamp(), kind, text, data, cause);
    }

    /// Records an event that already has its stamp: the sending of a message, whose event
    /// must carry the stamp the message carried, so that what the receiver logs for it comes
    /// after it in Lamport order.
    pub fn record_at(
        &self,
        stamp: Stamp,
        kind: EventKind,
        text: String,
        data: EventData,
        cause: Option<Stamp>,
    ) {
        let event = Event {
            kind,
            node: self.node(),
            stamp,
            cause,
            text,
            data,
        };
        // The writer ends only at shutdown; an event then is not worth an error.
        let _ = self.events.send(event);
    }

    /// A message to clients, stamped and signed with the leader key. Clients get the Lamport
    /// counter and the HLC; the vector clock is for replicas and the event log.
    pub fn seal_to_clients(&self, msg: ToClient) -> Result<Vec<u8>, MissingKey> {
        self.seal_to_clients_stamped(msg).map(|(sealed, _)| sealed)
    }

    /// [`Self::seal_to_clients`], also returning the send event's stamp (vector clock
    /// included), for [`Self::record_at`].
    pub fn seal_to_clients_stamped(
        &self,
        mut msg: ToClient,
    ) -> Result<(Vec<u8>, Stamp), MissingKey> {
        let stamp = self.stamp();
        *msg.stamp_mut() = Stamp {
            vc: None,
            ..stamp.clone()
        };
        Ok((self.keys.get().seal_to_clients(&msg)?, stamp))
    }

    /// Notes the epoch a client follows (from its report).
    pub fn saw_epoch(&self, client: Uuid, epoch: u64) {
        let mut seen = self.reported_epochs.lock().expect("not poisoned");
        seen.insert(client, (epoch, Instant::now()));
    }

    /// The epoch that most live clients follow: the median of what each reported within the
    /// last TTL (0: no client). Clients follow only epochs a leader signed, so this is an epoch
    /// that was really used, and the next claim must go above it even if Redis lost its count.
    /// A median, so that no one client (whatever its own key lets it report) can move it.
    pub fn epoch_floor(&self) -> u64 {
        let ttl = self.cfg.settings.ttl();
        let mut seen = self.reported_epochs.lock().expect("not poisoned");
        seen.retain(|_, (_, at)| at.elapsed() < ttl);
        let mut epochs: Vec<u64> = seen.values().map(|(e, _)| *e).collect();
        if epochs.is_empty() {
            return 0;
        }
        let mid = (epochs.len() - 1) / 2;
        *epochs.select_nth_unstable(mid).1
    }
}
