//! A simulated cluster: replicas that crash, pause and restart, on a network that drops,
//! delays and reorders, with one epoch store. Invariants are checked after every event.

use super::*;
use crate::core::leader_election::{ANSWER_TIMEOUT, HEARTBEAT_INTERVAL, LEADER_TIMEOUT};
use crate::core::protocol::Stamp;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const STEP: Duration = Duration::from_millis(10);

/// What a delivered event does to its replica.
type Handler = Box<dyn FnOnce(&mut Bully)>;

#[derive(Clone, Copy)]
struct Net {
    drop: f64,
    min_delay: Duration,
    max_delay: Duration,
}

const CLEAN: Net = Net {
    drop: 0.0,
    min_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(2),
};

enum Event {
    Msg { to: u64, msg: ToReplica },
    Unreachable { at: u64, to: u64 },
    Epoch { at: u64, epoch: u64 },
}

struct Replica {
    bully: Option<Bully>,
    paused: bool,
    priority: u64,
    /// The epoch this replica leads with, as its driver sees it.
    leading: Option<u64>,
    /// Highest epoch accepted from any leader, as a client of this replica would.
    followed: u64,
}

struct Sim {
    now: Duration,
    rng: SmallRng,
    net: Net,
    replicas: BTreeMap<u64, Replica>,
    queue: Vec<(Duration, u64, Event)>,
    seq: u64,
    store: u64,
    /// Every epoch any replica led with, and who.
    terms: BTreeMap<u64, u64>,
}

impl Sim {
    fn new(seed: u64, net: Net, replicas: &[(u64, u64)]) -> Sim {
        let mut sim = Sim {
            now: Duration::ZERO,
            rng: SmallRng::seed_from_u64(seed),
            net,
            replicas: BTreeMap::new(),
            queue: Vec::new(),
            seq: 0,
            store: 0,
            terms: BTreeMap::new(),
        };
        for &(id, priority) in replicas {
            sim.replicas.insert(
                id,
                Replica {
                    bully: None,
                    paused: false,
                    priority,
                    leading: None,
                    followed: 0,
                },
            );
            sim.start(id);
        }
        sim
    }

    fn start(&mut self, id: u64) {
        let r = self.replicas.get_mut(&id).unwrap();
        r.bully = Some(Bully::new(BullyConfig::new(id, r.priority), self.now, 0));
        r.leading = None;
        self.flush(id);
    }

    /// SIGKILL: the process and its queue vanish; messages to it are unroutable.
    fn kill(&mut self, id: u64) {
        let r = self.replicas.get_mut(&id).unwrap();
        r.bully = None;
        r.leading = None;
        r.paused = false;
    }

    fn schedule(&mut self, delay: Duration, from: u64, ev: Event) {
        self.seq += 1;
        self.queue.push((self.now + delay, from, ev));
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = (self.net.min_delay, self.net.max_delay);
        lo + (hi - lo).mul_f64(self.rng.gen::<f64>())
    }

    fn flush(&mut self, id: u64) {
        let outs = match self.replicas.get_mut(&id).and_then(|r| r.bully.as_mut()) {
            Some(b) => b.drain(),
            None => return,
        };
        for o in outs {
            match o {
                Output::Event(..) => {}
                Output::Broadcast(msg) => {
                    let ids: Vec<u64> = self.replicas.keys().copied().collect();
                    for to in ids {
                        if self.rng.gen::<f64>() >= self.net.drop {
                            let d = self.delay();
                            self.schedule(
                                d,
                                id,
                                Event::Msg {
                                    to,
                                    msg: msg.clone(),
                                },
                            );
                        }
                    }
                }
                Output::Send(to, msg) => {
                    let d = self.delay();
                    if self.replicas[&to].bully.is_none() {
                        // The broker returns a mandatory message to a queue that is gone.
                        self.schedule(d, id, Event::Unreachable { at: id, to });
                    } else if self.rng.gen::<f64>() >= self.net.drop {
                        self.schedule(d, id, Event::Msg { to, msg });
                    }
                }
                Output::AcquireEpoch { at_least } => {
                    self.store = self.store.max(at_least) + 1;
                    let epoch = self.store;
                    let d = self.delay();
                    self.schedule(d, id, Event::Epoch { at: id, epoch });
                }
                Output::Lead(epoch) => {
                    assert!(
                        self.terms.insert(epoch, id).is_none(),
                        "epoch {epoch} led twice"
                    );
                    self.replicas.get_mut(&id).unwrap().leading = Some(epoch);
                }
                Output::StepDown => self.replicas.get_mut(&id).unwrap().leading = None,
            }
        }
    }

