//! The Bully algorithm as an I/O-free state machine.
//!
//! The driver feeds it time ([`Bully::tick`]), messages ([`Bully::step`]), the epoch store's
//! answers ([`Bully::on_epoch`]) and undeliverable addresses ([`Bully::on_unreachable`]), and
//! carries out what it asks for ([`Bully::drain`]): broadcasts, direct sends, "give me an
//! epoch", and "you lead now" / "stop leading". Nothing here blocks or reads a clock, so the
//! tests below run whole clusters on a simulated network that drops, delays and reorders.
//!
//! Rules (Garcia-Molina's Bully, with epochs for fencing):
//! - Replicas are ordered by [`Rank`] = (priority, id), compared as numbers; the highest live
//!   one should lead.
//! - A replica starts an election when it starts, when its leader is silent for
//!   `leader_timeout`, when a direct send to its leader is unroutable (the leader's queue is
//!   gone: its process died), when the leader resigns, when a lower-ranked replica starts one,
//!   when it sees a lower-ranked leader, and on request. It broadcasts ELECTION; every live
//!   replica that outranks it ANSWERs. Without an answer within `answer_timeout` it claims
//!   leadership: it asks the epoch store for a fresh epoch, and leads once it has one. With an
//!   answer it waits `coordinator_timeout` for a COORDINATOR and otherwise starts over, so an
//!   election always ends.
//! - A leader broadcasts COORDINATOR when it takes office and heartbeats every `heartbeat`.
//!   Anything from an epoch lower than the one a replica follows is ignored; a leader that sees
//!   a higher epoch steps down (and, if it outranks the new leader, bullies it out with an
//!   election of its own, which yields a still higher epoch).

use crate::core::protocol::{
    Answer, Coordinator, Election, EventKind, Heartbeat, ReplicaRole, Resign, Stamp, ToReplica,
    PROTOCOL_VERSION,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::info;

pub use super::timing::BullyConfig;

/// A replica not heard from for this many leader timeouts is forgotten.
const FORGET_AFTER_TIMEOUTS: u32 = 20;

/// A replica's place in the election order: higher priority wins, then higher id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Rank {
    pub priority: u64,
    pub id: u64,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Publish to every replica.
    Broadcast(ToReplica),
    /// Publish to one replica, *mandatory*: if no queue takes it, call
    /// [`Bully::on_unreachable`].
    Send(u64, ToReplica),
    /// Take a fresh epoch above `at_least` from the epoch store and call [`Bully::on_epoch`].
    AcquireEpoch { at_least: u64 },
    /// Start leading (scheduler, reference clock) with this epoch.
    Lead(u64),
    /// Stop leading at once.
    StepDown,
    /// Something worth the cluster's event log happened (an election started, a deposed
    /// leader's message was refused).
    Event(EventKind, String),
}

/// Where the replica is in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Follower,
    /// ELECTION sent at `since`; `answered`: when an outranking replica answered.
    Electing {
        since: Duration,
        answered: Option<Duration>,
    },
    /// Won; waiting for the epoch store since `since`.
    Claiming {
        since: Duration,
    },
    Leader,
}

/// Another replica as last heard of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peer {
    pub id: u64,
    pub priority: u64,
    pub role: ReplicaRole,
    pub epoch: u64,
    pub leader: Option<u64>,
    /// When it was last heard from (driver time).
    #[serde(skip)]
    pub last_heard: Duration,
}

/// The election as others can see it (`GET /electionStatus`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ElectionStatus {
    pub in_progress: bool,
    /// `idle`, `waiting_for_answers`, `waiting_for_coordinator` or `claiming_epoch`.
    pub phase: &'static str,
    /// How long the current election has run (ms).
    pub running_ms: Option<u64>,
    /// Elections this replica started since this state machine was created.
    pub started: u64,
    /// Of those, how many it won.
    pub won: u64,
}

/// One replica's Bully state.
#[derive(Debug)]
pub struct Bully {
    cfg: BullyConfig,
    phase: Phase,
    /// Epoch of the term this replica is in: its own as leader, else its leader's.
    epoch: u64,
    /// Highest epoch seen in any message or acquired.
    max_epoch: u64,
    /// The leader followed (or self) and when it was last heard from.
    leader: Option<(Rank, Duration)>,
    peers: BTreeMap<u64, Peer>,
    next_heartbeat: Duration,
    started: u64,
    won: u64,
    election_started_at: Duration,
    /// Resigned for shutdown: takes no further part.
    retired: bool,
    /// The highest deposed epoch already reported as refused (0: none).
    refused_epoch: u64,
    out: Vec<Output>,
}