    fn deliver(&mut self, ev: Event) {
        let now = self.now;
        let (id, f): (u64, Handler) = match ev {
            Event::Msg { to, msg } => {
                // What a client would do with a leader's broadcast: accept only rising epochs.
                if let ToReplica::Heartbeat(h) = &msg {
                    if h.role == ReplicaRole::Leader {
                        let r = self.replicas.get_mut(&to).unwrap();
                        r.followed = r.followed.max(h.epoch);
                    }
                }
                (to, Box::new(move |b| b.step(&msg, now)))
            }
            Event::Unreachable { at, to } => (at, Box::new(move |b| b.on_unreachable(to, now))),
            Event::Epoch { at, epoch } => (at, Box::new(move |b| b.on_epoch(epoch, now))),
        };
        let Some(r) = self.replicas.get_mut(&id) else {
            return;
        };
        if let Some(b) = r.bully.as_mut() {
            f(b);
            self.flush(id);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += STEP;
            // Deliver everything due, in due order; paused replicas keep theirs queued.
            loop {
                let paused: Vec<u64> = self
                    .replicas
                    .iter()
                    .filter(|(_, r)| r.paused)
                    .map(|(id, _)| *id)
                    .collect();
                let due = self.queue.iter().enumerate().filter(|(_, (t, _, ev))| {
                    *t <= self.now
                        && !paused.contains(match ev {
                            Event::Msg { to, .. } => to,
                            Event::Unreachable { at, .. } | Event::Epoch { at, .. } => at,
                        })
                });
                let Some(i) = due.min_by_key(|(_, (t, _, _))| *t).map(|(i, _)| i) else {
                    break;
                };
                let (_, _, ev) = self.queue.remove(i);
                self.deliver(ev);
                self.check();
            }
            let ids: Vec<u64> = self.replicas.keys().copied().collect();
            for id in ids {
                let r = self.replicas.get_mut(&id).unwrap();
                if r.paused {
                    continue;
                }
                if let Some(b) = r.bully.as_mut() {
                    b.tick(self.now);
                    self.flush(id);
                }
            }
            self.check();
        }
    }

    /// Invariants that must hold at every instant.
    fn check(&self) {
        // Among running, unpaused replicas, at most one leads the highest epoch led.
        let leading: Vec<(u64, u64)> = self
            .replicas
            .iter()
            .filter(|(_, r)| !r.paused)
            .filter_map(|(id, r)| r.leading.map(|e| (e, *id)))
            .collect();
        let mut epochs: Vec<u64> = leading.iter().map(|(e, _)| *e).collect();
        epochs.sort();
        epochs.dedup();
        assert_eq!(
            epochs.len(),
            leading.len(),
            "two replicas lead one epoch: {leading:?}"
        );
        for (epoch, id) in &leading {
            assert_eq!(self.terms.get(epoch), Some(id));
        }
    }

    /// The single replica everyone agrees leads, if there is one.
    fn agreed_leader(&self) -> Option<u64> {
        let live: Vec<&Bully> = self
            .replicas
            .values()
            .filter(|r| !r.paused)
            .filter_map(|r| r.bully.as_ref())
            .collect();
        let leaders: Vec<u64> = live
            .iter()
            .filter(|b| b.role() == ReplicaRole::Leader)
            .map(|b| b.rank().id)
            .collect();
        let [leader] = leaders[..] else { return None };
        let epoch = self.replicas[&leader].leading?;
        live.iter()
            .all(|b| {
                b.leader() == Some(leader)
                    && b.epoch() == epoch
                    && (b.rank().id == leader || b.role() == ReplicaRole::Follower)
            })
            .then_some(leader)
    }

    /// Runs until everyone agrees on one leader; returns it and how long it took.
    fn settle(&mut self, limit: Duration) -> (u64, Duration) {
        let start = self.now;
        while self.now - start < limit {
            if let Some(l) = self.agreed_leader() {
                return (l, self.now - start);
            }
            self.run_for(STEP);
        }
        panic!(
            "no agreed leader within {limit:?}: {:#?}",
            self.replicas
                .iter()
                .map(|(id, r)| (
                    id,
                    r.paused,
                    r.bully.as_ref().map(|b| (b.role(), b.leader(), b.epoch()))
                ))
                .collect::<Vec<_>>()
        );
    }
}

fn three() -> Vec<(u64, u64)> {
    vec![(1, 0), (2, 0), (3, 0)]
}

#[test]
fn the_highest_replica_leads_after_startup() {
    let mut sim = Sim::new(1, CLEAN, &three());
    let (leader, took) = sim.settle(Duration::from_secs(5));
    assert_eq!(leader, 3);
    assert!(
        took <= ANSWER_TIMEOUT + Duration::from_millis(100),
        "{took:?}"
    );
    // Stable: nobody keeps electing once settled.
    let before: Vec<u64> = sim
        .replicas
        .values()
        .map(|r| r.bully.as_ref().unwrap().epoch())
        .collect();
    sim.run_for(Duration::from_secs(20));
    let after: Vec<u64> = sim
        .replicas
        .values()
        .map(|r| r.bully.as_ref().unwrap().epoch())
        .collect();
    assert_eq!(before, after);
    assert_eq!(sim.agreed_leader(), Some(3));
}

#[test]
fn priority_beats_id_and_ids_compare_as_numbers() {
    let mut sim = Sim::new(2, CLEAN, &[(9, 0), (10, 0), (2, 0)]);
    assert_eq!(
        sim.settle(Duration::from_secs(5)).0,
        10,
        "10 > 9 numerically"
    );
    let mut sim = Sim::new(3, CLEAN, &[(1, 5), (2, 1), (3, 1)]);
    assert_eq!(sim.settle(Duration::from_secs(5)).0, 1, "priority first");
}

#[test]
fn a_killed_leader_is_replaced_fast_and_takes_over_when_back() {
    let mut sim = Sim::new(4, CLEAN, &three());
    sim.settle(Duration::from_secs(5));
    sim.run_for(Duration::from_millis(2_345));
    sim.kill(3);
    let (leader, took) = sim.settle(Duration::from_secs(10));
    assert_eq!(leader, 2);
    // Detected by the next direct heartbeat (≤ 1 s), then one answer timeout.
    assert!(
        took <= HEARTBEAT_INTERVAL + ANSWER_TIMEOUT + Duration::from_millis(100),
        "{took:?}"
    );
    let epoch = sim.replicas[&2].leading.unwrap();
    sim.run_for(Duration::from_secs(2));
    sim.start(3);
    assert_eq!(sim.settle(Duration::from_secs(5)).0, 3);
    assert!(sim.replicas[&3].leading.unwrap() > epoch);
}

#[test]
fn a_paused_leader_is_deposed_and_cannot_lead_its_old_epoch_again() {
    let mut sim = Sim::new(5, CLEAN, &three());
    sim.settle(Duration::from_secs(5));
    let old = sim.replicas[&3].leading.unwrap();
    sim.replicas.get_mut(&3).unwrap().paused = true;
    // Silent, but its queue is still there: only the heartbeat timeout can tell.
    let (leader, took) = sim.settle(Duration::from_secs(10));
    assert_eq!(leader, 2);
    assert!(took > LEADER_TIMEOUT - HEARTBEAT_INTERVAL, "{took:?}");
    assert!(
        took <= LEADER_TIMEOUT + ANSWER_TIMEOUT + STEP * 10,
        "{took:?}"
    );
    let middle = sim.replicas[&2].leading.unwrap();
    assert!(middle > old);
    sim.run_for(Duration::from_secs(2));
    sim.replicas.get_mut(&3).unwrap().paused = false;
    let (leader, _) = sim.settle(Duration::from_secs(5));
    assert_eq!(leader, 3, "the returning top replica bullies its way back");
    let new = sim.replicas[&3].leading.unwrap();
    assert!(new > middle, "with a fresh epoch, never its old one");
    for r in sim.replicas.values() {
        assert_eq!(r.followed, new);
    }
}

#[test]
fn a_resigning_leader_is_replaced_without_waiting_for_the_timeout() {
    let mut sim = Sim::new(6, CLEAN, &three());
    sim.settle(Duration::from_secs(5));
    let b = sim.replicas.get_mut(&3).unwrap().bully.as_mut().unwrap();
    b.resign();
    sim.flush(3);
    sim.run_for(STEP * 2);
    sim.kill(3);
    let (leader, took) = sim.settle(Duration::from_secs(5));
    assert_eq!(leader, 2);
    assert!(took <= ANSWER_TIMEOUT + STEP * 3, "{took:?}");
}

#[test]
fn requested_elections_are_visible_and_end() {
    let mut sim = Sim::new(7, CLEAN, &three());
    sim.settle(Duration::from_secs(5));
    let now = sim.now;
    let b = sim.replicas.get_mut(&1).unwrap().bully.as_mut().unwrap();
    assert!(b.request_election(now));
    assert!(!b.request_election(now), "one at a time");
    let st = b.election_status(now);
    assert!(st.in_progress);
    assert_eq!(st.phase, "waiting_for_answers");
    sim.flush(1);
    sim.run_for(Duration::from_secs(3));
    let b = sim.replicas[&1].bully.as_ref().unwrap();
    assert!(!b.election_status(sim.now).in_progress);
    assert_eq!(sim.agreed_leader(), Some(3));
}