impl Bully {
    /// A replica that has just (re)joined at `now`, knowing of epochs up to `seen_epoch`. It
    /// starts an election right away, as Bully prescribes for a recovering process.
    pub fn new(cfg: BullyConfig, now: Duration, seen_epoch: u64) -> Self {
        let mut b = Bully {
            cfg,
            phase: Phase::Follower,
            epoch: 0,
            max_epoch: seen_epoch,
            leader: None,
            peers: BTreeMap::new(),
            next_heartbeat: now,
            started: 0,
            won: 0,
            election_started_at: now,
            retired: false,
            refused_epoch: 0,
            out: Vec::new(),
        };
        b.start_election(now, "starting up");
        b
    }

    pub fn rank(&self) -> Rank {
        self.cfg.rank()
    }

    pub fn role(&self) -> ReplicaRole {
        match self.phase {
            Phase::Follower => ReplicaRole::Follower,
            Phase::Electing { .. } | Phase::Claiming { .. } => ReplicaRole::Candidate,
            Phase::Leader => ReplicaRole::Leader,
        }
    }

    /// The current term's epoch (own as leader, else the followed leader's; 0: none yet).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The highest epoch seen anywhere.
    pub fn max_epoch(&self) -> u64 {
        self.max_epoch
    }

    /// The leader followed (self when leading).
    pub fn leader(&self) -> Option<u64> {
        self.leader.map(|(r, _)| r.id)
    }

    /// How long ago the leader was last heard from.
    pub fn leader_age(&self, now: Duration) -> Option<Duration> {
        self.leader.map(|(_, t)| now.saturating_sub(t))
    }

    /// Every other replica heard from recently, by id.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Whether a peer heard from at `last_heard` still counts as alive at `now`.
    pub fn is_alive(&self, last_heard: Duration, now: Duration) -> bool {
        now.saturating_sub(last_heard) <= self.cfg.leader_timeout
    }

    pub fn election_status(&self, now: Duration) -> ElectionStatus {
        let phase = match self.phase {
            Phase::Follower | Phase::Leader => "idle",
            Phase::Electing { answered: None, .. } => "waiting_for_answers",
            Phase::Electing { .. } => "waiting_for_coordinator",
            Phase::Claiming { .. } => "claiming_epoch",
        };
        let in_progress = self.role() == ReplicaRole::Candidate;
        ElectionStatus {
            in_progress,
            phase,
            running_ms: in_progress
                .then(|| now.saturating_sub(self.election_started_at).as_millis() as u64),
            started: self.started,
            won: self.won,
        }
    }

    /// Takes what the driver must do, in order.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Starts an election on request; `false` if one is already running.
    pub fn request_election(&mut self, now: Duration) -> bool {
        if self.role() == ReplicaRole::Candidate {
            return false;
        }
        self.start_election(now, "requested");
        true
    }

    /// Advances time: heartbeats, timeouts.
    pub fn tick(&mut self, now: Duration) {
        if self.retired {
            return;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.cfg.heartbeat;
            let hb = self.heartbeat();
            self.out.push(Output::Broadcast(hb.clone()));
            // The same heartbeat sent straight to the leader is the crash detector: once the
            // leader's process is gone, so is its queue, and the broker returns the message.
            if let (Phase::Follower, Some((leader, _))) = (self.phase, self.leader) {
                self.out.push(Output::Send(leader.id, hb));
            }
        }
        let forget = self.cfg.leader_timeout * FORGET_AFTER_TIMEOUTS;
        self.peers
            .retain(|_, p| now.saturating_sub(p.last_heard) <= forget);
        match self.phase {
            Phase::Follower => match self.leader {
                None => self.start_election(now, "no leader"),
                Some((_, heard)) if now.saturating_sub(heard) > self.cfg.leader_timeout => {
                    self.start_election(now, "leader silent past the timeout")
                }
                Some(_) => {}
            },
            Phase::Electing {
                since,
                answered: None,
            } if now.saturating_sub(since) >= self.cfg.answer_timeout => self.claim(now),
            Phase::Electing {
                answered: Some(at), ..
            } if now.saturating_sub(at) >= self.cfg.coordinator_timeout => {
                self.start_election(now, "no coordinator after an answer")
            }
            Phase::Claiming { since } if now.saturating_sub(since) >= self.cfg.leader_timeout => {
                self.start_election(now, "no epoch from the store")
            }
            // A leader hears itself: its heartbeat age is zero.
            Phase::Leader => self.leader = Some((self.rank(), now)),
            _ => {}
        }
    }