#[test]
fn lossy_reordering_networks_converge_on_the_top_replica() {
    let net = Net {
        drop: 0.2,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(400),
    };
    for seed in 0..40 {
        let mut sim = Sim::new(100 + seed, net, &[(1, 0), (2, 0), (3, 0), (4, 0)]);
        // Churn: kill, pause and restart replicas while messages are lost and reordered.
        sim.run_for(Duration::from_secs(3));
        sim.kill(4);
        sim.run_for(Duration::from_secs(4));
        sim.replicas.get_mut(&3).unwrap().paused = true;
        sim.run_for(Duration::from_secs(5));
        sim.start(4);
        sim.replicas.get_mut(&3).unwrap().paused = false;
        // Losses make a heartbeat go missing now and then; what must hold is that the cluster
        // keeps coming back to the top replica. With 20% loss, three heartbeats in a row are
        // lost now and then, so agreement is sampled rather than required continuously.
        let (leader, _) = sim.settle(Duration::from_secs(60));
        assert_eq!(leader, 4, "seed {seed}");
    }
}

#[test]
fn follower_epochs_never_go_back() {
    // A follower that hears a deposed leader's heartbeat keeps following the newer term.
    let cfg = BullyConfig::new(1, 0);
    let mut b = Bully::new(cfg, Duration::ZERO, 0);
    let hb = |from: u64, epoch: u64| {
        ToReplica::Heartbeat(Heartbeat {
            v: PROTOCOL_VERSION,
            stamp: Stamp::default(),
            from,
            priority: 0,
            role: ReplicaRole::Leader,
            epoch,
            leader: Some(from),
        })
    };
    let t = Duration::from_millis(100);
    b.step(&hb(3, 7), t);
    assert_eq!((b.leader(), b.epoch()), (Some(3), 7));
    b.step(&hb(2, 8), t * 2);
    assert_eq!((b.leader(), b.epoch()), (Some(2), 8));
    b.step(&hb(3, 7), t * 3);
    assert_eq!((b.leader(), b.epoch()), (Some(2), 8), "stale epoch ignored");
    assert_eq!(b.role(), ReplicaRole::Follower);
}

#[test]
fn an_epoch_older_than_one_seen_is_not_led_with() {
    let mut b = Bully::new(BullyConfig::new(5, 0), Duration::ZERO, 0);
    b.drain();
    b.tick(ANSWER_TIMEOUT);
    assert!(b.drain().contains(&Output::AcquireEpoch { at_least: 0 }));
    // Meanwhile a lower replica announced epoch 4 (it will be bullied out afterwards).
    b.step(
        &ToReplica::Coordinator(Coordinator {
            v: PROTOCOL_VERSION,
            stamp: Stamp::default(),
            from: 2,
            priority: 0,
            epoch: 4,
        }),
        ANSWER_TIMEOUT,
    );
    b.on_epoch(3, ANSWER_TIMEOUT);
    assert_eq!(b.drain(), vec![Output::AcquireEpoch { at_least: 4 }]);
    b.on_epoch(5, ANSWER_TIMEOUT);
    assert_eq!(b.role(), ReplicaRole::Leader);
    assert!(b.drain().contains(&Output::Lead(5)));
}

#[test]
fn config_validation() {
    assert!(BullyConfig::new(1, 0).validate().is_ok());
    let mut c = BullyConfig::new(1, 0);
    c.leader_timeout = Duration::from_millis(1500);
    assert!(c.validate().unwrap_err().0.contains("twice the heartbeat"));
    c = BullyConfig::new(1, 0);
    c.heartbeat = Duration::ZERO;
    assert!(c.validate().is_err());
}

#[test]
fn a_leader_below_the_epoch_clients_follow_elects_again_above_it() {
    // Redis lost its epoch count: a lone replica restarted and won epoch 1, while clients
    // still follow epoch 27 and refuse anything lower.
    let mut b = Bully::new(BullyConfig::new(1, 0), Duration::ZERO, 0);
    b.tick(ANSWER_TIMEOUT);
    assert!(b.drain().contains(&Output::AcquireEpoch { at_least: 0 }));
    b.on_epoch(1, ANSWER_TIMEOUT);
    assert!(b.drain().contains(&Output::Lead(1)));
    // Clients report following 27: step down, elect, and claim above 27.
    let now = ANSWER_TIMEOUT * 2;
    b.observe_epoch(27, now);
    let outs = b.drain();
    assert!(outs.contains(&Output::StepDown), "{outs:?}");
    assert_eq!(b.role(), ReplicaRole::Candidate);
    b.tick(now + ANSWER_TIMEOUT);
    assert!(b.drain().contains(&Output::AcquireEpoch { at_least: 27 }));
    b.on_epoch(28, now + ANSWER_TIMEOUT);
    assert!(b.drain().contains(&Output::Lead(28)));
    // An epoch at or below its own changes nothing.
    b.observe_epoch(28, now * 3);
    assert!(!b.drain().contains(&Output::StepDown));
    assert_eq!(b.role(), ReplicaRole::Leader);
}