    /// Handles a message from another replica.
    pub fn step(&mut self, msg: &ToReplica, now: Duration) {
        let from = msg.from();
        if from == self.cfg.id || self.retired {
            return; // our own broadcast, looped back
        }
        match msg {
            ToReplica::Election(e) => {
                let r = Rank {
                    priority: e.priority,
                    id: e.from,
                };
                self.see(r, ReplicaRole::Candidate, None, now);
                if r < self.rank() {
                    self.out.push(Output::Send(
                        e.from,
                        ToReplica::Answer(Answer {
                            v: PROTOCOL_VERSION,
                            from: self.cfg.id,
                            priority: self.cfg.priority,
                            stamp: Stamp::default(),
                        }),
                    ));
                    match self.phase {
                        // A leader re-asserts its term to the newcomer instead of starting over.
                        Phase::Leader => {
                            let c = self.coordinator();
                            self.out.push(Output::Send(e.from, c));
                        }
                        Phase::Follower => self.start_election(now, "a lower replica elects"),
                        Phase::Electing { .. } | Phase::Claiming { .. } => {}
                    }
                }
            }
            ToReplica::Answer(a) => {
                let r = Rank {
                    priority: a.priority,
                    id: a.from,
                };
                self.see(r, ReplicaRole::Follower, None, now);
                if let Phase::Electing {
                    since,
                    answered: None,
                } = self.phase
                {
                    if r > self.rank() {
                        self.phase = Phase::Electing {
                            since,
                            answered: Some(now),
                        };
                    }
                }
            }
            ToReplica::Coordinator(c) => {
                let r = Rank {
                    priority: c.priority,
                    id: c.from,
                };
                self.see(r, ReplicaRole::Leader, Some(c.epoch), now);
                self.on_leader(r, c.epoch, now);
            }
            ToReplica::Heartbeat(h) => {
                let r = Rank {
                    priority: h.priority,
                    id: h.from,
                };
                self.see(r, h.role, Some(h.epoch), now);
                if let Some(p) = self.peers.get_mut(&h.from) {
                    p.leader = h.leader;
                }
                if h.role == ReplicaRole::Leader {
                    self.on_leader(r, h.epoch, now);
                } else if self.phase == Phase::Leader && h.epoch > self.epoch {
                    // A follower knows of a newer term than ours: we were deposed while away.
                    self.step_down();
                    self.leader = None;
                    self.start_election(now, "a replica follows a newer epoch");
                }
            }
            ToReplica::Resign(r) => {
                if let Some(p) = self.peers.get_mut(&r.from) {
                    p.role = ReplicaRole::Follower;
                }
                if self.leader.is_some_and(|(l, _)| l.id == r.from) && r.epoch >= self.epoch {
                    self.leader = None;
                    if self.phase == Phase::Follower {
                        self.start_election(now, "the leader resigned");
                    }
                }
            }
        }
    }

    /// An epoch learnt outside the election at `now` (the one clients follow): the next claim
    /// goes above it, so a leader elected after the epoch store lost its count is not fenced
    /// off by clients that remember a higher one. A leader below it leads nobody (clients
    /// refuse lower epochs): it steps down and elects again, which claims above it.
    pub fn observe_epoch(&mut self, epoch: u64, now: Duration) {
        self.max_epoch = self.max_epoch.max(epoch);
        if self.phase == Phase::Leader && epoch > self.epoch && !self.retired {
            let why = format!("clients follow epoch {epoch}, above ours ({})", self.epoch);
            self.step_down();
            self.leader = None;
            self.start_election(now, &why);
        }
    }

    /// The epoch store answered a claim.
    pub fn on_epoch(&mut self, epoch: u64, now: Duration) {
        if !matches!(self.phase, Phase::Claiming { .. }) {
            return; // the claim was overtaken (an outranking leader appeared); the epoch is void
        }
        if epoch <= self.max_epoch {
            // A newer term started while we asked; ours would be stale on arrival.
            self.out.push(Output::AcquireEpoch {
                at_least: self.max_epoch,
            });
            return;
        }
        self.phase = Phase::Leader;
        self.epoch = epoch;
        self.max_epoch = epoch;
        self.leader = Some((self.rank(), now));
        self.won += 1;
        info!(replica = self.cfg.id, epoch, "elected leader");
        let c = self.coordinator();
        self.out.push(Output::Broadcast(c));
        self.out.push(Output::Lead(epoch));
        self.next_heartbeat = now; // heartbeat at the next tick
    }

    /// A direct send to `id` found no queue: that replica is gone.
    pub fn on_unreachable(&mut self, id: u64, now: Duration) {
        self.peers.remove(&id);
        if self.phase == Phase::Follower && self.leader.is_some_and(|(l, _)| l.id == id) {
            self.leader = None;
            self.start_election(now, "the leader's queue is gone");
        }
    }

    /// A clean shutdown: a leader says goodbye so followers need not wait out the timeout.
    /// Whatever its role, the replica takes no further part (it would only answer elections
    /// it can no longer win).
    pub fn resign(&mut self) {
        self.retired = true;
        if self.phase == Phase::Leader {
            self.out.push(Output::Broadcast(ToReplica::Resign(Resign {
                v: PROTOCOL_VERSION,
                from: self.cfg.id,
                epoch: self.epoch,
                stamp: Stamp::default(),
            })));
            self.step_down();
        }
    }

    /// A COORDINATOR, or a leader's heartbeat, from `r` for `epoch`.
    fn on_leader(&mut self, r: Rank, epoch: u64, now: Duration) {
        if epoch < self.epoch {
            // A deposed leader still talking: said once per deposed epoch.
            if self.refused_epoch < epoch || self.refused_epoch == 0 {
                self.refused_epoch = epoch;
                self.out.push(Output::Event(
                    EventKind::FencingRefused,
                    format!(
                        "refused replica {} leading deposed epoch {epoch} (following {})",
                        r.id, self.epoch
                    ),
                ));
            }
            return;
        }
        let me = self.rank();
        match self.phase {
            // Our own election will supersede a lower-ranked claimant with a higher epoch.
            Phase::Electing { .. } | Phase::Claiming { .. } if r < me => return,
            // Equal epochs never happen with one epoch store; if its data was lost, rank decides.
            Phase::Leader if epoch == self.epoch && r < me => return,
            Phase::Leader => self.step_down(),
            _ => {}
        }
        let new_term = epoch > self.epoch || self.leader.map(|(l, _)| l) != Some(r);
        self.epoch = epoch;
        self.leader = Some((r, now));
        self.phase = Phase::Follower;
        if new_term {
            info!(replica = self.cfg.id, leader = r.id, epoch, "following");
        }
        if r < me {
            self.start_election(now, "a lower replica leads");
        }
    }

    fn start_election(&mut self, now: Duration, why: &str) {
        if self.phase == Phase::Leader {
            self.step_down();
        }
        self.started += 1;
        self.election_started_at = now;
        info!(replica = self.cfg.id, reason = why, "starting an election");
        self.out.push(Output::Event(
            EventKind::ElectionStarted,
            format!("started an election: {why}"),
        ));
        self.phase = Phase::Electing {
            since: now,
            answered: None,
        };
        self.out
            .push(Output::Broadcast(ToReplica::Election(Election {
                v: PROTOCOL_VERSION,
                from: self.cfg.id,
                priority: self.cfg.priority,
                stamp: Stamp::default(),
            })));
    }

    fn claim(&mut self, now: Duration) {
        self.phase = Phase::Claiming { since: now };
        self.out.push(Output::AcquireEpoch {
            at_least: self.max_epoch,
        });
    }

    fn step_down(&mut self) {
        info!(replica = self.cfg.id, epoch = self.epoch, "stepping down");
        self.phase = Phase::Follower;
        self.out.push(Output::StepDown);
    }

    fn see(&mut self, r: Rank, role: ReplicaRole, epoch: Option<u64>, now: Duration) {
        if let Some(e) = epoch {
            self.max_epoch = self.max_epoch.max(e);
        }
        let p = self.peers.entry(r.id).or_insert(Peer {
            id: r.id,
            priority: r.priority,
            role,
            epoch: 0,
            leader: None,
            last_heard: now,
        });
        p.priority = r.priority;
        p.role = role;
        p.last_heard = now;
        if let Some(e) = epoch {
            p.epoch = e;
        }
    }

    fn heartbeat(&self) -> ToReplica {
        ToReplica::Heartbeat(Heartbeat {
            v: PROTOCOL_VERSION,
            from: self.cfg.id,
            priority: self.cfg.priority,
            role: self.role(),
            epoch: self.epoch,
            leader: self.leader(),
            stamp: Stamp::default(),
        })
    }

    fn coordinator(&self) -> ToReplica {
        ToReplica::Coordinator(Coordinator {
            v: PROTOCOL_VERSION,
            from: self.cfg.id,
            priority: self.cfg.priority,
            epoch: self.epoch,
            stamp: Stamp::default(),
        })
    }
}

#[cfg(test)]
mod tests;
